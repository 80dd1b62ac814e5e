"""TLS and WebSocket listeners against real clients: mosquitto_pub/sub over TLS, a
Python TLS socket, and MQTT.js over ws:// and wss://."""

from __future__ import annotations

import socket
import time

import pytest

from helpers_b import fingerprint_of_file, json_of, make_cert, served_fingerprint, tls_secret_yaml
import support
from support import (closed_by_peer, docs, E2E_DIR, free_port, poll, require, require_node_mqtt,
                     run, wait_port)

SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: pw}\nstringData: {alice: secret1}\n"
ALICE = ("apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: alice}\n"
         "spec: {brokerRef: home, passwordSecretRef: {name: pw, key: alice}, acl: [{topic: \"alice/#\"}]}\n")
CERT = ("apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: home-tls}\n"
        "spec: {dnsNames: [localhost], ipAddresses: [\"127.0.0.1\"], issuer: {selfSigned: {}}}\n")


def broker(listeners: list, limits: str = "") -> str:
    ls = "\n".join(f"    - {l}" for l in listeners)
    text = (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n"
            f"spec:\n  listeners:\n{ls}\n  allowAnonymous: false\n")
    if limits:
        text += f"  limits: {limits}\n"
    return text


def tls_listener(port: int, ref: str = "certificateRef: home-tls", name: str = "tls",
                 protocol: str = "") -> str:
    proto = f", protocol: {protocol}" if protocol else ""
    return f"{{name: {name}, port: {port}, bindAddress: 127.0.0.1{proto}, tls: {{{ref}}}}}"


def mosquitto_round_trip(port: int, cafile, topic: str = "alice/tls", message: str = "over tls",
                         timeout: float = 10.0) -> str:
    """mosquitto_sub (verifying the server against cafile) receives what mosquitto_pub
    sends over the same TLS listener. Returns what the subscriber printed."""
    common = ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(cafile), "-u", "alice",
              "-P", "secret1", "-t", topic]
    return support.mosquitto_round_trip(common, common, message, timeout,
                                        "mosquitto_sub received the message over TLS")


def test_a_self_signed_tls_listener_serves_mosquitto_clients_that_verify_it(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(broker([tls_listener(port)]), ALICE, SECRET, CERT))
    e.start()
    cafile = e.cert_path("home-tls")
    poll(cafile.exists, 10, message=f"self-signed certificate written to {cafile}")
    wait_port(port)
    assert served_fingerprint(port) == fingerprint_of_file(cafile)
    assert mosquitto_round_trip(port, cafile) == "over tls"


def test_a_client_verifying_against_another_ca_is_refused(edgemq, tmp_path):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(broker([tls_listener(port)]), ALICE, SECRET, CERT))
    e.start()
    wait_port(port)
    wrong_ca, _ = make_cert(tmp_path / "other", "other-ca", 4242, cn="some other CA")
    r = run([require("mosquitto_pub"), "-d", "-h", "127.0.0.1", "-p", port, "--cafile", wrong_ca,
             "-u", "alice", "-P", "secret1", "-t", "alice/x", "-m", "no"], timeout=15)
    # Refused for the right reason: the client does not trust the served certificate
    # and says so (-d prints OpenSSL's error), and the broker logs the client's alert.
    assert r.returncode != 0, "a client trusting another CA must not get through"
    assert "certificate verify failed" in r.stdout + r.stderr, f"{r.stdout}{r.stderr}"
    poll(lambda: "TLS handshake failed: received fatal alert: UnknownCA" in e.log_text(), 5,
         message="the broker logs the client's UnknownCA alert")
    # ... and the broker still serves clients that trust the right one.
    assert mosquitto_round_trip(port, e.cert_path("home-tls")) == "over tls"


def test_a_tls_client_that_sends_nothing_neither_blocks_others_nor_stays_forever(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(broker([tls_listener(port)], "{handshakeTimeoutSeconds: 3}"),
                              ALICE, SECRET, CERT))
    e.start()
    wait_port(port)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        started = time.monotonic()
        r = run([require("mosquitto_pub"), "-h", "127.0.0.1", "-p", port,
                 "--cafile", e.cert_path("home-tls"), "-u", "alice", "-P", "secret1",
                 "-t", "alice/x", "-m", "while others are silent", "-q", "1"], timeout=15)
        took = time.monotonic() - started
        assert r.returncode == 0, f"mosquitto_pub failed beside silent TLS sockets: {r.stderr}"
        # The handshake timeout is 3 s: getting through well before it means the
        # silent sockets did not hold the accept loop.
        assert took < 2.5, f"a real client waited {took:.2f}s behind silent TLS sockets"
        assert not any(closed_by_peer(s, 0.01) for s in silent), \
            "silent sockets were closed before the handshake timeout"
        # Past the handshake timeout the broker hangs up on them.
        for s in silent:
            poll(lambda: closed_by_peer(s), 10, message="silent TLS socket closed after handshakeTimeoutSeconds")
    finally:
        for s in silent:
            s.close()


def test_a_secret_ref_tls_listener_serves_a_certificate_made_with_openssl(edgemq, tmp_path):
    port = free_port()
    crt, key = make_cert(tmp_path / "pki", "server", 1001)
    e = edgemq()
    e.write("home.yaml", docs(broker([tls_listener(port, "secretRef: my-tls")]), ALICE, SECRET,
                              tls_secret_yaml("my-tls", crt, key)))
    e.start()
    wait_port(port)
    assert served_fingerprint(port) == fingerprint_of_file(crt)
    assert mosquitto_round_trip(port, crt, message="secret ref") == "secret ref"


def ws_client(url: str, topic: str = "alice/ws", message: str = "hello over websockets",
              ca=None, password: str = "secret1", version: int = 4) -> dict:
    node = require_node_mqtt()
    args = [node, E2E_DIR / "ws_client.js", url, "--username", "alice", "--password", password,
            "--topic", topic, "--message", message, "--protocol-version", str(version)]
    if ca is not None:
        args += ["--ca", ca]
    return json_of(run(args, timeout=30))


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_a_websocket_listener_serves_an_mqttjs_client(edgemq, version):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(broker([f"{{name: ws, port: {port}, bindAddress: 127.0.0.1, "
                                      "protocol: websockets}"]), ALICE, SECRET))
    e.start()
    wait_port(port)
    got = ws_client(f"ws://127.0.0.1:{port}/mqtt", version=version)
    assert got.get("connected"), got
    assert got["received"] == [{"topic": "alice/ws", "payload": "hello over websockets"}], got
    bad = ws_client(f"ws://127.0.0.1:{port}/mqtt", password="wrong", version=version)
    # Refused by the broker's CONNACK: 5 (3.1.1) or 0x87 (5), both "not authorized".
    assert not bad.get("connected"), f"a wrong password got in over WebSocket: {bad}"
    assert bad.get("code") == {4: 5, 5: 0x87}[version], bad
    assert bad.get("error") == "Connection refused: Not authorized", bad


def test_a_secure_websocket_listener_serves_an_mqttjs_client_that_verifies_it(edgemq):
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(broker([tls_listener(port, name="wss", protocol="websockets")]),
                              ALICE, SECRET, CERT))
    e.start()
    cafile = e.cert_path("home-tls")
    poll(cafile.exists, 10, message="self-signed certificate written")
    wait_port(port)
    got = ws_client(f"wss://127.0.0.1:{port}/mqtt", message="over wss", ca=cafile)
    assert got.get("connected"), got
    assert got["received"] == [{"topic": "alice/ws", "payload": "over wss"}], got
