"""Devices that log in with a client certificate (a listener's `tls.clientAuth`), with
real clients: mosquitto_pub/sub with --cert/--key, Paho with a device certificate, a
default Mosquitto bridge with bridge_certfile/bridge_keyfile. Refusals are asserted by
their reason (the metric's label and the log line); the CA and CRL are replaced live
under 50 connected devices."""

from __future__ import annotations


import pytest

import support
from helpers_b import tls_secret_yaml
from helpers_devices import Ca, secret_yaml
from support import docs, free_port, poll, require, run, wait_port

BROKER = "home"


def broker_yaml(port: int, client_auth: str, extra: str = "") -> str:
    return (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: {BROKER}}}\n"
            f"spec:\n  listeners:\n"
            f"    - name: devices\n      port: {port}\n      bindAddress: 127.0.0.1\n"
            f"      tls:\n        secretRef: broker-tls\n        clientAuth: {client_auth}\n"
            f"  aclPatterns: [{{topic: \"devices/%u/#\", access: readwrite}}]\n{extra}")


def cert_user(identity: str, topic: str) -> str:
    return (f"apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: {identity}}}\n"
            f"spec: {{brokerRef: {BROKER}, certificateIdentity: {identity}, "
            f"acl: [{{topic: \"{topic}\", access: readwrite}}]}}\n")


CA_REF = "{caSecretRef: {name: devices-ca, key: ca.crt}}"
CA_CRL_REF = "{caSecretRef: {name: devices-ca, key: ca.crt}, crlSecretRef: {name: devices-crl, key: ca.crl}}"


@pytest.fixture
def pki(tmp_path):
    ca = Ca(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    return ca, server


def start(edgemq, pki, client_auth: str = CA_REF, extra: str = "", users=(), crl: bool = False):
    ca, server = pki
    port = free_port()
    e = edgemq()
    parts = [broker_yaml(port, client_auth, extra), tls_secret_yaml("broker-tls", server[0], server[1]),
             secret_yaml("devices-ca", {"ca.crt": ca.pem})]
    e.write("broker.yaml", docs(*parts, *users))
    if crl:
        e.write("crl.yaml", secret_yaml("devices-crl", {"ca.crl": ca.crl_pem()}))
    e.start()
    wait_port(port)
    return e, port


def mosq_args(port: int, ca: Ca, cert) -> list:
    return ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(ca.path),
            "--cert", str(cert[0]), "--key", str(cert[1])]


def mosquitto_round_trip(port, ca, sub_cert, pub_cert, sub_topic, pub_topic, message="hi",
                         timeout=8.0):
    """What mosquitto_sub (with sub_cert) prints of what mosquitto_pub (with pub_cert)
    sends: the message, or '' when nothing arrives within timeout."""
    try:
        return support.mosquitto_round_trip(
            [*mosq_args(port, ca, sub_cert), "-t", sub_topic, "-i", support.unique_id("msub")],
            [*mosq_args(port, ca, pub_cert), "-t", pub_topic, "-i", support.unique_id("mpub")],
            message, timeout, "delivered")
    except AssertionError as e:
        if not str(e).startswith("delivered within"):
            raise  # mosquitto_sub printed the message but then ended with an error
        return ""  # nothing arrived before the deadline


def tls(ca: Ca, cert=None) -> dict:
    return {"ca_certs": str(ca.path), "certfile": str(cert[0]) if cert else None,
            "keyfile": str(cert[1]) if cert else None}


def refusals(e, reason: str) -> float:
    return e.metrics().get(
        f'edgemq_client_certificate_refusals_total{{broker="default/{BROKER}",reason="{reason}"}}', 0.0)


def test_mosquitto_clients_log_in_as_the_certificates_cn_with_that_users_acl(edgemq, pki):
    ca, _ = pki
    e, port = start(edgemq, pki, users=[cert_user("sensor-1", "sensors/sensor-1/#")])
    dev = ca.issue("sensor-1")
    assert mosquitto_round_trip(port, ca, dev, dev, "sensors/sensor-1/#", "sensors/sensor-1/t",
                                "reading") == "reading"
    # Its ACL: a topic outside its own rules and the patterns is not delivered.
    assert mosquitto_round_trip(port, ca, dev, dev, "other/#", "other/t", timeout=3) == ""
    assert "sensor-1" in e.log_text()


def test_paho_with_an_unknown_identity_gets_the_acl_patterns_under_its_cn(edgemq, pki, clients):
    ca, _ = pki
    e, port = start(edgemq, pki, users=[cert_user("sensor-1", "sensors/sensor-1/#")])
    dev = ca.issue("paho-7")
    c = clients(port, tls=tls(ca, dev), client_id="paho-7-client")
    assert c.subscribe_wait("devices/paho-7/#", 1) == [1]
    c.publish_wait("devices/paho-7/x", b"mine", qos=1)
    assert c.get(5).payload == b"mine"
    # %u is the CN: another device's tree and sensor-1's rules are not its.
    c.subscribe_wait("sensors/#", 1)
    c.publish_wait("sensors/sensor-1/t", b"not mine", qos=1)
    c.expect_none(1.0)


