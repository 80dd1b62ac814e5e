"""Limits under misbehaving and numerous clients: a subscriber that never reads, an
oversized payload, too many connections, and churn of topics and client ids."""

from __future__ import annotations

import threading
import time

import pytest

import support

from helpers_b import DISCONNECT, closed_by_peer, metric, raw_connect, read_until, router, rss_kb
from support import broker_yaml, free_port, poll, publish_packet, subscribe_packet, try_connect


def open_broker(port: int, limits: str) -> str:
    return broker_yaml("home", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                                     f"  limits: {limits}")


def test_a_subscriber_that_never_reads_gets_its_queue_capped_and_nobody_else_suffers(edgemq, clients):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxQueuedMessages: 100}"))
    e.start()

    # A QoS 0 subscriber that sends CONNECT + SUBSCRIBE and then never reads again,
    # with a small receive buffer so the broker's socket backs up quickly.
    slow, rc = raw_connect(port, "slow-reader", rcvbuf=4096)
    assert rc == 0
    slow.sendall(subscribe_packet("flood/#", 0, packet_id=1))
    read_until(slow, 9)  # SUBACK; from here on it never reads

    healthy = clients(port, client_id="healthy")
    assert healthy.subscribe_wait("other/#", qos=1) == [1]
    before = e.metrics()

    # 20 MB of QoS 0 traffic for the slow subscriber: far beyond socket buffers plus 100.
    publisher, rc = raw_connect(port, "publisher")
    assert rc == 0
    payload = b"x" * 1024
    batch = b"".join(publish_packet(f"flood/{i % 50}", payload) for i in range(500))
    for _ in range(40):
        publisher.sendall(batch)

    poll(lambda: metric(e.metrics(), 'edgemq_messages_dropped_total{reason="queue_full"}')
         > metric(before, 'edgemq_messages_dropped_total{reason="queue_full"}'),
         20, message="queue_full drops counted")
    poll(lambda: "queue full" in e.log_text(), 10, message='"queue full" logged')

    # Still healthy: the endpoint answers, the publisher is still connected, and other
    # clients still get messages at once.
    assert e.http_get("/healthz")[0] == 200
    publisher.sendall(publish_packet("other/after-flood", b"still here"))
    m = healthy.get(timeout=10)
    assert (m.topic, m.payload) == ("other/after-flood", b"still here")
    fresh = clients(port)
    fresh.publish_wait("other/fresh", b"fresh", qos=1)
    assert healthy.get(timeout=5).payload == b"fresh"
    assert not closed_by_peer(publisher, 0.01), "the publisher was disconnected"
    dropped = metric(e.metrics(), 'edgemq_messages_dropped_total{reason="queue_full"}')
    print(f"queue_full drops for the slow subscriber: {dropped:.0f} of 20000")
    slow.close()
    publisher.close()


def test_a_payload_over_max_payload_bytes_closes_that_client_only(edgemq, clients):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxPayloadBytes: 1024}"))
    e.start()
    watcher = clients(port, client_id="watcher")
    watcher.subscribe_wait("big/#", qos=1)
    bystander = clients(port, client_id="bystander")

    ok = clients(port, client_id="at-limit")
    ok.publish_wait("big/at-limit", b"a" * 1024, qos=1)
    assert watcher.get(timeout=5).payload == b"a" * 1024
    assert ok.is_connected()

    offender = clients(port, client_id="offender")
    offender.c.publish("big/over", b"b" * 1025, qos=1)
    assert offender.disconnected.wait(10), "a payload over maxPayloadBytes did not close the connection"
    watcher.expect_none(0.5)

    assert not watcher.disconnected.is_set() and not bystander.disconnected.is_set()
    bystander.publish_wait("big/after", b"after", qos=1)
    assert watcher.get(timeout=5).payload == b"after"


def test_max_connections_is_enforced_and_frees_up_when_a_client_leaves(edgemq, clients):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxConnections: 3}"))
    e.start()
    first = [clients(port, client_id=f"c{i}") for i in range(3)]
    ok, rc = try_connect(port, client_id="fourth")
    assert not ok, "a fourth connection got in with maxConnections: 3"
    assert all(c.is_connected() for c in first)
    first[0].disconnect_wait()
    poll(lambda: try_connect(port, client_id="fourth")[0], 10,
         message="a connection accepted again after one client left")


