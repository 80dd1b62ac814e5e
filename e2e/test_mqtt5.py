"""MQTT 5 features with Paho v5 clients (raw bytes where Paho will not send the
mistake): what CONNACK announces, server keep alive, will delay, topic aliases from
clients, the client's Maximum Packet Size, subscription identifiers, shared
subscriptions, and the request/response and user properties relayed unchanged.
"""

from __future__ import annotations

import pytest

import support
from paho.mqtt.client import MQTTv5
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import RawConn, mqtt_str as s, packet

MAX_INFLIGHT = 20  # the Broker's default limits.maxInflight


@pytest.fixture
def broker(edgemq):
    p = support.free_port()
    e = edgemq()
    e.write("broker.yaml", support.broker_yaml(
        "mqtt5", p, "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.start()
    support.wait_port(p)
    return e, p


@pytest.fixture
def port(broker):
    return broker[1]


def props(kind, **values) -> Properties:
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def v5(clients, port, client_id=None, keepalive=30, will=None, **connect_props):
    """A Paho MQTT 5 client with CONNECT properties (and a will with properties)."""
    cl = support.make_client(client_id, MQTTv5)
    cl.c.reconnect_delay_set(60, 120)
    if will:
        cl.c.will_set(will["topic"], will["payload"], will.get("qos", 1),
                      properties=props(PacketTypes.WILLMESSAGE, **will.get("props", {})))
    clean = connect_props.pop("clean", True)
    cl.c.connect("127.0.0.1", port, keepalive=keepalive, clean_start=clean,
                 properties=props(PacketTypes.CONNECT, **connect_props) if connect_props else None)
    cl.c.loop_start()
    assert cl.connack.wait(5), "no CONNACK"
    assert not cl.connect_rc.is_failure, cl.connect_rc
    clients.track(cl)
    return cl


def subscribe(cl, topic, qos=1, sub_id=None) -> list:
    p = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id) if sub_id else None
    result, mid = cl.c.subscribe(topic, qos, properties=p)
    assert result == 0
    while True:
        got_mid, codes = cl.subacks.get(timeout=5)
        if got_mid == mid:
            return codes


def disconnect_reason(c: RawConn) -> int:
    ptype, _, body = c.read_packet()
    assert ptype == 14, f"expected DISCONNECT, got packet type {ptype}"
    return body[0]


# --------------------------------------------------------------------------- CONNACK

def test_connack_announces_exactly_what_the_broker_supports(port, clients):
    c = v5(clients, port, keepalive=60)
    got = c.connect_props.json()
    assert got["ReceiveMaximum"] == MAX_INFLIGHT
    assert got["MaximumPacketSize"] > 1_000_000
    assert got["TopicAliasMaximum"] == 10
    for flag in ("RetainAvailable", "WildcardSubscriptionAvailable",
                 "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable"):
        assert got[flag] == 1, flag
    assert "MaximumQoS" not in got, "QoS 2 is supported: no Maximum QoS"
    assert "ServerKeepAlive" not in got, "the keep alive asked for is used as is"


def test_a_client_asking_for_no_keep_alive_is_given_the_server_keep_alive_as_mosquitto(port, clients):
    c = v5(clients, port, keepalive=0)
    assert c.connect_props.json()["ServerKeepAlive"] == 65535


# --------------------------------------------------------------------------- will delay

def test_a_delayed_will_is_published_after_the_delay_not_at_the_disconnect(port, clients):
    watcher = v5(clients, port)
    subscribe(watcher, "wd/#")
    dying = v5(clients, port, will=dict(topic="wd/status", payload=b"offline",
                                        props=dict(WillDelayInterval=3)),
               clean=False, SessionExpiryInterval=60)
    dying.close_abruptly()
    # Published right after the connection dropped, this overtakes the delayed will.
    v5(clients, port).publish_wait("wd/marker", b"after-drop", qos=1)
    assert [watcher.get(10).payload for _ in range(2)] == [b"after-drop", b"offline"]


def test_a_will_is_published_when_the_session_ends_before_the_delay(port, clients):
    watcher = v5(clients, port)
    subscribe(watcher, "we/#")
    dying = v5(clients, port, will=dict(topic="we/status", payload=b"offline",
                                        props=dict(WillDelayInterval=3600)),
               clean=False, SessionExpiryInterval=1)
    dying.close_abruptly()
    msg = watcher.get(10)
    assert (msg.topic, msg.payload) == ("we/status", b"offline")


def test_a_reconnect_within_the_will_delay_cancels_the_will(port, clients):
    watcher = v5(clients, port)
    subscribe(watcher, "wc/#")
    cid = support.unique_id("wc")
    dying = v5(clients, port, client_id=cid, will=dict(
        topic="wc/status", payload=b"offline", props=dict(WillDelayInterval=2)),
        clean=False, SessionExpiryInterval=60)
    dying.close_abruptly()
    v5(clients, port, client_id=cid, clean=False, SessionExpiryInterval=60)
    # A will with a longer delay, dropped after the reconnect: the cancelled will
    # would have been due before it.
    marker = v5(clients, port, will=dict(topic="wc/marker", payload=b"later",
                                         props=dict(WillDelayInterval=4)),
                clean=False, SessionExpiryInterval=60)
    marker.close_abruptly()
    assert watcher.get(15).payload == b"later"


# --------------------------------------------------------------------------- topic aliases

def test_a_topic_alias_set_by_a_client_stands_for_its_topic(port, clients):
    sub = v5(clients, port)
    subscribe(sub, "alias/#")
    pub = v5(clients, port)
    pub.publish_wait("alias/temp", b"21", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish_wait("", b"22", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    got = [sub.get(5), sub.get(5)]
    assert [(m.topic, m.payload) for m in got] == [("alias/temp", b"21"), ("alias/temp", b"22")]


@pytest.mark.parametrize("topic,alias,reason", [
    ("alias/x", 0, 0x94),
    ("alias/x", 11, 0x94),
    ("", 5, 0x82),
], ids=["alias-0", "above-maximum", "unknown-alias-empty-topic"])
def test_an_invalid_topic_alias_gets_a_disconnect_saying_why(port, topic, alias, reason):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("alias"), v5=True) == 0
        c.send(packet(0x30, s(topic) + b"\x03\x23" + alias.to_bytes(2, "big") + b"x"))
        assert disconnect_reason(c) == reason
        assert c.closed_by_peer(5)


# --------------------------------------------------------------------------- Maximum Packet Size

def test_a_message_larger_than_the_clients_maximum_packet_size_is_dropped_and_counted(broker, clients):
    e, port = broker
    # A window of one: a dropped QoS 1 message must free its slot for the next one.
    small = v5(clients, port, MaximumPacketSize=200, ReceiveMaximum=1)
    subscribe(small, "mps/#")
    pub = v5(clients, port)
    for payload in (b"first", b"x" * 1000, b"third"):
        pub.publish_wait("mps/t", payload, qos=1)
    assert [small.get(5).payload, small.get(5).payload] == [b"first", b"third"]
    dropped = [v for k, v in e.metrics().items() if 'reason="packet_too_large"' in k]
    assert dropped == [1]


def test_a_queued_message_behind_one_too_large_for_the_client_is_still_delivered(broker, clients):
    """The session's queue holds all three when the client comes back: the one too large
    frees the only in-flight slot, and nothing else wakes the session for the third."""
    e, port = broker
    cid = support.unique_id("mpsq")
    small = v5(clients, port, client_id=cid, clean=False, SessionExpiryInterval=60,
               MaximumPacketSize=200, ReceiveMaximum=1)
    subscribe(small, "mpsq/#")
    small.disconnect_wait()
    pub = v5(clients, port)
    for payload in (b"first", b"x" * 1000, b"third"):
        pub.publish_wait("mpsq/t", payload, qos=1)
    back = v5(clients, port, client_id=cid, clean=False, SessionExpiryInterval=60,
              MaximumPacketSize=200, ReceiveMaximum=1)
    assert back.session_present, "the session and its three queued messages must be kept"
    assert [back.get(5).payload, back.get(5).payload] == [b"first", b"third"]
    back.expect_none(1)


# --------------------------------------------------------------------------- subscription identifiers

def test_a_message_carries_the_identifiers_of_every_subscription_it_matches(port, clients):
    sub = v5(clients, port)
    subscribe(sub, "sid/#", sub_id=1)
    subscribe(sub, "sid/+", sub_id=7)
    subscribe(sub, "sid/other")
    pub = v5(clients, port)
    pub.publish_wait("sid/x", b"a", qos=1)
    pub.publish_wait("sid/other", b"b", qos=1)
    pub.publish_wait("sid/x/y", b"c", qos=1)
    got = {m.payload: sorted(getattr(m.properties, "SubscriptionIdentifier", []))
           for m in (sub.get(5), sub.get(5), sub.get(5))}
    assert got == {b"a": [1, 7], b"b": [1, 7], b"c": [1]}


def test_a_retained_message_sent_on_subscribe_carries_the_subscription_identifier(port, clients):
    pub = v5(clients, port)
    pub.publish_wait("sidr/state", b"on", qos=1, retain=True)
    sub = v5(clients, port)
    subscribe(sub, "sidr/#", sub_id=42)
    m = sub.get(5)
    assert (m.payload, m.retain, m.properties.SubscriptionIdentifier) == (b"on", True, [42])


# --------------------------------------------------------------------------- shared subscriptions

def test_members_of_a_share_group_take_messages_in_turn_and_each_group_gets_one_copy(port, clients):
    a, b, c = (v5(clients, port) for _ in range(3))
    assert subscribe(a, "$share/workers/jobs/#") == [1]
    assert subscribe(b, "$share/workers/jobs/#") == [1]
    assert subscribe(c, "$share/audit/jobs/+") == [1]
    pub = v5(clients, port)
    for i in range(6):
        pub.publish_wait("jobs/x", str(i).encode(), qos=1)
    audit = [c.get(5).payload for _ in range(6)]
    assert audit == [str(i).encode() for i in range(6)]
    got = {"a": [], "b": []}

    def all_six():
        for name, cl in (("a", a), ("b", b)):
            got[name] += [m.payload for m in cl.drain()]
        return len(got["a"]) + len(got["b"]) >= 6

    support.poll(all_six, timeout=10, message="six messages across the group")
    assert sorted(got["a"] + got["b"]) == audit, "each message once within the group"
    assert (len(got["a"]), len(got["b"])) == (3, 3), got


def test_a_shared_subscribe_gets_no_retained_messages(port, clients):
    pub = v5(clients, port)
    pub.publish_wait("shr/state", b"retained", qos=1, retain=True)
    sub = v5(clients, port)
    assert subscribe(sub, "$share/g/shr/#") == [1]
    pub.publish_wait("shr/live", b"live", qos=1)
    assert sub.get(5).payload == b"live"


@pytest.mark.parametrize("share", ["$share/g", "$share//x"], ids=["no-filter", "empty-share-name"])
def test_an_invalid_share_name_is_refused_in_the_suback(port, clients, share):
    sub = v5(clients, port)
    assert subscribe(sub, share) == [0x8F]


def test_a_share_name_with_a_wildcard_is_a_protocol_error(port):
    with RawConn(port) as c:
        assert c.connect(support.unique_id("share"), v5=True) == 0
        c.send(packet(0x82, b"\0\x01\0" + s("$share/g+/x") + b"\x01"))
        assert disconnect_reason(c) == 0x82
        assert c.closed_by_peer(5)


# --------------------------------------------------------------------------- relayed properties

def test_request_response_content_type_and_user_properties_reach_subscribers_unchanged(port, clients):
    sub = v5(clients, port)
    subscribe(sub, "rr/#")
    pub = v5(clients, port)
    sent = props(PacketTypes.PUBLISH, ResponseTopic="rr/reply/1", CorrelationData=b"\x00\x01id",
                 ContentType="application/json", PayloadFormatIndicator=1,
                 UserProperty=[("a", "1"), ("b", "2"), ("a", "3")])
    pub.publish_wait("rr/request", b'{"q":1}', qos=1, properties=sent)
    got = sub.get(5).properties
    assert got.ResponseTopic == "rr/reply/1"
    assert got.CorrelationData == b"\x00\x01id"
    assert got.ContentType == "application/json"
    assert got.PayloadFormatIndicator == 1
    assert got.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]
