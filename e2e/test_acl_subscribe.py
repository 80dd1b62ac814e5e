"""SUBSCRIBE is checked against the ACL, and a shared group never hands a message to a
member that may not receive it (issue 17, item 7).

A filter is granted when at least one topic it matches may be read; otherwise the
SUBACK refuses it (MQTT 3.1.1 0x80, MQTT 5 0x87 Not authorized) and the connection
stays open. Deliveries are still checked one by one.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

import support
from support import RawConn, packet

BROKER = "subacl"

USERS = {
    # name: acl rules
    "worker": [("jobs/#", "read")],
    "intruder": [("other/#", "read")],
    "partial": [("jobs/b/#", "read")],
    "boss": [("jobs/#", "write")],
}


@pytest.fixture
def broker(edgemq, tmp_path):
    port = support.free_port()
    e = edgemq()
    parts = [support.broker_yaml(BROKER, port)]
    for name, acl in USERS.items():
        parts.append(support.user_yaml(name, BROKER, password_hash=support.edgemq_hash(tmp_path, name, f"{name}-pw"), acl=acl))
    e.write("broker.yaml", support.docs(*parts))
    e.start()
    support.wait_port(port)
    return e, port


def login(port, clients, name, **kw):
    return clients(port, username=name, password=f"{name}-pw", client_id=support.unique_id(name), **kw)


def publish(port, clients, topic, n):
    boss = login(port, clients, "boss")
    for i in range(n):
        boss.publish_wait(topic, str(i).encode(), qos=1)


def received(cl, n_expected, settle=1.0):
    """Payloads received, after waiting for n_expected or for `settle` seconds of silence."""
    got = []
    while len(got) < n_expected:
        m = cl.get_or_none(timeout=3.0)
        if m is None:
            break
        got.append(m.payload.decode())
    while (m := cl.get_or_none(timeout=settle)) is not None:
        got.append(m.payload.decode())
    return got


def raw_login(port, name, v5=False):
    rc = RawConn(port)
    assert rc.connect(support.unique_id(name), v5=v5, username=name, password=f"{name}-pw") == 0
    return rc


def assert_still_serving(rc):
    rc.send(packet(0xC0, b""))  # PINGREQ
    assert rc.read_packet() == (0xD, 0, b""), "PINGRESP after the refused SUBSCRIBE"


def test_a_filter_without_read_right_is_refused_in_the_suback_v311(broker):
    _, port = broker
    with raw_login(port, "intruder") as rc:
        rc.send(support.subscribe_packet("$share/g/jobs/#", qos=1, packet_id=7))
        assert rc.read_packet() == (9, 0, b"\x00\x07\x80"), "SUBACK 0x80 (failure) for the shared filter"
        rc.send(support.subscribe_packet("jobs/+", qos=1, packet_id=8))
        assert rc.read_packet() == (9, 0, b"\x00\x08\x80"), "SUBACK 0x80 for a plain filter"
        # several filters in one SUBSCRIBE: each gets its own code
        body = b"\x00\x09" + b"".join(len(t).to_bytes(2, "big") + t.encode() + b"\x01"
                                       for t in ("other/x", "jobs/1", "#"))
        rc.send(packet(0x82, body))
        assert rc.read_packet() == (9, 0, b"\x00\x09\x01\x80\x01"), \
            "other/x granted, jobs/1 refused, # granted (other/... is readable)"
        assert_still_serving(rc)


def test_a_filter_without_read_right_is_refused_in_the_suback_v5(broker):
    _, port = broker
    with raw_login(port, "intruder", v5=True) as rc:
        rc.send(support.subscribe_packet("$share/g/jobs/#", qos=1, packet_id=7, v5=True))
        assert rc.read_packet() == (9, 0, b"\x00\x07\x00\x87"), "SUBACK 0x87 Not authorized"
        rc.send(support.subscribe_packet("other/#", qos=1, packet_id=8, v5=True))
        assert rc.read_packet() == (9, 0, b"\x00\x08\x00\x01"), "a readable filter is granted QoS 1"
        assert_still_serving(rc)


def test_paho_v5_sees_not_authorized_and_the_entitled_member_gets_every_message(broker, clients):
    _, port = broker
    worker = login(port, clients, "worker", protocol=mqtt.MQTTv5)
    intruder = login(port, clients, "intruder", protocol=mqtt.MQTTv5)
    assert worker.subscribe_wait("$share/g/jobs/#", qos=1) == [1]
    assert intruder.subscribe_wait("$share/g/jobs/#", qos=1) == [0x87]
    publish(port, clients, "jobs/build", 10)
    got = received(worker, 10)
    assert sorted(got, key=int) == [str(i) for i in range(10)], f"worker received {got}"
    intruder.expect_none(timeout=0.5)


def test_a_share_group_passes_over_a_member_that_may_not_read_the_topic(broker, clients):
    """`partial` may read jobs/b/# only: its `$share/g/jobs/#` is granted, and it shares
    jobs/b/... messages, but every jobs/a/... message goes to `worker`."""
    e, port = broker
    worker = login(port, clients, "worker")
    partial = login(port, clients, "partial")
    assert worker.subscribe_wait("$share/g/jobs/#", qos=1) == [1]
    assert partial.subscribe_wait("$share/g/jobs/#", qos=1) == [1]
    publish(port, clients, "jobs/a/x", 10)
    got = received(worker, 10)
    assert sorted(got, key=int) == [str(i) for i in range(10)], f"worker received {got}"
    partial.expect_none(timeout=0.5)
    # both may read jobs/b/...: the group shares them in turn
    publish(port, clients, "jobs/b/x", 10)
    w, p = received(worker, 5), received(partial, 5)
    assert len(w) == 5 and len(p) == 5, f"worker {w}, partial {p}"
    assert sorted(w + p, key=int) == [str(i) for i in range(10)]
    # nothing was refused along the way (no delivery dropped by the ACL)
    assert support.metric(e.metrics(), "edgemq_acl_denials_total") == 0, "no delivery was refused"


def test_a_wide_filter_overlapping_a_read_rule_is_granted_and_filtered(broker, clients):
    _, port = broker
    partial = login(port, clients, "partial")
    assert partial.subscribe_wait("jobs/+/x", qos=1) == [1], "jobs/b/x may be read"
    assert partial.subscribe_wait("#", qos=1) == [1], "`#` holds jobs/b/..., which partial may read"
    boss = login(port, clients, "boss")
    boss.publish_wait("jobs/a/x", b"a", qos=1)
    boss.publish_wait("jobs/b/x", b"b", qos=1)
    m = partial.get(timeout=5)
    assert (m.topic, m.payload) == ("jobs/b/x", b"b")
    partial.expect_none(timeout=1.0)
