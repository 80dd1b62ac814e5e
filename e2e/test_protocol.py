"""MQTT protocol behaviour a client relies on, checked with Paho (3.1.1 and 5) and raw
bytes against `edgemq run`.

Set EDGEMQ_E2E_TARGET=mosquitto to run the same tests against a real Mosquitto (a check
of the tests themselves; tests of edgemq-specific choices are skipped there).
"""

from __future__ import annotations

import os
import time

import pytest

import support
from support import MQTTv311, MQTTv5, RawConn

PROTOCOLS = [pytest.param(MQTTv311, id="mqtt311"), pytest.param(MQTTv5, id="mqtt5")]
TARGET = os.environ.get("EDGEMQ_E2E_TARGET", "edgemq")


@pytest.fixture
def port(edgemq, mosquitto):
    """Port of a broker open to anonymous clients with no ACL."""
    if TARGET == "mosquitto":
        return mosquitto(["allow_anonymous true"]).port
    p = support.free_port()
    e = edgemq()
    e.write("broker.yaml", support.broker_yaml(
        "proto", p, "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.start()
    support.wait_port(p)
    return p


@pytest.fixture(params=PROTOCOLS)
def proto(request):
    return request.param


def still_serving(port, proto=MQTTv311):
    """The broker still routes messages between fresh clients."""
    s = support.sub(port, "alive/check", 1, protocol=proto)
    try:
        support.pub(port, "alive/check", b"ok", qos=1, protocol=proto)
        msg = s.get(5)
        assert msg.payload == b"ok"
    finally:
        s.disconnect_wait()


# --------------------------------------------------------------------------- delivery

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_message_is_delivered_at_each_qos(port, proto, clients, qos):
    s = clients(port, protocol=proto)
    assert s.subscribe_wait("q/test", qos) == [qos]
    p = clients(port, protocol=proto)
    p.publish_wait("q/test", f"hello {qos}".encode(), qos=qos)
    msg = s.get()
    assert (msg.topic, msg.payload, msg.qos) == ("q/test", f"hello {qos}".encode(), qos)
    s.expect_none(0.3)


def test_a_qos2_publish_is_delivered_exactly_once_many_times(port, proto, clients):
    s = clients(port, protocol=proto)
    s.subscribe_wait("q/many", 2)
    p = clients(port, protocol=proto)
    for i in range(50):
        p.publish_wait("q/many", str(i).encode(), qos=2)
    got = [s.get().payload for _ in range(50)]
    assert got == [str(i).encode() for i in range(50)]
    s.expect_none(0.3)


def test_delivery_uses_the_lower_of_publish_and_subscription_qos(port, proto, clients):
    s2 = clients(port, protocol=proto)
    s2.subscribe_wait("down/0", 2)
    s1 = clients(port, protocol=proto)
    s1.subscribe_wait("down/2", 1)
    p = clients(port, protocol=proto)
    p.publish_wait("down/0", b"zero", qos=0)
    p.publish_wait("down/2", b"two", qos=2)
    m0 = s2.get()
    assert (m0.payload, m0.qos) == (b"zero", 0), "QoS 0 publish must reach a QoS 2 subscriber at QoS 0"
    m2 = s1.get()
    assert (m2.payload, m2.qos) == (b"two", 1), "QoS 2 publish must reach a QoS 1 subscriber at QoS 1"


def test_wildcard_subscriptions_match_whole_levels(port, proto, clients):
    s = clients(port, protocol=proto)
    s.subscribe_wait("w/+/temp", 1)
    s2 = clients(port, protocol=proto)
    s2.subscribe_wait("w/#", 1)
    p = clients(port, protocol=proto)
    for t in ("w/kitchen/temp", "w/kitchen/hum", "w/a/b/temp", "w"):
        p.publish_wait(t, t.encode(), qos=1)
    assert s.get().topic == "w/kitchen/temp"
    s.expect_none(0.3)
    assert sorted(s2.get().topic for _ in range(4)) == sorted(
        ["w/kitchen/temp", "w/kitchen/hum", "w/a/b/temp", "w"])


# --------------------------------------------------------------------------- retained

def test_a_retained_message_reaches_a_later_subscriber_and_an_empty_one_clears_it(port, proto, clients):
    support.pub(port, "ret/lamp", b"on", qos=1, retain=True, protocol=proto)
    s = clients(port, protocol=proto)
    s.subscribe_wait("ret/#", 1)
    msg = s.get()
    assert (msg.topic, msg.payload, msg.retain) == ("ret/lamp", b"on", True)
    s.disconnect_wait()

    support.pub(port, "ret/lamp", b"", qos=1, retain=True, protocol=proto)
    s2 = clients(port, protocol=proto)
    s2.subscribe_wait("ret/#", 1)
    s2.expect_none(0.5)


def test_a_live_message_to_a_subscriber_is_not_flagged_retained(port, proto, clients):
    s = clients(port, protocol=proto)
    s.subscribe_wait("ret2/x", 1)
    support.pub(port, "ret2/x", b"v", qos=1, retain=True, protocol=proto)
    msg = s.get()
    assert msg.payload == b"v"
    if proto == MQTTv311:
        # 3.1.1: a message forwarded to an existing subscription has retain 0.
        assert msg.retain is False
    support.pub(port, "ret2/x", b"", qos=1, retain=True, protocol=proto)


def test_an_empty_publish_without_retain_keeps_the_retained_message(port, proto, clients):
    support.pub(port, "ret3/x", b"kept", qos=1, retain=True, protocol=proto)
    support.pub(port, "ret3/x", b"", qos=1, retain=False, protocol=proto)
    s = clients(port, protocol=proto)
    s.subscribe_wait("ret3/x", 1)
    msg = s.get()
    assert (msg.payload, msg.retain) == (b"kept", True)
    support.pub(port, "ret3/x", b"", qos=1, retain=True, protocol=proto)


# --------------------------------------------------------------------------- wills

def test_the_will_is_published_when_a_client_vanishes(port, proto, clients):
    watcher = clients(port, protocol=proto)
    watcher.subscribe_wait("will/#", 1)
    dying = clients(port, protocol=proto, will=dict(topic="will/dev1", payload=b"offline", qos=1))
    dying.close_abruptly()
    msg = watcher.get(10)
    assert (msg.topic, msg.payload) == ("will/dev1", b"offline")
    still_serving(port, proto)


def test_the_will_is_not_published_after_a_clean_disconnect(port, proto, clients):
    watcher = clients(port, protocol=proto)
    watcher.subscribe_wait("will/#", 1)
    leaving = support.connect(port, protocol=proto, will=dict(topic="will/dev2", payload=b"offline", qos=1))
    leaving.disconnect_wait()
    watcher.expect_none(1.5)


# --------------------------------------------------------------------------- sessions

def _session_kw(proto, persistent: bool) -> dict:
    if proto == MQTTv5:
        return dict(clean=not persistent, session_expiry=3600 if persistent else 0)
    return dict(clean=not persistent)


def test_a_persistent_session_gets_the_messages_published_while_it_was_offline(port, proto, clients):
    cid = support.unique_id("persist")
    c = support.connect(port, client_id=cid, protocol=proto, **_session_kw(proto, True))
    c.subscribe_wait("sess/p", 1)
    c.disconnect_wait()

    for i in range(3):
        support.pub(port, "sess/p", f"m{i}".encode(), qos=1, protocol=proto)

    back = clients(port, client_id=cid, protocol=proto, **_session_kw(proto, True))
    assert back.session_present, "reconnecting to a persistent session must report session present"
    got = [back.get(5).payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    # and the subscription is still there
    support.pub(port, "sess/p", b"live", qos=1, protocol=proto)
    assert back.get(5).payload == b"live"
    back.disconnect_wait()
    # clean up the stored session
    clients(port, client_id=cid, protocol=proto, clean=True).disconnect_wait()


def test_a_clean_session_forgets_subscriptions_and_messages(port, proto, clients):
    cid = support.unique_id("clean")
    c = support.connect(port, client_id=cid, protocol=proto, **_session_kw(proto, False))
    c.subscribe_wait("sess/c", 1)
    c.disconnect_wait()

    support.pub(port, "sess/c", b"missed", qos=1, protocol=proto)

    back = clients(port, client_id=cid, protocol=proto, **_session_kw(proto, False))
    assert not back.session_present
    back.expect_none(1.0)
    support.pub(port, "sess/c", b"after", qos=1, protocol=proto)
    back.expect_none(0.5)


def test_a_second_connection_with_the_same_client_id_takes_over(port, proto, clients):
    cid = support.unique_id("takeover")
    first = clients(port, client_id=cid, protocol=proto)
    second = clients(port, client_id=cid, protocol=proto)
    assert first.disconnected.wait(5), "the older connection must be closed on takeover"
    second.subscribe_wait("take/x", 1)
    support.pub(port, "take/x", b"v", qos=1, protocol=proto)
    assert second.get().payload == b"v"


# --------------------------------------------------------------------------- hygiene (raw bytes)

@pytest.mark.parametrize("topic", [b"a/+", b"a/#", b"", b"a\x00b"],
                         ids=["plus", "hash", "empty", "nul"])
@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_a_publish_to_an_invalid_topic_closes_the_connection(port, topic, v5):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("bad"), v5=v5) == 0
        c.send(support.publish_packet(topic, b"x", qos=0, v5=v5))
        assert c.closed_by_peer(5), f"PUBLISH to {topic!r} must close the connection"
    still_serving(port)


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_a_second_connect_closes_the_connection(port, v5):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("twice"), v5=v5) == 0
        c.send(support.connect_packet(support.unique_id("twice"), v5=v5))
        assert c.closed_by_peer(5), "a second CONNECT must close the connection"
    still_serving(port)


def test_a_first_packet_that_is_not_connect_closes_the_connection(port):
    with RawConn(port) as c:
        c.send(support.publish_packet(b"x/y", b"early"))
        assert c.closed_by_peer(5)
    still_serving(port)


def test_garbage_bytes_close_the_connection(port):
    with RawConn(port) as c:
        c.send(b"\xff\xff\xff\xff\xff\x00garbage")
        assert c.closed_by_peer(5)
    still_serving(port)


@pytest.mark.parametrize("bad_filter", [b"a/#/b", b"a+", b"a/b#", b"+a/b", b""],
                         ids=["hash-mid", "plus-in-level", "hash-in-level", "plus-prefix", "empty"])
@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_a_malformed_filter_closes_the_connection(port, bad_filter, v5):
    """Raw bytes: Paho refuses to send such filters itself. As Mosquitto 2.0 does, the
    connection is closed (MQTT 5: DISCONNECT 0x81 or 0x82 first)."""
    with RawConn(port) as c:
        assert c.connect(support.unique_id("rawsub"), v5=v5) == 0
        c.send(support.subscribe_packet(bad_filter, 1, packet_id=7, v5=v5))
        assert c.closed_by_peer(5), f"SUBSCRIBE to {bad_filter!r} must close the connection"
    still_serving(port)


def test_keepalive_zero_is_accepted(port, proto, clients):
    c = clients(port, protocol=proto, keepalive=0)
    c.subscribe_wait("ka/0", 1)
    time.sleep(1.5)  # longer than any 1.5x keepalive a broker would wrongly apply to 0 -> 1
    support.pub(port, "ka/0", b"still here", qos=1, protocol=proto)
    assert c.get().payload == b"still here"
    assert c.is_connected()


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_keepalive_zero_on_the_wire_gets_connack_accepted(port, v5):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("ka0"), v5=v5, keepalive=0) == 0
        c.send(b"\xc0\x00")  # PINGREQ
        ptype, _, _ = c.read_packet()
        assert ptype == 13, "PINGREQ must get PINGRESP"