def test_the_username_and_password_in_connect_do_not_override_the_certificate(edgemq, pki, clients):
    ca, _ = pki
    e, port = start(edgemq, pki, users=[cert_user("sensor-1", "sensors/sensor-1/#")])
    dev = ca.issue("paho-8")
    c = clients(port, tls=tls(ca, dev), username="sensor-1", password="x")
    # Logged in as paho-8 (patterns), not as sensor-1.
    c.subscribe_wait("sensors/sensor-1/#", 1)
    c.publish_wait("sensors/sensor-1/t", b"x", qos=1)
    c.expect_none(1.0)
    c.subscribe_wait("devices/paho-8/#", 1)
    c.publish_wait("devices/paho-8/t", b"y", qos=1)
    assert c.get(5).payload == b"y"


@pytest.mark.parametrize("case,reason", [
    ("other-ca", "unknown_ca"),
    ("expired", "expired"),
    ("revoked", "revoked"),
    ("none", "no_certificate"),
])
def test_a_bad_certificate_is_refused_in_the_handshake_saying_why(edgemq, pki, tmp_path, case, reason):
    ca, _ = pki
    cert = None
    if case == "other-ca":
        cert = Ca(tmp_path / "other", cn="other CA").issue("sensor-1")
    elif case == "expired":
        cert = ca.issue("sensor-1", expired=True, file="expired")
    elif case == "revoked":
        cert = ca.issue("sensor-1", file="revoked")
        ca.revoke(cert[2])
    e, port = start(edgemq, pki, CA_CRL_REF, users=[cert_user("sensor-1", "sensors/#")], crl=True)
    mpub = require("mosquitto_pub")
    args = ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(ca.path), "-t", "sensors/x",
            "-m", "m", "-q", "1"]
    if cert:
        args += ["--cert", str(cert[0]), "--key", str(cert[1])]
    r = run([mpub, *args])
    assert r.returncode != 0, "a bad certificate must not publish"
    poll(lambda: refusals(e, reason) >= 1, 10, message=f"refusal counted as {reason}")
    assert f"reason={reason}" in e.log_text() or f'reason="{reason}"' in e.log_text()
    # Nothing of the key is logged.
    if cert:
        key_body = cert[1].read_text().splitlines()[1]
        assert key_body not in e.log_text()


def test_optional_mode_also_takes_passwords_and_required_mode_does_not(edgemq, pki, clients):
    ca, _ = pki
    alice = support.user_yaml("alice", BROKER, password_hash=support.ALICE_HASH,
                              acl=[("alice/#", "readwrite")])
    e, port = start(edgemq, pki, "{mode: optional, caSecretRef: {name: devices-ca, key: ca.crt}}",
                    users=[alice])
    c = clients(port, tls=tls(ca), username="alice", password="secret1")
    assert c.subscribe_wait("alice/#", 1) == [1]
    e.write("broker.yaml", e.config_dir.joinpath("broker.yaml").read_text().replace(
        "{mode: optional, ", "{mode: required, "))
    poll(lambda: support.try_connect(port, tls=tls(ca), username="alice", password="secret1")
         == (False, None), 15, message="required mode refuses a client without a certificate")
    poll(lambda: refusals(e, "no_certificate") >= 1, 10, message="counted as no_certificate")


def test_unknown_identities_can_be_refused_and_the_client_id_bound(edgemq, pki):
    ca, _ = pki
    e, port = start(edgemq, pki,
                    "{caSecretRef: {name: devices-ca, key: ca.crt}, unknownIdentity: refuse, "
                    "identityAsClientId: true}",
                    users=[cert_user("sensor-1", "sensors/sensor-1/#")])
    stranger = ca.issue("stranger")
    known = ca.issue("sensor-1")
    refused = support.connect(port, tls=tls(ca, stranger), client_id="stranger", expect_fail=True)
    assert support.rc_value(refused.connect_rc) in (5, 0x87)  # Paho reports 5 as 0x87
    poll(lambda: refusals(e, "unknown_identity") >= 1, 10, message="counted as unknown_identity")
    wrong_id = support.connect(port, tls=tls(ca, known), client_id="not-sensor-1", expect_fail=True)
    assert support.rc_value(wrong_id.connect_rc) in (2, 0x85)  # Paho reports 2 as 0x85
    poll(lambda: refusals(e, "client_id") >= 1, 10, message="counted as client_id")
    ok = support.connect(port, tls=tls(ca, known), client_id="sensor-1")
    ok.disconnect_wait()


