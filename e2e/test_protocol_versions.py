"""Protocol levels real clients send: MQTT 3.1 (`MQIsdp`, level 3) from Mosquitto's
and Paho's clients, Mosquitto's bridge bit (0x80 on the level, on by default in a
Mosquitto bridge), and the CONNACK an unsupported level gets.
"""

from __future__ import annotations

import subprocess

import pytest

import support
from paho.mqtt.client import MQTTv31
from support import RawConn


@pytest.fixture
def port(edgemq):
    p = support.free_port()
    e = edgemq()
    e.write("broker.yaml", support.broker_yaml(
        "versions", p, "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.start()
    support.wait_port(p)
    return p


def raw_connect(name: bytes, level: int, client_id: bytes = b"raw-1", flags: int = 0x02) -> bytes:
    body = (len(name).to_bytes(2, "big") + name + bytes([level, flags]) + (30).to_bytes(2, "big")
            + len(client_id).to_bytes(2, "big") + client_id)
    return support.packet(0x10, body)


def test_mosquitto_clients_publish_and_subscribe_with_mqtt31(port):
    sub_bin = support.require("mosquitto_sub")
    pub_bin = support.require("mosquitto_pub")
    s = subprocess.Popen([sub_bin, "-V", "mqttv31", "-h", "127.0.0.1", "-p", str(port),
                          "-t", "v31/#", "-q", "1", "-C", "1", "-v"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The subscription is in place once a retained-free probe gets through.
        def delivered():
            r = support.run([pub_bin, "-V", "mqttv31", "-h", "127.0.0.1", "-p", str(port),
                             "-t", "v31/x", "-q", "1", "-m", "hello 3.1"])
            assert r.returncode == 0, r.stderr
            try:
                out, err = s.communicate(timeout=0.5)
            except subprocess.TimeoutExpired:
                return None
            return out or err or "exited"
        got = support.poll(delivered, timeout=10, interval=0.1,
                           message="mosquitto_sub -V mqttv31 receiving")
        assert got.strip() == "v31/x hello 3.1", got
    finally:
        if s.poll() is None:
            s.kill()
            s.wait()


def test_paho_mqttv31_publishes_and_subscribes_at_each_qos(port, clients):
    s = clients(port, protocol=MQTTv31)
    assert s.subscribe_wait("v31/paho", 2) == [2]
    p = clients(port, protocol=MQTTv31)
    for qos in (0, 1, 2):
        p.publish_wait("v31/paho", f"q{qos}".encode(), qos=qos)
        msg = s.get()
        assert (msg.topic, msg.payload, msg.qos) == ("v31/paho", f"q{qos}".encode(), qos)


@pytest.mark.parametrize("client_id,code", [(b"", 2), (b"x" * 24, 2), (b"x" * 23, 0), (b"a", 0)],
                         ids=["empty", "24-chars", "23-chars", "1-char"])
def test_an_mqtt31_client_id_has_1_to_23_characters(port, client_id, code):
    with RawConn(port) as c:
        c.send(raw_connect(b"MQIsdp", 3, client_id))
        ptype, _, body = c.read_packet()
        assert (ptype, body) == (2, bytes([0, code]))
        if code:
            assert c.closed_by_peer(5)


@pytest.mark.parametrize("name,level,answer", [
    (b"MQTT", 3, b"\x00\x01"),
    (b"MQTT", 2, b"\x00\x01"),
    (b"MQIsdp", 4, b"\x00\x01"),
    (b"MQTT", 6, b"\x00\x01"),
    (b"MQTT", 0x85, b"\x00\x84\x00"),
], ids=["mqtt-3", "mqtt-2", "mqisdp-4", "mqtt-6-311-format", "mqtt-5-bridge-bit"])
def test_an_unsupported_level_gets_connack_refused_then_close(port, name, level, answer):
    with RawConn(port) as c:
        c.send(raw_connect(name, level))
        ptype, _, body = c.read_packet()
        assert (ptype, body) == (2, answer)
        assert c.closed_by_peer(5)


def test_an_unknown_protocol_name_is_closed_without_connack(port):
    with RawConn(port) as c:
        c.send(raw_connect(b"MQTX", 4))
        assert c.closed_by_peer(5)
        assert c.buf == b""


@pytest.mark.parametrize("level", [0x83, 0x84], ids=["mqtt31", "mqtt311"])
def test_the_bridge_bit_is_accepted_and_a_bridge_gets_no_echo(port, level):
    name = b"MQIsdp" if level == 0x83 else b"MQTT"
    with RawConn(port) as c:
        c.send(raw_connect(name, level, b"bridge-raw"))
        assert c.read_packet() == (2, 0, b"\x00\x00")
        c.send(support.subscribe_packet(b"echo/#", 1, packet_id=3))
        ptype, _, body = c.read_packet()
        assert (ptype, body) == (9, b"\x00\x03\x01")
        # Its own retained publish is not sent back to it; another client's is, with
        # the retain flag kept (retain-as-published, as Mosquitto treats a bridge).
        c.send(support.publish_packet(b"echo/own", b"mine", qos=0, retain=True))
        support.pub(port, "echo/other", b"theirs", qos=0, retain=True)
        ptype, flags, body = c.read_packet()
        assert ptype == 3 and body.endswith(b"theirs"), body
        assert flags & 1 == 1, "a bridge gets live messages with their retain flag"
        c.sock.settimeout(0.5)
        with pytest.raises(OSError):
            c.read_packet()


def test_a_default_mosquitto_bridge_connects_in_and_messages_cross_both_ways(port, mosquitto, clients):
    m = mosquitto(["allow_anonymous true", "connection edge",
                   f"address 127.0.0.1:{port}", "topic x/# both 1"])
    on_edge = clients(port)
    on_edge.subscribe_wait("x/#", 1)
    on_mosq = clients(m.port)
    on_mosq.subscribe_wait("x/#", 1)

    # Wait until the bridge is in (probes from the Mosquitto side reach edgemq).
    def bridged():
        support.pub(m.port, "x/probe", b"probe", qos=1)
        return on_edge.get_or_none(0.3)
    support.poll(bridged, timeout=15, interval=0.1,
                 message="the Mosquitto bridge connecting into edgemq")
    for c in (on_edge, on_mosq):
        while c.get_or_none(0.5) is not None:
            pass

    # Into edgemq: arrives once on each side (no echo back into Mosquitto).
    support.pub(m.port, "x/from-mosquitto", b"in", qos=1)
    assert (on_edge.get().topic, on_mosq.get().topic) == ("x/from-mosquitto",) * 2
    # Out of edgemq into Mosquitto: arrives once on each side.
    support.pub(port, "x/from-edgemq", b"out", qos=1)
    assert (on_edge.get().payload, on_mosq.get().payload) == (b"out", b"out")
    on_edge.expect_none(1.0)
    on_mosq.expect_none(0.5)
