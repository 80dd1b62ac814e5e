"""ACME certificates against a real ACME server: Pebble, with pebble-challtestsrv as
its DNS (every A query answers 127.0.0.1), so Pebble validates HTTP-01 challenges on
the port edgemq's challenge server listens on.

Covers: issuance over HTTP-01 and reuse of the account and certificate across
restarts; renewal of a short-lived certificate under 50 connected TLS clients with no
disconnect; an ACME server that is down (status says why, the current certificate
keeps serving, the next attempt after the server is back succeeds)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Optional

import pytest

import support
from helpers_certs import openssl_ca_and_leaf
from support import (broker_yaml, closed_by_peer, connect_packet, docs, free_port, metric, poll,
                     publish_packet, read_until, require, subscribe_packet, wait_port)

NAME = "mqtt.edgemq.test"


# --------------------------------------------------------------------------- peers

class Pebble:
    """Pebble and pebble-challtestsrv on free loopback ports. Pebble validates HTTP-01
    challenges on `http01_port` of 127.0.0.1 and issues certificates valid for
    `validity` seconds."""

    def __init__(self, root: Path, http01_port: int, validity: Optional[int] = None,
                 eab: Optional[dict] = None):
        self.pebble = require("pebble", "pebble")
        self.challtestsrv = require("pebble-challtestsrv", "pebble")
        self.root = Path(root) / "pebble"
        self.ca, crt, key = openssl_ca_and_leaf(self.root / "tls")
        self.port, self.mgmt = free_port(), free_port()
        self.dns, self.dns_mgmt = free_port(), free_port()
        cfg = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(crt), "privateKey": str(key),
            "httpPort": http01_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        if validity is not None:
            cfg["pebble"]["certificateValidityPeriod"] = validity
        if eab:
            cfg["pebble"]["externalAccountBindingRequired"] = True
            cfg["pebble"]["externalAccountMACKeys"] = eab
        self.config = self.root / "pebble-config.json"
        self.config.write_text(json.dumps(cfg, indent=1))
        self.log_path = self.root / "pebble.log"
        self.proc: Optional[subprocess.Popen] = None
        self.dns_proc: Optional[subprocess.Popen] = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start_dns(self) -> None:
        log = open(self.root / "challtestsrv.log", "ab")
        self.dns_proc = subprocess.Popen(
            [self.challtestsrv, "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_mgmt}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        support._LIVE.append(self.dns_proc)
        wait_port(self.dns_mgmt)

    def start(self) -> "Pebble":
        if self.dns_proc is None:
            self.start_dns()
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.pebble, "-config", self.config, "-dnsserver", f"127.0.0.1:{self.dns}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        support._LIVE.append(self.proc)
        wait_port(self.port, 20)
        return self

    def stop(self) -> None:
        """Stops Pebble (the ACME server); the DNS server keeps running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def stop_all(self) -> None:
        self.stop()
        if self.dns_proc is not None and self.dns_proc.poll() is None:
            self.dns_proc.terminate()
            self.dns_proc.wait(timeout=10)

    def root_pem(self) -> str:
        """The root that signs this Pebble run's certificates (it changes per run)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        import urllib.request
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=ctx,
                                    timeout=5) as r:
            return r.read().decode()

    def log_tail(self, lines: int = 40) -> str:
        return support._tail(self.log_path, lines)


@pytest.fixture
def pebble(tmp_path, request):
    made: list = []

    def factory(http01_port: int, validity: Optional[int] = None, start: bool = True,
                eab: Optional[dict] = None) -> Pebble:
        p = Pebble(tmp_path, http01_port, validity, eab)
        made.append(p)
        if start:
            p.start()
        else:
            p.start_dns()
        return p

    yield factory
    for p in made:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"--- pebble log tail ---\n{p.log_tail()}")
        p.stop_all()


# --------------------------------------------------------------------------- config

def acme_config(p: Pebble, tls_port: int, http01_port: int, renew_before: str = "",
                eab: Optional[tuple] = None, algorithm: str = "") -> str:
    ca = "\n".join("    " + line for line in p.ca.read_text().strip().splitlines())
    secret = (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: acme-ca}}\n"
              f"stringData:\n  ca.crt: |\n{ca}\n")
    eab_lines = ""
    if eab:
        secret += f"  eab-hmac: {eab[1]}\n"
        eab_lines = (f"      externalAccountBinding: {{keyId: {eab[0]}, "
                     f"keySecretRef: {{name: acme-ca, key: eab-hmac}}}}\n")
    rb = f"  renewBefore: {renew_before}\n" if renew_before else ""
    if algorithm:
        rb += f"  privateKey: {{algorithm: {algorithm}}}\n"
    cert = (f"apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: acme-tls}}\n"
            f"spec:\n  dnsNames: [{NAME}]\n{rb}"
            f"  issuer:\n    acme:\n      server: {p.directory}\n      email: ops@edgemq.test\n"
            f"      caBundleSecretRef: {{name: acme-ca, key: ca.crt}}\n{eab_lines}"
            f"      solver:\n        http01: {{port: {http01_port}, bindAddress: 127.0.0.1}}\n")
    broker = (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n"
              f"spec:\n  allowAnonymous: true\n  anonymousAcl: [{{topic: \"#\"}}]\n  listeners:\n"
              f"    - {{name: tls, port: {tls_port}, bindAddress: 127.0.0.1, "
              f"tls: {{certificateRef: acme-tls}}}}\n")
    return docs(broker, cert, secret)


def cert_status(status: dict) -> dict:
    for r in status.get("resources", []):
        if r.get("kind") == "Certificate" and r.get("name") == "acme-tls":
            return r
    return {}


def condition(status: dict) -> dict:
    return (cert_status(status).get("conditions") or [{}])[0]


def served(port: int, root_pem: str) -> int:
    """Serial of the certificate a new TLS connection is served, verified for NAME
    against the ACME server's root."""
    ctx = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=NAME) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def tls_mqtt(port: int, root_pem: str, client_id: str) -> tuple:
    """An MQTT connection over TLS, the server verified for NAME against the ACME
    root: (socket after CONNACK, serial of the certificate it was served)."""
    ctx = ssl.create_default_context(cadata=root_pem)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname=NAME)
    tls.sendall(connect_packet(client_id, keepalive=0))
    body = read_until(tls, 2)
    assert body[1] == 0, f"CONNACK {body[1]}"
    return tls, int(tls.getpeercert()["serialNumber"], 16)