def test_churn_of_topics_and_client_ids_leaves_no_sessions_trie_nodes_or_memory_behind(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{sessionExpirySeconds: 2, maxConnections: 1000}"))
    e.start()
    pid = e.proc.pid

    def churn(prefix: str, count: int, workers: int = 8, budget: float = 240.0):
        deadline = time.monotonic() + budget
        errors = []

        def worker(w):
            try:
                for i in range(w, count, workers):
                    if time.monotonic() > deadline:
                        raise AssertionError("churn did not finish in time")
                    s, rc = raw_connect(port, f"{prefix}-{i}", clean=False)
                    assert rc == 0, f"CONNACK {rc}"
                    # A persistent session with its own subscription, and a QoS 1
                    # message queued for it, on two distinct topics.
                    s.sendall(subscribe_packet(f"{prefix}/{i}/cmd", 1, packet_id=1)
                              + publish_packet(f"{prefix}/{i}/cmd", b"p" * 64, qos=1, packet_id=2)
                              + publish_packet(f"{prefix}/{i}/telemetry", b"t" * 64, qos=0))
                    read_until(s, 9)   # SUBACK
                    read_until(s, 4)   # PUBACK
                    s.sendall(DISCONNECT)
                    s.close()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]

    def sessions_metric() -> float:
        return metric(e.metrics(), 'edgemq_sessions{broker="default/home"}')

    def drained():
        r = router(e.status(), "home")
        ok = (sessions_metric() <= 5 and r.get("sessions", 1e9) <= 5 and r.get("trieNodes", 1e9) <= 16)
        return r if ok else None

    # /status must be live: a persistent session held open shows up in it.
    holder, rc = raw_connect(port, "holder", clean=False)
    assert rc == 0
    holder.sendall(subscribe_packet("holder/a/b/c", 1, packet_id=1))
    read_until(holder, 9)
    e.wait_applied(lambda st: router(st, "home").get("sessions", 0) >= 1
                   and router(st, "home").get("trieNodes", 0) > 1,
                   timeout=10, message="status shows the held session and its subscription")
    holder.sendall(DISCONNECT)
    holder.close()

    peak = [rss_kb(pid)]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kb(pid))
            except OSError:
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    cold = rss_kb(pid)
    after = []
    try:
        # Two rounds: the first sets the allocator's high-water mark, the second shows
        # whether anything accumulates per round.
        for round_no in range(2):
            started = time.monotonic()
            churn(f"churn{round_no}", 10_000)
            took = time.monotonic() - started
            during = sessions_metric()
            final = e.wait_applied(lambda st: drained(), timeout=60,
                                   message="sessions and trie nodes back near zero after expiry")
            after.append(rss_kb(pid))
            print(f"churn round {round_no + 1}: 10000 client ids and 20000 topics in {took:.1f}s; "
                  f"sessions right after: {during:.0f}; after expiry: {final}")
    finally:
        stop.set()
        sampler.join()
    print(f"churn RSS: before {cold / 1024:.1f} MB, peak {peak[0] / 1024:.1f} MB, "
          f"after round 1 {after[0] / 1024:.1f} MB, after round 2 {after[1] / 1024:.1f} MB")
    assert e.http_get("/healthz")[0] == 200
    assert after[0] < cold + 48 * 1024, \
        f"RSS did not come back after churn: before {cold} kB, peak {peak[0]} kB, after {after[0]} kB"
    assert after[1] < after[0] + 16 * 1024, \
        f"RSS grows with each churn round: {after[0]} kB then {after[1]} kB"


@pytest.mark.parametrize("limits", ["", "  limits: {maxQueuedMessages: 100}\n"],
                         ids=["default-limits", "queue-bound-100"])
@pytest.mark.parametrize("sub_qos", [0, 1], ids=["qos0", "qos1"])
def test_3000_retained_messages_reach_a_new_subscriber_with_default_limits(edgemq, clients, sub_qos,
                                                                            limits):
    """Home Assistant's start-up: a new subscriber to homeassistant/# is owed every
    retained discovery message; they are paced by its in-flight window, not cut at the
    queue bound (even one of 100)."""
    port = support.free_port()
    e = edgemq()
    e.write("home.yaml", support.broker_yaml(
        "home", port, "  allowAnonymous: true\n  aclEnabled: false\n" + limits))
    e.start()
    support.wait_port(port)
    n = 3000
    p = clients(port)
    infos = [p.c.publish(f"homeassistant/sensor/s{i}/config", f'{{"n": {i}}}', qos=1, retain=True)
             for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    s = clients(port)
    s.subscribe_wait("homeassistant/#", sub_qos)
    got = {}
    while len(got) < n:
        msg = s.get(30)
        assert msg.retain
        got[msg.topic] = msg.payload
    assert got == {f"homeassistant/sensor/s{i}/config": f'{{"n": {i}}}'.encode() for i in range(n)}
    s.expect_none(0.5)
    m = e.metrics()
    assert m.get("edgemq_messages_dropped_total", 0) == 0, m
