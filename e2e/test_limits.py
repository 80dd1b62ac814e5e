"""Limits under misbehaving and numerous clients: a subscriber that never reads, an
oversized payload, too many connections, and churn of topics and client ids."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

import support

from helpers_b import make_cert, router, rss_kb, tls_secret_yaml
from support import (broker_yaml, closed_by_peer, connect_packet, DISCONNECT, free_port, metric,
                     nothing_more, packet, poll, publish_packet, qos1_publish, raw_connect,
                     read_packet, read_publishes, read_until, subscribe_packet, try_connect)


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
    # Refused at accept, before any CONNACK: counted and logged with the limit's name.
    assert (ok, rc) == (False, None), "a fourth connection got in with maxConnections: 3"
    assert refusals(e, "maxConnections") == 1
    poll(lambda: "connection refused: maxConnections (3) reached" in e.log_text(), 5,
         message="the refusal logged with the limit")
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
    assert metric(m, "edgemq_messages_dropped_total") == 0, m


# --------------------------------------------------------------------------- byte, handshake,
# session and subscription bounds (issue 17, item 9)

REFUSED = 'edgemq_limit_refusals_total{limit="%s"}'


def refusals(e, limit: str) -> float:
    return metric(e.metrics(), REFUSED % limit)


def test_retained_messages_past_the_default_max_retained_bytes_are_refused_counted_and_not_stored(
        edgemq, clients):
    """One user floods retained 1 MiB messages: at the default cap of 64 MiB the rest are
    delivered live but neither kept in memory nor written to the state directory."""
    port = free_port()
    e = edgemq()
    e.write("home.yaml", broker_yaml("home", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                                                   "  persistence: {enabled: true}\n"))
    e.start()
    live, rc = raw_connect(port, "live", timeout=30)
    assert rc == 0
    live.sendall(subscribe_packet("flood/#", 0, packet_id=1))
    read_until(live, 9)
    flooder, rc = raw_connect(port, "flooder", timeout=30)
    assert rc == 0
    mib = 1024 * 1024
    for i in range(80):
        qos1_publish(flooder, f"flood/{i:02d}", bytes([i]) * mib, packet_id=i + 1, retain=True)
        # Refused or not, it reaches the subscribers connected now.
        assert read_publishes(live, 1) == [(f"flood/{i:02d}", bytes([i]) * mib)]

    # 64 MiB holds 63 messages of 1 MiB plus their topics.
    assert refusals(e, "maxRetainedBytes") == 17
    assert router(e.status(), "home")["retained"] == 63
    assert "retained message not kept: maxRetainedBytes reached" in e.log_text()
    late, rc = raw_connect(port, "late", timeout=30)
    late.sendall(subscribe_packet("flood/#", 0, packet_id=1))
    read_until(late, 9)
    kept = dict(read_publishes(late, 63))
    assert kept == {f"flood/{i:02d}": bytes([i]) * mib for i in range(63)}
    assert nothing_more(late)
    e.stop()
    disk = sum(p.stat().st_size for p in e.state_dir.rglob("*") if p.is_file())
    print(f"state directory after the flood: {disk} bytes for 63 MiB of retained messages")
    # What the store holds is what a restart brings back: the 63 kept, no more.
    e.start()
    assert router(e.status(), "home")["retained"] == 63


def test_a_connect_larger_than_max_connect_bytes_is_closed_before_the_rest_is_read(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{handshakeTimeoutSeconds: 120}"))
    e.start()
    # A CONNECT header announcing 1 MB, then a trickle: closed from the header alone,
    # long before the handshake timeout.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x10" + bytes([0xC0, 0x84, 0x3D]) + b"\x00\x04MQTT\x04\x02\x00\x00")
    poll(lambda: closed_by_peer(s), 10, message="oversized CONNECT closed")
    assert refusals(e, "maxConnectBytes") == 1
    assert "CONNECT larger than maxConnectBytes" in e.log_text()
    # A CONNECT within the default 16 KiB (an 8 KiB token as password) is read whole
    # and its credentials checked: an unknown user gets return code 5.
    answered, rc = raw_connect(port, "token-user", username="t", password="x" * 8192)
    assert rc == 5
    answered.close()


def test_idle_unauthenticated_sockets_from_one_address_cannot_lock_out_a_real_login(edgemq):
    """60 idle sockets from 127.0.0.2 at maxConnections: 60. Only 16 (the default
    maxHandshakesPerAddress) are kept waiting, none takes a connection slot, and a
    client from another address logs in."""
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxConnections: 60}"))
    e.start()
    idle = []
    for _ in range(60):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        idle.append(s)
    real, rc = raw_connect(port, "real-login")
    assert rc == 0, "an authenticated client was locked out by idle sockets"
    real.close()
    poll(lambda: refusals(e, "maxHandshakesPerAddress") == 44, 10,
         message="44 sockets over maxHandshakesPerAddress refused")
    open_ones = [s for s in idle if not closed_by_peer(s, 0.01)]
    assert len(open_ones) == 16
    for s in idle:
        s.close()


def test_max_handshakes_bounds_unauthenticated_sockets_from_all_addresses(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxHandshakes: 4}"))
    e.start()
    idle = []
    for i in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.0.{i + 2}", 0))
        s.connect(("127.0.0.1", port))
        idle.append(s)
    # The fifth waits for nobody: closed at once, and counted.
    poll(lambda: not try_connect(port, client_id="fifth")[0] and
         refusals(e, "maxHandshakes") >= 1, 10, message="fifth socket refused")
    assert all(not closed_by_peer(s, 0.01) for s in idle)
    idle.pop().close()
    poll(lambda: try_connect(port, client_id="after")[0], 10,
         message="a handshake slot freed by a closed socket")
    for s in idle:
        s.close()


def test_the_handshake_timeout_covers_the_tls_handshake_and_the_connect_together(edgemq, tmp_path):
    """A client that finishes TLS just before the timeout gets no second timeout for
    its CONNECT: the socket is closed handshakeTimeoutSeconds after the accept."""
    crt, key = make_cert(tmp_path / "pki", "server", 1)
    port = free_port()
    e = edgemq()
    e.write("tls.yaml", tls_secret_yaml("home-tls", crt, key))
    e.write("home.yaml", broker_yaml(
        "home", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                      "  limits: {handshakeTimeoutSeconds: 3}\n",
        listeners=f"    - {{name: tls, port: {port}, bindAddress: 127.0.0.1, "
                  "tls: {secretRef: home-tls}}"))
    e.start()
    raw = socket.create_connection(("127.0.0.1", port))
    accepted = time.monotonic()
    time.sleep(2)
    ctx = ssl.create_default_context(cafile=str(crt))
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    # Closed about 1 s later (3 s after the accept), not 3 s after the TLS handshake.
    tls.settimeout(10)
    try:
        assert tls.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        pass
    closed_after = time.monotonic() - accepted
    assert closed_after < 4.5, f"closed {closed_after:.1f} s after the accept"
    assert refusals(e, "handshakeTimeoutSeconds") == 1


def test_a_new_persistent_session_past_max_sessions_is_refused_with_a_reason(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxSessions: 2}"))
    e.start()
    kept = [raw_connect(port, f"p{i}", clean=False) for i in range(2)]
    assert [rc for _, rc in kept] == [0, 0]
    # MQTT 3.1.1: CONNACK return code 3 (server unavailable), then the socket closes.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(connect_packet("p2", clean=False))
    assert read_packet(s) == (0x20, b"\x00\x03")
    assert closed_by_peer(s, 5)
    # MQTT 5, session expiry 60 s: reason 0x97 (quota exceeded).
    s = socket.create_connection(("127.0.0.1", port))
    var = b"\x00\x04MQTT\x05\x00\x00\x1e" + b"\x05\x11\x00\x00\x00\x3c"
    s.sendall(packet(0x10, var + b"\x00\x02p3"))
    assert read_packet(s) == (0x20, b"\x00\x97\x00")
    assert refusals(e, "maxSessions") == 2
    # Clean sessions and the kept sessions themselves still connect.
    assert raw_connect(port, "clean", clean=True)[1] == 0
    kept[0][0].close()
    assert raw_connect(port, "p0", clean=False)[1] == 0


def test_subscriptions_past_max_subscriptions_per_client_are_refused_in_the_suback(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxSubscriptionsPerClient: 2}"))
    e.start()
    s, rc = raw_connect(port, "many-subs")
    assert rc == 0
    body = b"\x00\x07" + b"".join(b"\x00\x01" + t + b"\x01" for t in (b"a", b"b", b"c"))
    s.sendall(packet(0x82, body))
    assert read_packet(s) == (0x90, b"\x00\x07\x01\x01\x80")
    # Re-subscribing to one held is a replacement, not a new one.
    s.sendall(subscribe_packet("a", 0, packet_id=8))
    assert read_packet(s) == (0x90, b"\x00\x08\x00")
    p, _ = raw_connect(port, "pub")
    p.sendall(publish_packet("c", b"not for you") + publish_packet("b", b"for you"))
    assert read_publishes(s, 1) == [("b", b"for you")]
    assert refusals(e, "maxSubscriptionsPerClient") == 1
    # MQTT 5: reason 0x97 (quota exceeded).
    v5 = socket.create_connection(("127.0.0.1", port))
    v5.sendall(connect_packet("v5-subs", v5=True))
    read_until(v5, 2)
    v5.sendall(packet(0x82, b"\x00\x09\x00" + b"".join(b"\x00\x01" + t + b"\x00"
                                                       for t in (b"a", b"b", b"c"))))
    assert read_packet(v5) == (0x90, b"\x00\x09\x00\x00\x00\x97")


def test_a_client_queue_past_max_queued_bytes_drops_new_messages_and_counts_them(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_broker(port, "{maxQueuedBytes: 10000}"))
    e.start()
    s, rc = raw_connect(port, "away", clean=False)
    s.sendall(subscribe_packet("q/t", 1, packet_id=1))
    read_until(s, 9)
    s.sendall(DISCONNECT)
    s.close()
    p, _ = raw_connect(port, "pub")
    for i in range(20):
        qos1_publish(p, "q/t", bytes([i]) * 1000, packet_id=i + 1)
    # 9 messages of 1003 bytes (topic and payload) fit in 10000.
    assert refusals(e, "maxQueuedBytes") == 11
    assert metric(e.metrics(), 'edgemq_messages_dropped_total{reason="queue_full"}') == 11
    back, rc = raw_connect(port, "away", clean=False)
    assert read_publishes(back, 9) == [("q/t", bytes([i]) * 1000) for i in range(9)]
    assert nothing_more(back)
