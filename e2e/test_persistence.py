"""Retained messages across a restart of `edgemq run` with the same state directory."""

from __future__ import annotations

import pytest

from helpers_b import metric
from support import ALICE_HASH, broker_yaml, docs, free_port, poll, user_yaml

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
