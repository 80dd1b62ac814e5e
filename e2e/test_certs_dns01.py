"""ACME certificates over DNS-01 against real peers: Pebble validating through BIND 9
(RFC 2136 updates signed with TSIG), and through pebble-challtestsrv set by an exec
hook. The issued certificate is served on a TLS listener and verified against
Pebble's root; the challenge records are gone afterwards; a refused update is
reported in status while the current certificate keeps serving."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pytest

from helpers_dns import Bind, dig_txt
from support import docs, free_port, poll, require, wait_port
from test_certs_acme import NAME, Pebble, cert_status, condition, served, status_serial

ZONE = NAME.split(".", 1)[1]
RECORD = f"_acme-challenge.{NAME}"
HOOK = Path(__file__).resolve().parent.parent / "controller" / "tests" / "fixtures" / "dns01" / \
    "challtestsrv-hook.py"


class PebbleOn(Pebble):
    """Pebble asking an already running DNS server (`dns_port`) for challenges."""

    def __init__(self, root: Path, dns_port: int, validity: Optional[int] = None):
        super().__init__(root, free_port(), validity)
        self.dns = dns_port

    def start_dns(self) -> None:
        pass


@pytest.fixture
def peers(tmp_path, request):
    made: list = []
    yield made
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in reversed(made):
        if failed:
            sys.stderr.write(f"\n--- {type(p).__name__} log tail ---\n{p.log_tail()}\n")
        if isinstance(p, Pebble):
            p.stop_all()
        else:
            p.stop()


def config(p: Pebble, tls_port: int, solver: str, secret: str = "", renew_before: str = "") -> str:
    ca = "\n".join("    " + line for line in p.ca.read_text().strip().splitlines())
    secrets = (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: acme}}\n"
               f"stringData:\n  ca.crt: |\n{ca}\n{secret}")
    rb = f"  renewBefore: {renew_before}\n" if renew_before else ""
    cert = (f"apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: acme-tls}}\n"
            f"spec:\n  dnsNames: [{NAME}]\n{rb}"
            f"  issuer:\n    acme:\n      server: {p.directory}\n"
            f"      caBundleSecretRef: {{name: acme, key: ca.crt}}\n"
            f"      solver:\n        dns01:\n{solver}")
    broker = (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n"
              f"spec:\n  allowAnonymous: true\n  anonymousAcl: [{{topic: \"#\"}}]\n  listeners:\n"
              f"    - {{name: tls, port: {tls_port}, bindAddress: 127.0.0.1, "
              f"tls: {{certificateRef: acme-tls}}}}\n")
    return docs(broker, cert, secrets)


def rfc2136(bind: Bind) -> str:
    return (f"          rfc2136:\n"
            f"            nameserver: {bind.address}\n"
            f"            tsigKeyName: {bind.key_name}\n"
            f"            tsigSecretRef: {{name: acme, key: tsig}}\n"
            f"          propagation: {{timeoutSeconds: 30}}\n")


def test_dns01_over_rfc2136_issues_a_certificate_clients_verify_and_cleans_up(edgemq, peers, tmp_path):
    bind = Bind(tmp_path, ZONE).start()
    peers.append(bind)
    p = PebbleOn(tmp_path, bind.port).start()
    peers.append(p)
    tls_port = free_port()
    e = edgemq()
    e.write("home.yaml", config(p, tls_port, rfc2136(bind), f"  tsig: {bind.secret}\n"))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90,
                   "the certificate is issued over DNS-01 through BIND")
    e.wait_ready(20)
    wait_port(tls_port)
    serial = served(tls_port, p.root_pem())
    assert serial == status_serial(e.status())
    # The record was set with an update signed by the key...
    assert f"/key {bind.key_name}: updating zone '{ZONE}/IN': adding an RR at '{RECORD}' TXT" in bind.log_path.read_text()
    # ...and it is removed once the order is done.
    deleted = f"updating zone '{ZONE}/IN': deleting an RR at {RECORD} TXT"
    poll(lambda: deleted in bind.log_path.read_text(), 30,
         message="the challenge record is deleted")
    assert bind.txt(RECORD) == []


def test_dns01_through_an_exec_hook_that_drives_challtestsrv(edgemq, peers, tmp_path):
    python = require("python3")
    p = Pebble(tmp_path, free_port()).start()   # its DNS is pebble-challtestsrv
    peers.append(p)
    tls_port = free_port()
    solver = (f"          exec:\n"
              f"            command: [{python}, {HOOK}, \"http://127.0.0.1:{p.dns_mgmt}\"]\n"
              f"            timeoutSeconds: 30\n"
              f"          propagation: {{nameservers: [\"127.0.0.1:{p.dns}\"], timeoutSeconds: 30}}\n")
    e = edgemq()
    e.write("home.yaml", config(p, tls_port, solver))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90,
                   "the certificate is issued over DNS-01 through the exec hook")
    e.wait_ready(20)
    wait_port(tls_port)
    assert served(tls_port, p.root_pem()) == status_serial(e.status())
    poll(lambda: dig_txt(p.dns, RECORD) == [], 30, message="the hook cleared the record")


def test_a_refused_dns_update_is_in_status_and_the_current_certificate_keeps_serving(edgemq, peers, tmp_path):
    bind = Bind(tmp_path, ZONE).start()
    peers.append(bind)
    # Certificates live 120 s and renewal starts 15 s after issuance.
    p = PebbleOn(tmp_path, bind.port, validity=120).start()
    peers.append(p)
    tls_port = free_port()
    e = edgemq()
    e.write("home.yaml", config(p, tls_port, rfc2136(bind), f"  tsig: {bind.secret}\n",
                                renew_before="105s"))
    e.start(wait_ready=False)
    e.wait_applied(lambda s: condition(s).get("reason") == "Issued", 90, "first certificate")
    root = p.root_pem()
    first = poll(lambda: served(tls_port, root), 10, message="TLS listener serving")

    # The TSIG secret is replaced by one the server does not know: renewal is refused.
    wrong = "c2VjcmV0LXRoZS1zZXJ2ZXItZG9lcy1ub3Qta25vdw=="
    e.write("home.yaml", config(p, tls_port, rfc2136(bind), f"  tsig: {wrong}\n",
                                renew_before="105s"))
    failing = e.wait_applied(lambda s: condition(s).get("reason") == "RenewalFailing"
                             and condition(s), 90, "the refused update is in status")
    msg = failing["message"]
    assert f"rfc2136 update of {RECORD} at {bind.address} refused: NOTAUTH (TSIG error BADSIG" \
        in msg, msg
    assert (cert_status(e.status()).get("details") or {}).get("failures", 0) >= 1
    # Nothing was added to the zone, and the current certificate keeps serving.
    assert bind.txt(RECORD) == []
    assert served(tls_port, root) == first
    assert e.running()