def status_serial(status: dict) -> Optional[int]:
    s = (cert_status(status).get("details") or {}).get("serial")
    return int(s, 16) if s else None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- tests

def test_http01_issues_a_certificate_that_clients_verify_and_restarts_reuse_it(edgemq, pebble):
    http01, tls_port = free_port(), free_port()
    p = pebble(http01)
    e = edgemq()
    e.write("home.yaml", acme_config(p, tls_port, http01))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90,
                   "the ACME certificate is issued over HTTP-01")
    e.wait_ready(20)
    wait_port(tls_port)
    root = p.root_pem()
    serial = served(tls_port, root)
    assert serial == status_serial(e.status())

    # Key and account stay in the state directory, readable by the owner only.
    key = e.cert_path("acme-tls", file="tls.key")
    accounts = list((e.state_dir / "acme" / "accounts").glob("*/account.json"))
    assert len(accounts) == 1
    for f in [key, e.cert_path("acme-tls"), e.cert_path("acme-tls", file="ca.crt"), accounts[0]]:
        assert mode(f) == 0o600, f"{f} has mode {oct(mode(f))}"
    for d in [key.parent, accounts[0].parent]:
        assert mode(d) == 0o700, f"{d} has mode {oct(mode(d))}"
    account = accounts[0].read_text()
    # The issuer's chain is stored for clients that pin it.
    assert "BEGIN CERTIFICATE" in e.cert_path("acme-tls", file="ca.crt").read_text()
    assert int(metric(e.metrics(), 'edgemq_certificate_expiration_timestamp_seconds'
                                   '{certificate="default/acme-tls"}')) > 0

    # A restart serves the stored certificate: nothing is asked of the ACME server.
    orders_before = p.log_path.read_text().count("POST /order-plz")
    e.restart(timeout=30)
    wait_port(tls_port)
    assert served(tls_port, root) == serial
    assert accounts[0].read_text() == account
    assert p.log_path.read_text().count("POST /order-plz") == orders_before

    # Private keys never appear in status or logs.
    assert "PRIVATE KEY" not in json.dumps(e.status())
    assert "PRIVATE KEY" not in e.log_text()


