"""Raw packet sequences replayed against real Mosquitto 2.0 and edgemq, comparing every
byte that comes back after the CONNACK and whether the connection then closes (a
CONNACK's MQTT 5 properties differ by design and are read separately).

- a DISCONNECT with a reason code is `E0 01 rc`: no stray byte after it;
- CONNECT strings (client id, will topic, user name) with control characters or
  non-characters close the connection without a CONNACK;
- `MQTT` at an unknown level gets 3.1.1's CONNACK `20 02 00 01`;
- an MQTT 5 PUBREC / PUBREL for an unknown packet id gets reason 0x92 in the PUBREL /
  PUBCOMP (Mosquitto 2.0.11 answers success there; MQTT 5 §4.3.3 says 0x92).
"""

from __future__ import annotations

import pytest

import support
from support import RawConn, packet

QUIET = 2.0  # seconds of silence that end an answer (a close ends it at once)


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    """{"mosquitto": port, "edgemq": port}, both open to anonymous clients."""
    m = support.Mosquitto(tmp_path_factory.mktemp("mosq"), ["allow_anonymous true"]).start()
    p = support.free_port()
    e = support.Edgemq(tmp_path_factory.mktemp("edgemq"))
    e.write("broker.yaml", support.broker_yaml(
        "conformance", p, "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.start()
    support.wait_port(p)
    yield {"mosquitto": m.port, "edgemq": p}
    m.stop()
    e.stop(expect_clean=False)
    e.kill()


def s(text) -> bytes:
    b = text.encode() if isinstance(text, str) else bytes(text)
    return len(b).to_bytes(2, "big") + b


def connect(client_id, v5: bool, flags: int = 0x02, rest: bytes = b"", level=None) -> bytes:
    var = s("MQTT") + bytes([level or (5 if v5 else 4), flags]) + (30).to_bytes(2, "big")
    if v5:
        var += b"\0"
    return packet(0x10, var + s(client_id) + rest)


def after_connack(port: int, first: bytes, *then: bytes) -> tuple:
    """Sends `first` (a CONNECT that must be accepted), reads its CONNACK, sends `then`,
    and returns (the bytes that follow, closed)."""
    with RawConn(port) as c:
        c.send(first)
        ptype, _, body = c.read_packet()
        assert (ptype, body[:2]) == (2, b"\0\0"), body
        for p in then:
            c.send(p)
        return c.rest(QUIET)


def whole_answer(port: int, *send: bytes) -> tuple:
    with RawConn(port) as c:
        for p in send:
            c.send(p)
        return c.rest(QUIET)


def both(brokers, fn, *args) -> dict:
    return {name: fn(port, *args) for name, port in brokers.items()}


# ------------------------------------------------------------------ DISCONNECT framing

def test_a_malformed_packet_gets_the_disconnect_mosquitto_sends_then_close(brokers):
    # SUBSCRIBE with reserved flags 0: both say 0x81 (malformed) in three bytes.
    bad = packet(0x8A, b"\0\x01\0" + s("a") + b"\x01")
    got = both(brokers, after_connack, connect(support.unique_id("dis"), True), bad)
    assert got["mosquitto"] == (b"\xe0\x01\x81", True)
    assert got["edgemq"] == got["mosquitto"]


def test_a_session_takeover_closes_the_first_connection_edgemq_saying_why(brokers):
    # Mosquitto 2.0.11 closes the first connection without a DISCONNECT; edgemq sends
    # reason 0x8E (session taken over) in three bytes first.
    for name, port in brokers.items():
        cid = support.unique_id("takeover")
        with RawConn(port) as first:
            first.send(connect(cid, True))
            assert first.read_packet()[0] == 2
            with RawConn(port) as second:
                second.send(connect(cid, True))
                assert second.read_packet()[0] == 2
                want = b"\xe0\x01\x8e" if name == "edgemq" else b""
                assert first.rest(5.0) == (want, True), name


@pytest.mark.parametrize("name,then,answer", [
    ("second-connect", lambda cid: connect(cid, True), b"\xe0\x01\x82"),
    ("unknown-topic-alias", lambda cid: packet(0x30, s("") + b"\x03\x23\x00\x05x"), b"\xe0\x01\x82"),
    ("topic-alias-0", lambda cid: packet(0x30, s("a") + b"\x03\x23\x00\x00x"), b"\xe0\x01\x94"),
])
def test_every_disconnect_edgemq_sends_is_framed_whole(brokers, name, then, answer):
    # Mosquitto 2.0 closes these without a DISCONNECT; edgemq says why, in 3 bytes.
    cid = support.unique_id("frame")
    assert after_connack(brokers["edgemq"], connect(cid, True), then(cid)) == (answer, True)


def test_a_client_disconnect_with_will_in_three_bytes_sends_the_will(brokers):
    # `E0 01 04` (reason 0x04, no property length) is what Mosquitto's own clients send.
    for name, port in brokers.items():
        watcher = support.sub(port, "conf/will", 0)
        try:
            will = b"\0" + s("conf/will") + s("gone")  # will properties, topic, payload
            cid = support.unique_id("will")
            got = after_connack(port, connect(cid, True, flags=0x06, rest=will), b"\xe0\x01\x04")
            assert got == (b"", True), name
            assert watcher.get(5).payload == b"gone", name
        finally:
            watcher.disconnect_wait()


# ------------------------------------------------------------------ CONNECT strings

BAD_TEXT = ["a\x01b", "a\x1f", "\x7f", "a\u0085", "\u009f", "\ufdd0", "\uffff"]


def connect_with(where: str, text: str, v5: bool) -> bytes:
    wp = b"\0" if v5 else b""  # an MQTT 5 will starts with its properties
    if where == "client-id":
        return connect(text, v5)
    if where == "will-topic":
        return connect("cc-will", v5, flags=0x06, rest=wp + s(text) + s("m"))
    return connect("cc-user", v5, flags=0x82, rest=s(text))


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("where", ["client-id", "will-topic", "user-name"])
@pytest.mark.parametrize("text", BAD_TEXT, ids=[f"U+{ord(max(t)):04X}" for t in BAD_TEXT])
def test_a_control_character_in_a_connect_string_closes_as_mosquitto_does(brokers, v5, where, text):
    got = both(brokers, whole_answer, connect_with(where, text, v5))
    assert got["mosquitto"] == (b"", True)
    assert got["edgemq"] == got["mosquitto"]


@pytest.mark.parametrize("where", ["client-id", "will-topic"])
def test_printable_non_ascii_connect_strings_stay_accepted(brokers, where):
    got = both(brokers, whole_answer, connect_with(where, "caf\u00e9\u00a0\U0001f600", False))
    assert got["mosquitto"] == (b"\x20\x02\x00\x00", False)
    assert got["edgemq"] == got["mosquitto"]


# ------------------------------------------------------------------ protocol level


@pytest.mark.parametrize("level", [6, 7, 0x7F, 0xFF])
def test_mqtt_with_an_unknown_level_gets_the_311_connack_mosquitto_sends(brokers, level):
    got = both(brokers, whole_answer, connect("cc-level", False, level=level))
    assert got["mosquitto"] == (b"\x20\x02\x00\x01", True)
    assert got["edgemq"] == got["mosquitto"]


# ------------------------------------------------------------------ unknown packet ids

PINGRESP = b"\xd0\x00"


@pytest.mark.parametrize("sent,answer", [
    (packet(0x50, b"\0\x07"), b"\x62\x03\x00\x07\x92"),
    (packet(0x62, b"\0\x07"), b"\x70\x03\x00\x07\x92"),
], ids=["pubrec", "pubrel"])
def test_mqtt5_pubrec_or_pubrel_for_an_unknown_id_gets_reason_0x92(brokers, sent, answer):
    # A PINGREQ after it: its PINGRESP shows the connection stays open and nothing
    # else was sent.
    cid = support.unique_id("pkid")
    got = after_connack(brokers["edgemq"], connect(cid, True), sent, b"\xc0\x00")
    assert got == (answer + PINGRESP, False)
    # Mosquitto 2.0.11 frames the same packet alike, with reason 0 (success).
    mosq = after_connack(brokers["mosquitto"], connect(cid, True), sent, b"\xc0\x00")
    assert mosq == (answer[:1] + b"\x02" + answer[2:4] + PINGRESP, False)


@pytest.mark.parametrize("sent", [packet(0x50, b"\0\x07"), packet(0x62, b"\0\x07")],
                         ids=["pubrec", "pubrel"])
def test_mqtt311_pubrec_or_pubrel_for_an_unknown_id_is_answered_as_mosquitto_does(brokers, sent):
    cid = support.unique_id("pkid4")
    got = both(brokers, after_connack, connect(cid, False), sent, b"\xc0\x00")
    assert got["mosquitto"][1] is False and got["mosquitto"][0].endswith(PINGRESP)
    assert got["edgemq"] == got["mosquitto"]
