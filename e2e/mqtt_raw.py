"""Raw MQTT bytes for edgemq's black-box tests and benchmarks: packet builders and a
reader over plain sockets, with the standard library only (benchmark scripts use it
without the test dependencies). `support` re-exports every name."""

from __future__ import annotations

import socket
import time
from typing import Optional


def topic_matches_filter(filter_: str, topic: str) -> bool:
    """MQTT topic matching (`+` one level, `#` the rest including the parent; a
    wildcard first level never matches a `$` topic)."""
    if topic.startswith("$") and filter_[:1] in ("+", "#"):
        return False
    f, t = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(s) -> bytes:
    b = s.encode() if isinstance(s, str) else bytes(s)
    return len(b).to_bytes(2, "big") + b


def packet(first_byte: int, body: bytes) -> bytes:
    """A raw MQTT packet: fixed header byte, remaining length, body."""
    return bytes([first_byte]) + _varint(len(body)) + body


def connect_packet(client_id: str = "", keepalive: int = 30, clean: bool = True,
                   username=None, password=None, v5: bool = False) -> bytes:
    """A raw CONNECT (3.1.1 by default, MQTT 5 with v5=True, no properties)."""
    flags = 0x02 if clean else 0
    payload = _mqtt_str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _mqtt_str(username)
    if password is not None:
        flags |= 0x40
        payload += _mqtt_str(password)
    var = _mqtt_str("MQTT") + bytes([5 if v5 else 4, flags]) + keepalive.to_bytes(2, "big")
    if v5:
        var += b"\x00"  # no properties
    return packet(0x10, var + payload)


def publish_packet(topic, payload: bytes = b"", qos: int = 0, retain: bool = False,
                   packet_id: int = 1, v5: bool = False) -> bytes:
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    body = _mqtt_str(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if v5:
        body += b"\x00"
    return packet(first, body + payload)


def subscribe_packet(topic, qos: int = 0, packet_id: int = 1, v5: bool = False) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"") + _mqtt_str(topic) + bytes([qos])
    return packet(0x82, body)


def mqtt_str(s) -> bytes:
    """An MQTT UTF-8 string (or binary data): two length bytes, then the bytes."""
    return _mqtt_str(s)


DISCONNECT = b"\xe0\x00"  # a 3.1.1 DISCONNECT (MQTT 5: normal disconnection)


def read_packet(sock: socket.socket) -> tuple:
    """(first byte, body) of the next packet; raises ConnectionError on EOF."""
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by peer")
            buf += chunk
        return buf
    first = exactly(1)[0]
    mult, length = 1, 0
    while True:
        b = exactly(1)[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return first, exactly(length)


def read_until(sock: socket.socket, packet_type: int) -> bytes:
    """Body of the next packet of this type (high nibble), skipping others."""
    while True:
        first, body = read_packet(sock)
        if first >> 4 == packet_type:
            return body


def closed_by_peer(sock: socket.socket, timeout: float = 0.05, sink: Optional[bytearray] = None) -> bool:
    """True when the peer closes the connection (EOF or reset) within timeout; what
    arrives meanwhile is read and dropped, or appended to `sink`."""
    old = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not data:
                return True
            if sink is not None:
                sink += data
            if time.monotonic() >= deadline:
                return False
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def nothing_more(sock: socket.socket, timeout: float = 0.5) -> bool:
    """True when nothing arrives on the socket for `timeout` seconds and it stays open."""
    sock.settimeout(timeout)
    try:
        sock.recv(1)
        return False
    except socket.timeout:
        return True


def raw_connect(port: int, client_id: str, username: Optional[str] = None,
                password: Optional[str] = None, clean: bool = True, rcvbuf: Optional[int] = None,
                timeout: float = 5.0) -> tuple:
    """A TCP socket that has sent a 3.1.1 CONNECT (keepalive 0) and read the CONNACK:
    (socket, return code)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.sendall(connect_packet(client_id, keepalive=0, clean=clean, username=username, password=password))
    body = read_until(s, 2)
    return s, body[1]


def can_login(port: int, username: str, password: str, timeout: float = 3.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT with these credentials gets CONNACK 0 (a raw socket:
    one round trip, so it can be polled at a fine grain)."""
    try:
        s, rc = raw_connect(port, f"probe-{time.monotonic_ns()}", username, password, timeout=timeout)
    except (OSError, ConnectionError):
        return False
    try:
        if rc == 0:
            s.sendall(DISCONNECT)
        return rc == 0
    finally:
        s.close()


def qos1_publish(sock: socket.socket, topic: str, payload: bytes, packet_id: int,
                 retain: bool = False) -> None:
    """Publishes at QoS 1 on a raw 3.1.1 socket and waits for its PUBACK."""
    sock.sendall(publish_packet(topic, payload, qos=1, retain=retain, packet_id=packet_id))
    assert read_until(sock, 4) == packet_id.to_bytes(2, "big")


def read_publishes(sock: socket.socket, n: int) -> list:
    """(topic, payload) of the next n PUBLISH packets (3.1.1, QoS 0 or 1; QoS 1 acked)."""
    out = []
    while len(out) < n:
        first, body = read_packet(sock)
        if first >> 4 != 3:
            continue
        tlen = int.from_bytes(body[:2], "big")
        topic, rest = body[2:2 + tlen].decode(), body[2 + tlen:]
        if (first >> 1) & 3:
            sock.sendall(b"\x40\x02" + rest[:2])
            rest = rest[2:]
        out.append((topic, rest))
    return out


class RawConn:
    """A raw TCP connection speaking MQTT bytes, for malformed-input tests.

    .buf holds what closed_by_peer() read before the close (nothing, when the broker
    hung up without a word)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packet(self):
        """(packet type nibble, flags nibble, body bytes); raises ConnectionError on close,
        socket.timeout on silence."""
        first, body = read_packet(self.sock)
        return first >> 4, first & 0x0F, body

    def connect(self, client_id: str = "", v5: bool = False, **kw) -> int:
        """Send CONNECT, return the CONNACK return/reason code."""
        self.send(connect_packet(client_id, v5=v5, **kw))
        ptype, _, body = self.read_packet()
        assert ptype == 2, f"expected CONNACK, got packet type {ptype}"
        return body[1]

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the peer closes the connection within timeout; the bytes it sends
        before closing (e.g. a DISCONNECT with a reason code) are kept in .buf."""
        sink = bytearray()
        closed = closed_by_peer(self.sock, timeout, sink)
        self.buf += bytes(sink)
        return closed

    def rest(self, quiet: float = 1.0) -> tuple:
        """(every byte the peer sends until it closes or stays quiet for `quiet`
        seconds, whether it closed): the whole answer, for byte-for-byte comparison."""
        got, closed = self.buf, False
        self.buf = b""
        while True:
            self.sock.settimeout(quiet)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
        return got, closed

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