def test_a_renewed_certificate_is_swapped_under_50_live_tls_clients(edgemq, pebble):
    http01, tls_port = free_port(), free_port()
    # Certificates live 120 s; renewal starts 105 s before expiry, 15 s after issuance.
    p = pebble(http01, validity=120)
    e = edgemq()
    e.write("home.yaml", acme_config(p, tls_port, http01, renew_before="105s"))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: status_serial(s), 90, "first certificate issued")
    e.wait_ready(20)
    root = p.root_pem()
    first = poll(lambda: served(tls_port, root), 10, message="TLS listener serving")

    live = [tls_mqtt(tls_port, root, f"c{i}") for i in range(50)]
    try:
        assert {serial for _, serial in live} == {first}
        second = poll(lambda: (lambda s: s if s != first else None)(served(tls_port, root)), 90,
                      1, "a renewed certificate is served to new connections")
        assert second == status_serial(e.status())
        dropped = [i for i, (sock, _) in enumerate(live) if closed_by_peer(sock)]
        assert dropped == [], f"the renewal disconnected clients {dropped}"
        assert metric(e.metrics(), "edgemq_connections") >= 50
        # The connections made before the renewal still carry messages.
        sub, pub = live[0][0], live[1][0]
        sub.settimeout(5)
        sub.sendall(subscribe_packet("renew/check"))
        read_until(sub, 9)
        pub.sendall(publish_packet("renew/check", b"after renewal"))
        assert read_until(sub, 3).endswith(b"after renewal")
    finally:
        for sock, _ in live:
            sock.close()


def test_an_acme_server_that_is_down_is_reported_while_the_current_certificate_keeps_serving(edgemq, pebble):
    http01, tls_port = free_port(), free_port()
    p = pebble(http01, validity=120, start=False)
    e = edgemq()
    e.write("home.yaml", acme_config(p, tls_port, http01, renew_before="105s"))

    # Down from the start: status says why, and nothing is served.
    e.start(wait_ready=False)
    down = e.wait_applied(lambda s: condition(s).get("status") == "False"
                          and (cert_status(s).get("details") or {}).get("failures", 0) >= 1
                          and condition(s), 60, "the failed issuance is in status")
    assert down["reason"] == "IssueFailed"
    assert "ACME" in down["message"] and p.directory.split("/dir")[0] in down["message"], down
    assert metric(e.metrics(), 'edgemq_certificate_renewal_failures'
                               '{certificate="default/acme-tls"}') >= 1

    # The server comes up: the next attempt issues the certificate.
    p.start()
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90,
                   "issued once the ACME server is back")
    root = p.root_pem()
    first = poll(lambda: served(tls_port, root), 10, message="TLS listener serving")

    # Down at renewal time: status is loud, the current certificate keeps serving.
    p.stop()
    failing = e.wait_applied(lambda s: condition(s).get("reason") == "RenewalFailing"
                             and condition(s), 60, "renewal failure in status")
    assert failing["status"] == "True"
    assert "renewal failing" in failing["message"] and "ACME" in failing["message"]
    assert served(tls_port, root) == first
    assert "renewal is failing and the certificate nears expiry" in e.log_text()

    # Back again: renewed, and new connections get the new certificate.
    p.start()
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90, "renewed")
    root = p.root_pem()
    second = poll(lambda: served(tls_port, root), 10, message="new certificate served")
    assert second != first
    assert second == status_serial(e.status())


EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def test_a_server_that_requires_external_account_binding_issues_with_the_right_key_only(edgemq, pebble):
    http01, tls_port = free_port(), free_port()
    p = pebble(http01, eab={"kid-1": EAB_KEY})
    # A wrong key: the account is refused, and status says so.
    wrong = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"
    e = edgemq()
    e.write("home.yaml", acme_config(p, tls_port, http01, eab=("kid-1", wrong)))
    e.start(wait_ready=False)
    refused = e.wait_applied(lambda s: (cert_status(s).get("details") or {}).get("failures", 0)
                             >= 1 and condition(s), 60, "the refused account is in status")
    assert refused["reason"] == "IssueFailed"
    assert "account registration" in refused["message"], refused

    # The right key: registered and issued (the edit restarts the issuer at once).
    e.write("home.yaml", acme_config(p, tls_port, http01, eab=("kid-1", EAB_KEY)))
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90, "issued with EAB")
    wait_port(tls_port)
    assert served(tls_port, p.root_pem()) == status_serial(e.status())