def test_crl_and_ca_replaced_live_under_50_devices_close_only_the_revoked_one(edgemq, pki, tmp_path):
    ca, _ = pki
    e, port = start(edgemq, pki, CA_CRL_REF, crl=True)
    devices = [ca.issue(f"dev-{i:02d}") for i in range(50)]
    conns = []
    try:
        for i, d in enumerate(devices):
            conns.append(support.connect(port, tls=tls(ca, d), client_id=f"dev-{i:02d}"))
        # 1. A new CRL revoking dev-00: only dev-00 is closed.
        ca.revoke(devices[0][2])
        e.write("crl.yaml", secret_yaml("devices-crl", {"ca.crl": ca.crl_pem()}))
        assert conns[0].disconnected.wait(15), "the revoked device must be disconnected"
        poll(lambda: refusals(e, "revoked") >= 1, 10, message="closure counted as revoked")
        # 2. The CA bundle replaced by old + new CA (a rotation), the CRL by both CAs'
        #    lists: nobody else closes, and devices of the new CA get in.
        new_ca = Ca(tmp_path / "new", cn="devices CA 2")
        e.write("crl.yaml", secret_yaml("devices-crl", {"ca.crl": ca.crl_pem() + new_ca.crl_pem()}))
        text = e.config_dir.joinpath("broker.yaml").read_text()
        e.write("broker.yaml", text.replace(
            secret_yaml("devices-ca", {"ca.crt": ca.pem}),
            secret_yaml("devices-ca", {"ca.crt": ca.pem + new_ca.pem})))
        newdev = new_ca.issue("dev-new")
        poll(lambda: support.try_connect(port, tls=tls(ca, newdev), client_id="dev-new")[0],
             15, message="a device of the new CA connects after the CA bundle is replaced")
        assert "client CA or CRL replaced" in e.log_text()
        dropped = [i for i, c in enumerate(conns[1:], 1) if c.disconnected.is_set()]
        assert dropped == [], f"valid devices disconnected: {dropped}"
        for c in conns[1:]:
            assert c.is_connected()
        # Each still publishes and receives.
        probe = conns[1]
        probe.subscribe_wait("devices/dev-01/#", 1)
        probe.publish_wait("devices/dev-01/x", b"still here", qos=1)
        assert probe.get(5).payload == b"still here"
    finally:
        for c in conns:
            try:
                c.disconnect_wait(timeout=2)
            except Exception:  # noqa: BLE001
                pass


def test_a_default_mosquitto_bridge_logs_in_with_its_certificate(edgemq, pki, mosquitto, clients):
    ca, _ = pki
    e, port = start(edgemq, pki, users=[cert_user("bridge-1", "#")])
    bridge_cert = ca.issue("bridge-1")
    m = mosquitto(["allow_anonymous true", "connection to-edgemq",
                   f"address 127.0.0.1:{port}", "topic # both 1", "cleansession true",
                   f"bridge_cafile {ca.path}", f"bridge_certfile {bridge_cert[0]}",
                   f"bridge_keyfile {bridge_cert[1]}"])
    dev = ca.issue("watcher")
    sub = clients(port, tls=tls(ca, dev), client_id="watcher")
    sub.subscribe_wait("devices/watcher/#", 1)

    def bridged():
        support.pub(m.port, "devices/watcher/from-mosquitto", b"crossed", qos=1)
        return sub.get_or_none(0.5)

    msg = poll(bridged, 20, 0.2, "a message crossed the certificate bridge")
    assert msg.payload == b"crossed"
    assert "bridge-1" in e.log_text()


def test_a_secure_websocket_listener_takes_client_certificates_too(edgemq, pki, clients):
    ca, _ = pki
    e, port = start(edgemq, pki, users=[cert_user("sensor-1", "sensors/sensor-1/#")])
    text = e.config_dir.joinpath("broker.yaml").read_text()
    e.write("broker.yaml", text.replace("      bindAddress: 127.0.0.1\n",
                                        "      bindAddress: 127.0.0.1\n      protocol: websockets\n", 1))
    dev = ca.issue("sensor-1")
    c = poll(lambda: support.try_connect(port, tls=tls(ca, dev), transport="websockets")[0]
             and clients(port, tls=tls(ca, dev), transport="websockets"), 15,
             message="a wss client with a device certificate connects")
    assert c.subscribe_wait("sensors/sensor-1/#", 1) == [1]
    c.publish_wait("sensors/sensor-1/ws", b"over wss", qos=1)
    assert c.get(5).payload == b"over wss"
    other = Ca(e.root / "other", cn="other CA").issue("sensor-1")
    assert support.try_connect(port, tls=tls(ca, other), transport="websockets") == (False, None)
    poll(lambda: refusals(e, "unknown_ca") >= 1, 10, message="counted as unknown_ca")
