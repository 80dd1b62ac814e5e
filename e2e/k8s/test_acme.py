"""ACME on a real cluster: the controller issues Certificates from Pebble into
`kubernetes.io/tls` Secrets, and the broker pod serves them.

- DNS-01 through BIND 9 (RFC 2136 updates signed with TSIG), run by the controller:
  the Secret appears, the broker pod serves it, status says Issued; the account key is
  kept in a Secret. With the DNS server refusing updates (a TSIG secret it does not
  know), status says why and the current pair keeps serving.
- HTTP-01 through a short-lived solver Pod and Service: Pebble's resolver
  (pebble-challtestsrv) answers the name with the solver Service's cluster address,
  the way a cluster's DNS or load balancer would point the name at it. The solver is
  gone when the order ends.

Pebble, BIND and the controller run on this machine; the broker pod is reached through
its NodePort. Time from Certificate creation to a pod serving the certificate is
written to target/k8s-measurements/acme_creation_to_serving_*.json.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

import edgemq_k8s as k
from helpers_dns import Bind
from test_certs_acme import NAME, Pebble, served
from test_certs_dns01 import PebbleOn

ZONE = NAME.split(".", 1)[1]
CERTS = "certificates.edgemq.io"


@pytest.fixture
def peers(request):
    made: list = []
    yield made
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in reversed(made):
        if failed:
            print(f"\n--- {type(p).__name__} log tail ---\n{p.log_tail()}")
        p.stop_all() if isinstance(p, Pebble) else p.stop()


def certificate(p: Pebble, solver: dict, **spec) -> dict:
    return {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "acme-tls"},
            "spec": {"dnsNames": [NAME], **spec,
                     "issuer": {"acme": {"server": p.directory,
                                         "caBundleSecretRef": {"name": "acme", "key": "ca.crt"},
                                         "solver": solver}}}}


def tls_broker() -> dict:
    return k.broker("home", [{"name": "tls", "port": 8883, "tls": {"certificateRef": "acme-tls"}}],
                    allowAnonymous=True, anonymousAcl=[{"topic": "#"}])


def serving(cluster, namespace: str, root: str, created: float, name: str) -> int:
    """Waits for the broker pod to serve a certificate that verifies for NAME against
    Pebble's root; records the time since `created`; returns its serial."""
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "tls")
    serial = cluster.wait_for(lambda: served(port, root), 60, "the broker pod serving the certificate",
                              interval=0.1)
    k.record(f"acme_creation_to_serving_{name}", {"seconds": round(time.monotonic() - created, 2)})
    return serial