def test_an_rsa_key_is_requested_when_the_certificate_asks_for_one(edgemq, pebble):
    http01, tls_port = free_port(), free_port()
    p = pebble(http01)
    e = edgemq()
    e.write("home.yaml", acme_config(p, tls_port, http01, algorithm="RSA"))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90, "issued")
    wait_port(tls_port)
    ctx = ssl.create_default_context(cadata=p.root_pem())
    with socket.create_connection(("127.0.0.1", tls_port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    text = subprocess.run([require("openssl"), "x509", "-inform", "DER", "-noout", "-text"],
                          input=der, capture_output=True, check=True).stdout.decode()
    assert "rsaEncryption" in text and "2048 bit" in text, text


def test_an_acme_server_that_never_answers_holds_up_neither_the_broker_nor_reloads(edgemq, clients):
    # A server that accepts connections and never says a word.
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        port, extra = free_port(), free_port()
        cert = (f"apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: acme-tls}}\n"
                f"spec:\n  dnsNames: [{NAME}]\n  issuer:\n    acme:\n"
                f"      server: https://127.0.0.1:{hole.getsockname()[1]}/dir\n"
                f"      solver: {{http01: {{port: {free_port()}, bindAddress: 127.0.0.1}}}}\n")
        listeners = f"    - {{name: mqtt, port: {port}, bindAddress: 127.0.0.1}}\n"
        e = edgemq()
        e.write("home.yaml", docs(broker_yaml("home", port, "  allowAnonymous: true\n"
                                              "  anonymousAcl: [{topic: \"#\"}]",
                                              listeners=listeners.rstrip("\n")), cert))
        # Ready while the issuer waits on the server: the broker does not need the
        # certificate, and nothing waits for it.
        e.start()
        assert condition(e.status()).get("reason") == "Issuing"
        c = clients(port)
        c.subscribe_wait("t/1")
        c.publish_wait("t/1", b"x")
        assert c.get(5).payload == b"x"
        # An edit is applied while the issuance still hangs.
        listeners += f"    - {{name: extra, port: {extra}, bindAddress: 127.0.0.1}}\n"
        e.write("home.yaml", docs(broker_yaml("home", port, "  allowAnonymous: true\n"
                                              "  anonymousAcl: [{topic: \"#\"}]",
                                              listeners=listeners.rstrip("\n")), cert))
        wait_port(extra)
        assert condition(e.status()).get("reason") == "Issuing"
        assert c.is_connected()
        # The request gives up, and status says why.
        failed = e.wait_applied(lambda s: condition(s).get("reason") == "IssueFailed"
                                and condition(s), 60, "the silent server is reported")
        assert "no answer within" in failed["message"], failed
    finally:
        hole.close()


def test_the_solver_names_a_busy_address_once_and_a_bad_answer_as_given():
    """`edgemq acme-solver` (the HTTP-01 solver Pod's command) refuses a port in use
    with one line naming the address and the OS error, and a malformed --answer with
    what was given."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    addr = "127.0.0.1:%d" % busy.getsockname()[1]
    try:
        r = support.run([support.edgemq_bin(), "acme-solver", "--listen", addr, "--answer", "t=t.k"],
                        timeout=15)
    finally:
        busy.close()
    assert r.returncode == 1, r
    assert r.stderr == (f"error: ACME: HTTP-01 challenge server on {addr}: "
                        "Address already in use (os error 98)\n"), r.stderr
    r = support.run([support.edgemq_bin(), "acme-solver", "--answer", "a/b=c"], timeout=15)
    assert r.returncode == 2, r
    assert r.stderr.startswith(
        "error: invalid value 'a/b=c' for '--answer <ANSWERS>': `a/b=c` is not TOKEN=KEY_AUTHORIZATION\n"), r.stderr
