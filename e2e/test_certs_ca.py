"""The `ca` issuer against real peers: certificates signed by a private CA kept in a
Secret serve edgemq's TLS listener to mosquitto clients that trust only that CA, and
a device client certificate edgemq issued is accepted by a real Mosquitto that
requires client certificates from that CA."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from helpers_certs import block, openssl_ca, openssl_server_cert
import support
from support import (closed_by_peer, connect_packet, docs, free_port, poll, read_until, require,
                     run, wait_port)

SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: pw}\nstringData: {alice: secret1}\n"
ALICE = ("apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: alice}\n"
         "spec: {brokerRef: home, passwordSecretRef: {name: pw, key: alice}, acl: [{topic: \"alice/#\"}]}\n")


def ca_secret(name: str, ca: tuple) -> str:
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\n"
            f"stringData:\n  tls.crt: |\n{block(Path(ca[0]).read_text())}\n"
            f"  tls.key: |\n{block(Path(ca[1]).read_text())}\n")


def certificate(name: str, spec: str) -> str:
    return (f"apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: {name}}}\n"
            f"spec: {{{spec}, issuer: {{ca: {{secretRef: lan-ca}}}}}}\n")


def broker(port: int) -> str:
    return (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n"
            f"spec:\n  allowAnonymous: false\n  listeners:\n"
            f"    - {{name: tls, port: {port}, bindAddress: 127.0.0.1, "
            f"tls: {{certificateRef: lan-tls}}}}\n")


def served_serial(port: int, cafile: Path) -> int:
    """Serial of the certificate served to a new connection, verified for localhost
    against cafile."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def round_trip(port: int, tls_args: list, auth: list, topic: str, message: str) -> str:
    """mosquitto_sub receives what mosquitto_pub sends; returns what it printed."""
    common = ["-h", "127.0.0.1", "-p", str(port), *tls_args, *auth, "-t", topic]
    return support.mosquitto_round_trip(common, common, message, 10)


def test_a_lan_listener_signed_by_the_private_ca_serves_clients_that_trust_only_that_ca(edgemq, tmp_path):
    ca = openssl_ca(tmp_path / "pki", cn="LAN CA")
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(
        broker(port), ALICE, SECRET, ca_secret("lan-ca", ca),
        certificate("lan-tls", 'dnsNames: [localhost], ipAddresses: ["127.0.0.1"]')))
    e.start()
    wait_port(port)
    first = served_serial(port, ca[0])
    assert round_trip(port, ["--cafile", str(ca[0])], ["-u", "alice", "-P", "secret1"],
                      "alice/lan", "signed by the LAN CA") == "signed by the LAN CA"
    # The CA is stored next to the pair for clients and bridges that must trust it.
    assert e.cert_path("lan-tls", file="ca.crt").read_text() == Path(ca[0]).read_text()

    # A new CA in the Secret: the listener's certificate is signed again by it.
    ca2 = openssl_ca(tmp_path / "pki2", cn="LAN CA 2")
    e.write("home.yaml", docs(
        broker(port), ALICE, SECRET, ca_secret("lan-ca", ca2),
        certificate("lan-tls", 'dnsNames: [localhost], ipAddresses: ["127.0.0.1"]')))
    second = poll(lambda: served_serial(port, ca2[0]), 15, 0.1,
                  "the certificate is reissued by the new CA")
    assert second != first


def test_a_device_certificate_from_the_ca_issuer_logs_in_to_mosquitto_requiring_client_certificates(
        edgemq, mosquitto, tmp_path):
    ca = openssl_ca(tmp_path / "pki", cn="LAN CA")
    srv = openssl_server_cert(tmp_path / "pki", ca, "mosquitto")
    m = mosquitto([f"cafile {ca[0]}", f"certfile {srv[0]}", f"keyfile {srv[1]}",
                   "require_certificate true", "use_identity_as_username true",
                   "allow_anonymous false"])
    # No listener uses the device certificate: edgemq issues it all the same.
    e = edgemq()
    e.write("pki.yaml", docs(ca_secret("lan-ca", ca),
                             certificate("sensor-7", "commonName: sensor-7")))
    e.start()
    crt, key = e.cert_path("sensor-7"), e.cert_path("sensor-7", file="tls.key")
    e.wait_applied(lambda s: any(r["kind"] == "Certificate" and r["name"] == "sensor-7"
                                 and r["conditions"][0]["status"] == "True"
                                 for r in s["resources"]), 15, "device certificate issued")
    assert crt.exists() and key.exists()
    # Mosquitto verifies the client certificate against the CA and takes its CN as
    # the user name; a certificate without clientAuth would be refused here.
    tls = ["--cafile", str(ca[0]), "--cert", str(crt), "--key", str(key)]
    assert round_trip(m.port, tls, [], "devices/sensor-7", "hello") == "hello"
    assert "as sensor-7" in m.log_tail(200) or "u'sensor-7'" in m.log_tail(200), m.log_tail()

    # Without the certificate Mosquitto refuses the connection.
    r = run([require("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(m.port), "--cafile",
             str(ca[0]), "-t", "devices/x", "-m", "no cert"], timeout=10)
    assert r.returncode != 0
    poll(lambda: "peer did not return a certificate" in m.log_tail(20), 5,
         message="Mosquitto logs the missing client certificate")


def test_a_short_lived_certificate_is_renewed_at_its_renewal_time_without_an_edit(edgemq, tmp_path):
    ca = openssl_ca(tmp_path / "pki", cn="LAN CA")
    port = free_port()
    e = edgemq()
    # 20 s of validity: renewed a third of that before expiry, with nobody editing.
    e.write("home.yaml", docs(
        broker(port), ALICE, SECRET, ca_secret("lan-ca", ca),
        certificate("lan-tls", 'dnsNames: [localhost], ipAddresses: ["127.0.0.1"], duration: 20s')))
    e.start()
    wait_port(port)
    first = served_serial(port, ca[0])
    ctx = ssl.create_default_context(cafile=str(ca[0]))
    live = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                           server_hostname="localhost")
    try:
        live.sendall(connect_packet("before-renewal", keepalive=0, username="alice",
                                    password="secret1"))
        assert read_until(live, 2)[1] == 0
        second = poll(lambda: (lambda s: s if s != first else None)(served_serial(port, ca[0])),
                      60, 0.5, "the certificate is renewed and served")
        assert not closed_by_peer(live), "the renewal disconnected a client"
        status_serial = next(r["details"]["serial"] for r in e.status()["resources"]
                             if r["kind"] == "Certificate")
        assert int(status_serial, 16) == second
    finally:
        live.close()