def test_a_client_is_closed_one_and_a_half_keepalives_after_its_last_packet(port):
    """Traffic moves the deadline; silence for 1.5 x keepalive ends the connection, not
    earlier and not much later [MQTT-3.1.2-24] (Mosquitto checks every few seconds,
    hence the room above)."""
    # Keepalive 4 s: the margins (1 s early, 6 s late) stay wide when the machine is
    # busy and this process wakes late after a PINGRESP.
    with RawConn(port) as c:
        assert c.connect(support.unique_id("ka2"), keepalive=4) == 0
        for _ in range(4):  # 9.6 s of pings 2.4 s apart: longer than 1.5 x 4 s
            time.sleep(2.4)
            c.send(b"\xc0\x00")  # PINGREQ
            assert c.read_packet()[0] == 13, "PINGREQ must get PINGRESP"
        last = time.monotonic()
        assert not c.closed_by_peer(5.0), "closed before 1.5 x keepalive of silence"
        assert c.closed_by_peer(8.0), "still open long after 1.5 x keepalive of silence"
        silent = time.monotonic() - last
        assert 5.0 <= silent < 13.0, f"closed after {silent:.1f} s of silence"


def test_a_client_that_disappears_mid_packet_does_not_hurt_others(port, proto):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("half")) == 0
        full = support.publish_packet(b"half/topic", b"x" * 1000, qos=1)
        c.send(full[:300])
    still_serving(port, proto)


# --------------------------------------------------------------------------- MQTT 5 message expiry

def test_mqtt5_an_expired_message_is_not_delivered_and_the_remaining_interval_is_sent(port, clients):
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    cid = support.unique_id("expiry")
    s = clients(port, protocol=MQTTv5, client_id=cid, clean=False, session_expiry=300)
    s.subscribe_wait("exp/#", 1)
    s.disconnect_wait()
    p = clients(port, protocol=MQTTv5)
    for payload, expiry in [(b"short", 1), (b"long", 60), (b"none", None)]:
        props = Properties(PacketTypes.PUBLISH)
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        p.publish_wait("exp/t", payload, qos=1, properties=props)
    time.sleep(2.1)  # let the 1-second interval run out while the session is offline
    s = clients(port, protocol=MQTTv5, client_id=cid, clean=False, session_expiry=300)
    got = [s.get(5), s.get(5)]
    assert [m.payload for m in got] == [b"long", b"none"]
    left = getattr(got[0].properties, "MessageExpiryInterval", None)
    assert left is not None and 1 <= left <= 58, left  # what is left of 60, not 60
    assert getattr(got[1].properties, "MessageExpiryInterval", None) is None
    s.expect_none(0.5)