def test_dns01_through_bind_issues_a_secret_the_pod_serves_and_a_refused_update_keeps_it(
        cluster, controller, namespace, peers, tmp_path):
    bind = Bind(tmp_path, ZONE).start()
    peers.append(bind)
    # Certificates live 120 s; renewal is due 15 s after issuance.
    p = PebbleOn(tmp_path, bind.port, validity=120).start()
    peers.append(p)
    solver = {"dns01": {"rfc2136": {"nameserver": bind.address, "tsigKeyName": bind.key_name,
                                    "tsigSecretRef": {"name": "acme", "key": "tsig"}},
                        "propagation": {"timeoutSeconds": 30}}}
    created = time.monotonic()
    k.apply(cluster, namespace,
            k.secret("acme", **{"ca.crt": p.ca.read_text(), "tsig": bind.secret}),
            certificate(p, solver, renewBefore="105s"), tls_broker())
    cert = k.wait_ready(cluster, CERTS, "acme-tls", namespace, reason="Issued", timeout=120)
    assert "stored in Secret acme-tls" in k.ready(cert)["message"]
    secret = k.get(cluster, "secret", "acme-tls", namespace)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "Certificate"
    assert set(secret["data"]) >= {"tls.crt", "tls.key", "ca.crt"}
    root = p.root_pem()
    first = serving(cluster, namespace, root, created, "dns01")
    assert int(cert["status"]["serial"], 16) == first
    # The account key is a Secret of its own, reused by later orders.
    accounts = json.loads(cluster.kubectl("get", "secrets", "-n", namespace, "-l",
                                          "edgemq.io/acme-account", "-o", "json").stdout)["items"]
    assert len(accounts) == 1 and "account.json" in accounts[0]["data"]
    # The challenge record is gone.
    assert bind.txt(f"_acme-challenge.{NAME}") == []

    # The TSIG secret is replaced by one the DNS server does not know: renewal is refused.
    k.apply(cluster, namespace, k.secret("acme", **{
        "ca.crt": p.ca.read_text(), "tsig": "c2VjcmV0LXRoZS1zZXJ2ZXItZG9lcy1ub3Qta25vdw=="}))
    failing = k.wait_ready(cluster, CERTS, "acme-tls", namespace, reason="RenewalFailing", timeout=120)
    msg = k.ready(failing)["message"]
    assert f"rfc2136 update of _acme-challenge.{NAME} at {bind.address} refused: NOTAUTH" in msg, msg
    assert failing["status"]["failures"] >= 1 and failing["status"]["lastFailure"]
    # The next attempt fails too, and the pair it could not replace keeps serving.
    kept = k.get(cluster, "secret", "acme-tls", namespace)["data"]["tls.crt"]
    again = cluster.wait_for(
        lambda: (c := k.get(cluster, CERTS, "acme-tls", namespace))["status"].get("failures", 0)
        > failing["status"]["failures"] and c, 90, "a second refused attempt")
    assert k.ready(again)["reason"] == "RenewalFailing"
    assert k.get(cluster, "secret", "acme-tls", namespace)["data"]["tls.crt"] == kept
    port = k.node_port(cluster, "home", namespace, "tls")
    assert served(port, root) == int(again["status"]["serial"], 16), \
        "the current certificate keeps serving"
    assert bind.txt(f"_acme-challenge.{NAME}") == []
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=acme-tls", "-o", "json").stdout
    assert "RenewalFailing" in events


class SolverWatch:
    """Points NAME at each HTTP-01 solver Service the controller creates (in
    pebble-challtestsrv, Pebble's resolver) and remembers which ones it saw."""

    def __init__(self, cluster, namespace: str, pebble: Pebble):
        self.cluster, self.namespace, self.pebble = cluster, namespace, pebble
        self.seen: dict = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag.is_set():
            r = self.cluster.kubectl("get", "services", "-n", self.namespace, "-l",
                                     "app.kubernetes.io/name=edgemq-acme-solver", "-o", "json",
                                     check=False)
            for s in json.loads(r.stdout or '{"items": []}')["items"] if r.returncode == 0 else []:
                name, ip = s["metadata"]["name"], s["spec"].get("clusterIP")
                if ip and self.seen.get(name) != ip:
                    body = json.dumps({"host": NAME + ".", "addresses": [ip]}).encode()
                    urllib.request.urlopen(urllib.request.Request(
                        f"http://127.0.0.1:{self.pebble.dns_mgmt}/add-a", data=body), timeout=5)
                    self.seen[name] = ip
            time.sleep(0.2)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=10)


def test_http01_through_a_solver_pod_and_service_that_are_removed_afterwards(
        cluster, controller, namespace, peers, tmp_path):
    # Pebble validates on port 80 of whatever the name resolves to: the solver Service.
    p = Pebble(tmp_path, 80).start()
    peers.append(p)
    watch = SolverWatch(cluster, namespace, p)
    try:
        created = time.monotonic()
        k.apply(cluster, namespace, k.secret("acme", **{"ca.crt": p.ca.read_text()}),
                certificate(p, {"http01": {}}), tls_broker())
        cert = k.wait_ready(cluster, CERTS, "acme-tls", namespace, reason="Issued", timeout=240)
    finally:
        watch.stop()
    assert watch.seen, "a solver Service was created"
    serial = serving(cluster, namespace, p.root_pem(), created, "http01")
    assert int(cert["status"]["serial"], 16) == serial
    # The solver objects are gone once the order ended.
    def gone():
        out = cluster.kubectl("get", "pods,services", "-n", namespace, "-l",
                              "app.kubernetes.io/name=edgemq-acme-solver", "-o", "name").stdout
        return out.strip() == ""
    cluster.wait_for(gone, 60, "the solver Pod and Service removed")
    log = controller.log()
    assert "HTTP-01 solver created" in log and "HTTP-01 solver removed" in log
