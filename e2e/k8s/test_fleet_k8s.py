"""AWS IoT fleet provisioning by claim on a real cluster, against the stand-in of
e2e/fleet_standin.py (AWS's documented provisioning topic contract on a real Mosquitto
requiring client certificates; AWS IoT's own API cannot run here).

The controller (on this machine, as in the other cluster tests) exchanges the claim for
the device's own certificate and thing and stores them in the Certificate's Secret; the
Bridge in the broker pod then connects to the stand-in, on the node's address, as the
thing with the device's certificate. The stand-in unreachable: retried, and the broker
serves meanwhile. A restarted controller does not provision again. A serial number the
stand-in's hook refuses shows `Rejected` and stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import edgemq_k8s as k
from edgemq_k8s import support
from fleet_standin import FleetStandin
from test_bridge_queues import node_ip

CERTS = "certificates.edgemq.io"


@pytest.fixture
def standin(cluster, mosquitto, tmp_path):
    s = FleetStandin(mosquitto, tmp_path / "pki", also_on=node_ip(cluster))
    yield s
    s.stop()


def objects(s: FleetStandin, address: str, serial_file) -> list:
    return [
        k.secret("fleet-claim", "kubernetes.io/tls",
                 **{"tls.crt": s.claim[0].read_text(), "tls.key": s.claim[1].read_text()}),
        k.secret("standin-ca", **{"ca.crt": s.ca[0].read_text()}),
        k.broker("home", [{"name": "lan", "port": 1883}], allowAnonymous=True,
                 aclEnabled=False),
        {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "device"},
         "spec": {"secretName": "device-tls", "issuer": {"awsIot": {
             # The controller and the pod both reach the stand-in on the node's address.
             "dataEndpoint": f"{address}:{s.pod_port}",
             "fleetProvisioning": {
                 "templateName": "edge-fleet",
                 "claim": {"secretRef": "fleet-claim"},
                 "caSecretRef": {"name": "standin-ca", "key": "ca.crt"},
                 "parameters": [{"name": "SerialNumber", "valueFrom": {"file": str(serial_file)}},
                                {"name": "Site", "value": "shed"}]}}}}},
        {"apiVersion": k.API, "kind": "Bridge", "metadata": {"name": "to-aws"},
         "spec": {"brokerRef": "home",
                  "remote": {"awsIotEndpoint": {"certificateRef": "device"},
                             "tls": {"clientCertificateRef": "device",
                                     "caSecretRef": {"name": "standin-ca", "key": "ca.crt"}}},
                  "topics": [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                              "remotePrefix": "home/"}]}},
    ]


def secret_data(cluster, namespace: str, name: str) -> dict:
    s = k.get(cluster, "secret", name, namespace)
    assert s, f"Secret {name} missing"
    return {"owners": s["metadata"].get("ownerReferences") or [],
            **{key: base64.b64decode(v).decode() for key, v in s["data"].items()}}


def metric(controller, name: str, namespace: str) -> float:
    """The value of a Certificate metric of `device`, 0 when not exported."""
    want = f'{name}{{certificate="{namespace}/device"}} '
    return next((float(line.split()[-1]) for line in controller.metrics().splitlines()
                 if line.startswith(want)), 0.0)


def expiry_exported(controller, namespace: str) -> bool:
    return metric(controller, "edgemq_certificate_expiration_timestamp_seconds", namespace) > 0


def reason(cluster, namespace: str) -> tuple:
    c = k.ready(k.get(cluster, CERTS, "device", namespace)) or {}
    return c.get("reason"), c.get("message", "")


# The serial-number file is in the test's folder; the installer allows reading it
# (chart value fleetFileRoots).
ALLOW_TMP = pytest.mark.controller_args(lambda _cluster, tmp: ["--fleet-file-root", str(tmp)])


@ALLOW_TMP
def test_a_device_provisions_on_a_cluster_and_its_bridge_in_the_pod_forwards_as_the_thing(
        cluster, crds, namespace, controller, standin, tmp_path):
    serial = tmp_path / "serial-number"
    serial.write_text("SN-1001\n")
    address = node_ip(cluster)
    # The stand-in is not up yet: provisioning is retried, and the broker serves.
    k.apply(crds, namespace, *objects(standin, address, serial))
    cert = cluster.wait_for(
        lambda: (lambda r: r[0] == "Provisioning" and "retrying in" in r[1])(
            reason(cluster, namespace)) and k.get(cluster, CERTS, "device", namespace),
        120, "a failed attempt reported, with its retry")
    assert "not provisioned yet" in k.ready(cert)["message"]
    assert cert["status"]["failures"] >= 1
    assert k.get(cluster, "secret", "device-tls", namespace) is None
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    lan_port = k.node_port(cluster, "home", namespace, "lan")
    local = k.wait_connect(lan_port, client_id="local")
    local.subscribe_wait("sensors/#", 1)
    lan = k.wait_connect(lan_port, client_id="device-app")
    lan.publish_wait("sensors/meanwhile", b"1", qos=1)
    assert local.get(timeout=15).payload == b"1"

    standin.start()
    started = time.monotonic()
    cert = k.wait_ready(cluster, CERTS, "device", namespace, reason="Provisioned", timeout=120)
    k.record("fleet_provisioning_on_a_cluster", {
        "seconds_from_endpoint_up_to_provisioned": round(time.monotonic() - started, 1)})
    aws = cert["status"]["awsIot"]
    assert aws["thingName"] == "edge-SN-1001" and aws["provisioningTemplate"] == "edge-fleet"

    # The pair, the endpoint's CA, the endpoint and the thing name, owned by the Certificate.
    d = secret_data(cluster, namespace, "device-tls")
    assert [(o["kind"], o["uid"]) for o in d["owners"]] == \
        [("Certificate", cert["metadata"]["uid"])]
    crt = x509.load_pem_x509_certificate(d["tls.crt"].encode())
    assert aws["certificateId"] == hashlib.sha256(crt.public_bytes(Encoding.DER)).hexdigest()
    cn = crt.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert standin.issued[aws["certificateId"]] == cn
    assert d["thingName"] == "edge-SN-1001"
    assert d["endpoint"] == f"{address}:{standin.pod_port}"
    assert d["ca.crt"] == standin.ca[0].read_text()
    assert standin.counts() == {"create-from-csr": 1, "create": 0, "provision": 1}

    # The Bridge in the pod connects as the thing, with the device's own certificate.
    k.wait_ready(cluster, "bridge", "to-aws", namespace, reason="Connected", timeout=90)
    sink = support.connect(standin.port, client_id="sink", tls={
        "ca_certs": str(standin.ca[0]), "certfile": str(standin.provisioner[0]),
        "keyfile": str(standin.provisioner[1])})
    try:
        assert sink.subscribe_wait("home/#", 1) == [1]
        lan.publish_wait("sensors/temp", b"21", qos=1)
        m = sink.get(timeout=30)
        assert (m.topic, m.payload) == ("home/sensors/temp", b"21")
    finally:
        sink.disconnect_wait()
    log = standin.mosquitto.log_path.read_text(errors="replace")
    assert "as edge-SN-1001 (" in log and f"u'{cn}'" in log, log[-2000:]
    assert standin.claim_connections() == 1

    # A restarted controller keeps the identity: no second provisioning.
    controller.stop()
    second = k.Controller(crds, tmp_path, namespace, name="controller-2",
                          extra=["--fleet-file-root", str(tmp_path)]).start()
    try:
        # It has reconciled the Certificate once it exports the identity's expiry.
        cluster.wait_for(lambda: expiry_exported(second, namespace), 60,
                         "the second controller to reconcile the Certificate")
        assert reason(cluster, namespace)[0] == "Provisioned"
        assert standin.counts() == {"create-from-csr": 1, "create": 0, "provision": 1}
        assert standin.claim_connections() == 1
        assert secret_data(cluster, namespace, "device-tls")["tls.crt"] == d["tls.crt"]
    except BaseException:
        print(f"\n--- second controller log ---\n{second.log()[-6000:]}")
        print("\n--- second controller metrics ---\n" + "\n".join(
            line for line in second.metrics().splitlines() if not line.startswith("#")))
        raise
    finally:
        second.stop()
        lan.disconnect_wait()
        local.disconnect_wait()


@ALLOW_TMP
def test_a_refused_serial_number_shows_rejected_on_a_cluster_and_stores_nothing(
        cluster, crds, namespace, controller, standin, tmp_path):
    serial = tmp_path / "serial-number"
    serial.write_text("SN-9999\n")
    standin.start()
    k.apply(crds, namespace, *objects(standin, node_ip(cluster), serial))
    cert = k.wait_ready(cluster, CERTS, "device", namespace, status="False",
                        reason="Rejected", timeout=120)
    msg = k.ready(cert)["message"]
    assert "RegisterThing rejected" in msg and "pre-provisioning hook refused" in msg, msg
    assert "AccessDenied" in msg and "serial SN-9999 is not allowed" in msg, msg
    assert k.get(cluster, "secret", "device-tls", namespace) is None
    assert metric(controller, "edgemq_certificate_renewal_failures", namespace) >= 1
