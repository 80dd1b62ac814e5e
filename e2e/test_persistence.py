"""Retained messages across a restart of `edgemq run` with the same state directory."""

from __future__ import annotations

import pytest

from support import ALICE_HASH, broker_yaml, connect, docs, free_port, metric, poll, user_yaml

TOPIC = "alice/lights/kitchen"


def config(port: int, persistence: bool) -> str:
    extra = f"  allowAnonymous: false\n  persistence: {{enabled: {'true' if persistence else 'false'}}}"
    return docs(broker_yaml("home", port, extra),
                user_yaml("alice", "home", password_hash=ALICE_HASH, acl=[("alice/#", "readwrite")]))


def retained(e) -> float:
    return metric(e.metrics(), 'edgemq_retained_messages{broker="default/home"}')


def received_before_marker(clients, port: int) -> list:
    """Subscribe, then publish a marker on the same topic: whatever the broker sends
    before the marker is what it had retained (retained messages are queued at
    SUBSCRIBE time, so they come first)."""
    c = clients(port, username="alice", password="secret1")
    c.subscribe_wait(TOPIC, qos=1)
    c.publish_wait(TOPIC, b"marker", qos=1)
    got = []
    while True:
        m = c.get(timeout=5)
        if m.payload == b"marker" and not m.retain:
            return got
        got.append((m.payload, m.retain))


@pytest.mark.parametrize("persistence", [True, False], ids=["persistence-on", "persistence-off"])
def test_retained_messages_survive_a_restart_only_when_persistence_is_enabled(edgemq, clients, persistence):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", config(port, persistence))
    e.start()
    c = clients(port, username="alice", password="secret1")
    c.publish_wait(TOPIC, b"on", qos=1, retain=True)
    c.publish_wait("alice/cleared", b"gone", qos=1, retain=True)
    c.publish_wait("alice/cleared", b"", qos=1, retain=True)  # clears it again
    poll(lambda: retained(e) == 1, 10, message="one retained message")
    c.disconnect_wait()

    e.stop()  # SIGTERM, clean exit
    e.start()

    if persistence:
        assert retained(e) == 1, "retained message not restored after restart"
        assert received_before_marker(clients, port) == [(b"on", True)]
        # A cleared retained message stays cleared.
        c2 = clients(port, username="alice", password="secret1")
        c2.subscribe_wait("alice/cleared", qos=1)
        c2.publish_wait("alice/cleared", b"marker", qos=1)
        assert c2.get(timeout=5).payload == b"marker"
    else:
        assert retained(e) == 0
        assert received_before_marker(clients, port) == []


def test_retained_messages_survive_two_restarts_and_an_update(edgemq, clients):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", config(port, True))
    e.start()
    c = clients(port, username="alice", password="secret1")
    c.publish_wait(TOPIC, b"v1", qos=1, retain=True)
    c.disconnect_wait()
    e.restart()
    c = clients(port, username="alice", password="secret1")
    c.publish_wait(TOPIC, b"v2", qos=1, retain=True)
    c.disconnect_wait()
    e.restart()
    assert received_before_marker(clients, port) == [(b"v2", True)]


# --------------------------------------------------------------------------- sessions

SAVE_WINDOW_SECONDS = 2  # persist::SESSION_SAVE_INTERVAL: what a kill -9 may lose


def open_config(port: int, persistence: bool = True) -> str:
    return broker_yaml("home", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                       f"  persistence: {{enabled: {'true' if persistence else 'false'}}}")


def saved_messages(e) -> float:
    return metric(e.metrics(), 'edgemq_session_saved_messages{broker="default/home"}')


def persistent_subscriber(port: int, client_id: str):
    """A Paho 3.1.1 client with clean session false and a QoS 1 subscription, as ESPHome
    and OwnTracks connect; disconnected again, so its messages queue."""
    c = connect(port, client_id=client_id, clean=False)
    c.subscribe_wait("devices/#", 1)
    c.disconnect_wait()


def publish_n(port: int, n: int, start: int = 0) -> None:
    p = connect(port)
    infos = [p.c.publish("devices/x", str(i).encode(), qos=1) for i in range(start, start + n)]
    for info in infos:
        info.wait_for_publish(30)
    p.disconnect_wait()


def collect_session(port: int, client_id: str, quiet: float = 1.0) -> tuple:
    """Reconnect the persistent session; (session present, payloads received)."""
    c = connect(port, client_id=client_id, clean=False)
    got = []
    while True:
        m = c.get_or_none(quiet)
        if m is None:
            break
        got.append(int(m.payload))
    present = c.session_present
    c.disconnect_wait()
    return present, got


def test_a_persistent_session_gets_its_500_queued_messages_after_a_sigterm_restart(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_config(port))
    e.start()
    persistent_subscriber(port, "esphome-1")
    publish_n(port, 500)
    e.stop()  # SIGTERM: the last snapshot is written on the way out
    e.start()
    present, got = collect_session(port, "esphome-1")
    assert present
    assert got == list(range(500)), f"{len(got)} of 500 after the restart"
    # The subscription survived too: a new message arrives live.
    c = connect(port, client_id="esphome-1", clean=False)
    publish_n(port, 1, start=500)
    assert int(c.get(5).payload) == 500
    c.disconnect_wait()


def test_without_persistence_a_restart_ends_the_session(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_config(port, persistence=False))
    e.start()
    persistent_subscriber(port, "esphome-2")
    publish_n(port, 10)
    e.stop()
    e.start()
    present, got = collect_session(port, "esphome-2", quiet=0.5)
    assert (present, got) == (False, [])


def test_after_kill_9_at_most_the_save_window_is_lost(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", open_config(port))
    e.start()
    persistent_subscriber(port, "owntracks-1")
    publish_n(port, 500)
    # Wait for a snapshot that holds the 500 (no clock: the broker reports it).
    poll(lambda: saved_messages(e) == 500, 10, message="a session snapshot holding the 500")
    publish_n(port, 100, start=500)  # within the window: may be lost
    e.kill()
    e.start()
    present, got = collect_session(port, "owntracks-1")
    assert present
    assert got[:500] == list(range(500)), "messages saved before the kill were lost"
    assert got == list(range(len(got))), "what survives is a prefix, in order"
    lost = 600 - len(got)
    print(f"\nkill -9: {lost} of the last 100 messages lost "
          f"(published within the {SAVE_WINDOW_SECONDS} s save window before the kill)")
