"""A broker that stops (SIGTERM: an upgrade, a restart) tells its clients instead of
cutting them: it stops accepting, sends each MQTT 5 client DISCONNECT 0x8B (server
shutting down) at `limits.shutdownDisconnectRate` per second, closes the sockets, and
saves the sessions it held."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from support import (RawConn, _mqtt_str, _varint, broker_yaml, free_port, packet,
                     publish_packet, subscribe_packet)

# DISCONNECT, reason 0x8B (server shutting down), no properties: the whole packet.
DISCONNECT_8B = b"\xe0\x01\x8b"


def config(port: int, rate: int = 0, persistence: bool = False) -> str:
    extra = ("  allowAnonymous: true\n"
             "  anonymousAcl: [{topic: '#', access: readwrite}]\n"
             f"  persistence: {{enabled: {'true' if persistence else 'false'}}}\n")
    if rate:
        extra += f"  limits: {{shutdownDisconnectRate: {rate}}}\n"
    return broker_yaml("home", port, extra)


def connect_v5(port: int, client_id: str, clean: bool = True, expiry: int = 0) -> tuple:
    """A raw MQTT 5 connection; (conn, session present flag) after CONNACK success."""
    c = RawConn(port)
    props = b""
    if expiry:
        props = b"\x11" + expiry.to_bytes(4, "big")  # Session Expiry Interval
    var = (_mqtt_str("MQTT") + bytes([5, 0x02 if clean else 0]) + (30).to_bytes(2, "big")
           + _varint(len(props)) + props)
    c.send(packet(0x10, var + _mqtt_str(client_id)))
    ptype, _, body = c.read_packet()
    assert ptype == 2 and body[1] == 0, f"CONNACK {ptype} {body!r}"
    return c, body[0] & 1


def rest_of_stream(c: RawConn, timeout: float = 15.0) -> bytes:
    """Every byte the broker sends until it closes the connection."""
    c.sock.settimeout(timeout)
    data = c.buf
    while True:
        chunk = c.sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_sigterm_sends_each_mqtt5_client_disconnect_0x8b_then_closes_and_closes_311_clients(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", config(port))
    e.start()
    v5 = [connect_v5(port, f"dev{i}")[0] for i in range(3)]
    v311 = RawConn(port)
    assert v311.connect("old-device") == 0

    e.stop()  # SIGTERM; asserts a clean exit

    for c in v5:
        # The whole packet, then the socket closes: nothing else arrives.
        assert rest_of_stream(c) == DISCONNECT_8B
    # MQTT 3.1.1 has no DISCONNECT from the server: the socket just closes.
    assert rest_of_stream(v311) == b""
    assert "clients told to disconnect" in e.log_text()


def test_disconnects_are_paced_and_new_connections_are_refused_meanwhile(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", config(port, rate=4))
    e.start()
    n = 6
    conns = [connect_v5(port, f"paced{i}")[0] for i in range(n)]
    arrived: list = [None] * n
    streams: list = [None] * n

    def wait(i):
        streams[i] = rest_of_stream(conns[i])
        arrived[i] = time.monotonic()

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    stopper = threading.Thread(target=e.stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while all(a is None for a in arrived) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(a is not None for a in arrived), "no client was told to go"
    # While the broker tells the rest, it accepts nobody new: the client retries
    # elsewhere (the pod taking over) instead of landing on a broker about to stop.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    for t in threads:
        t.join(20)
    stopper.join(20)
    assert streams == [DISCONNECT_8B] * n
    # 4 per second: six clients take at least 5 gaps of 0.25 s (a lower bound only).
    span = max(arrived) - min(arrived)
    assert span >= 1.0, f"6 disconnects at 4/s came within {span:.2f} s"


def test_a_persistent_session_told_to_go_is_saved_with_its_unacknowledged_message(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", config(port, persistence=True))
    e.start()
    sub, present = connect_v5(port, "kitchen-sensor", clean=False, expiry=3600)
    assert present == 0
    sub.send(subscribe_packet("lights/#", qos=1, packet_id=1, v5=True))
    ptype, _, body = sub.read_packet()
    assert ptype == 9 and body[-1] == 1, f"SUBACK {ptype} {body!r}"
    pub, _ = connect_v5(port, "switch")
    pub.send(publish_packet("lights/kitchen", b"on", qos=1, packet_id=7, v5=True))
    ptype, _, body = pub.read_packet()
    assert ptype == 4 and body[:2] == (7).to_bytes(2, "big"), f"PUBACK {ptype} {body!r}"
    # Delivered, never acknowledged: in flight when the broker stops.
    ptype, flags, body = sub.read_packet()
    assert ptype == 3 and flags & 0x06 == 0x02 and body.endswith(b"on")

    e.stop()
    assert rest_of_stream(sub) == DISCONNECT_8B
    assert rest_of_stream(pub) == DISCONNECT_8B
    e.start()

    again, present = connect_v5(port, "kitchen-sensor", clean=False, expiry=3600)
    assert present == 1, "the persistent session was not kept"
    ptype, flags, body = again.read_packet()
    assert ptype == 3 and flags & 0x08, f"expected the PUBLISH again with DUP, got {ptype} {flags}"
    assert body.endswith(b"on")
