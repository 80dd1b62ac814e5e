"""A bridge's client certificate on a real cluster: the controller renews a
short-lived `ca` Certificate, the broker pod reads the new pair through the API and the
bridge reconnects with it at once, to a Mosquitto on this machine that, like AWS IoT
Core, requires a client certificate and takes its CN as the identity."""

from __future__ import annotations

import time

import edgemq_k8s as k
from edgemq_k8s import support
from test_bridge_queues import node_ip
from test_bridges import make_ca, make_leaf


def test_a_renewed_client_certificate_reconnects_the_bridge_with_it(
        cluster, controller, namespace, mosquitto, tmp_path):
    d = tmp_path / "pki"
    ca = make_ca(d, "site-ca")
    server = make_leaf(d, "server", ca, "localhost", server=True)
    acl = d / "acl"
    # Anonymous clients (the test's watcher, on the plain listener) may only read.
    acl.write_text("topic read home/#\nuser home-bridge\ntopic readwrite home/#\n")
    pod_port = support.free_port()
    # The TLS listener the pod reaches; the fixture's own plain one stays on 127.0.0.1.
    remote = mosquitto([f"listener {pod_port} {node_ip(cluster)}", f"cafile {ca[0]}",
                        f"certfile {server[0]}", f"keyfile {server[1]}",
                        "require_certificate true", "use_identity_as_username true",
                        "allow_anonymous true", f"acl_file {acl}"], name="remote")
    k.apply(cluster, namespace,
            k.secret("site-ca", "kubernetes.io/tls",
                     **{"tls.crt": ca[0].read_text(), "tls.key": ca[1].read_text()}),
            # Renewed about ten seconds after each issuance.
            {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "bridge-client"},
             "spec": {"commonName": "home-bridge", "duration": "90s", "renewBefore": "80s",
                      "issuer": {"ca": {"secretRef": "site-ca"}}}},
            k.broker("home", [{"name": "lan", "port": 1883}], allowAnonymous=True, aclEnabled=False),
            {"apiVersion": k.API, "kind": "Bridge", "metadata": {"name": "aws"},
             "spec": {"brokerRef": "home",
                      "remote": {"address": f"{node_ip(cluster)}:{pod_port}", "clientId": "home-bridge",
                                 "tls": {"caCertificateRef": "bridge-client",
                                         "clientCertificateRef": "bridge-client",
                                         "serverName": "localhost"}},
                      "topics": [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                                  "remotePrefix": "home/"}]}})
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    first = k.wait_ready(cluster, "bridge", "aws", namespace, reason="Connected", timeout=60)
    first_serial = k.get(cluster, "certificates.edgemq.io", "bridge-client", namespace)["status"]["serial"]
    since = first["status"]["since"]

    # Nobody edits anything: the controller renews the pair, the pod reconnects the bridge.
    def renewed_and_reconnected():
        serial = k.get(cluster, "certificates.edgemq.io", "bridge-client", namespace)["status"]["serial"]
        st = k.get(cluster, "bridge", "aws", namespace)["status"]
        return serial != first_serial and st.get("connected") and st.get("since") != since and st
    renewed_at = time.monotonic()
    cluster.wait_for(renewed_and_reconnected, 90, "the bridge reconnected with the renewed pair")
    k.record("bridge_client_certificate_renewal", {
        "seconds_from_first_check_to_reconnected": round(time.monotonic() - renewed_at, 1)})
    log = (remote.root / "mosquitto.log").read_text()
    assert log.count("as home-bridge") >= 2, "the remote saw the bridge connect again, as itself"

    # And it forwards with the new identity.
    client = support.connect(remote.port, client_id="watch")  # plain listener, anonymous
    client.subscribe_wait("home/#", 1)
    lan = k.wait_connect(k.node_port(cluster, "home", namespace, "lan"))
    lan.publish_wait("sensors/after-renewal", b"1", qos=1)
    got = client.get(timeout=30)
    assert got.topic == "home/sensors/after-renewal"
