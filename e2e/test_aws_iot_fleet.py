"""AWS IoT fleet provisioning by claim through `edgemq run`, against a stand-in that
implements AWS's documented provisioning topic contract on a real Mosquitto requiring
client certificates (see fleet_standin.py).

A device holding only the fleet's claim certificate gets its own certificate and thing;
its Bridge then connects with that identity. A serial number the template's hook refuses
shows `Rejected` and stores nothing; an unreachable endpoint is retried while the broker
serves; after a restart the claim is not used again.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import support
from fleet_standin import FleetStandin
from helpers_b import tls_secret_yaml
from test_bridges import ca_secret_yaml, wait_connected

OPEN_BROKER = "  allowAnonymous: true\n  aclEnabled: false\n"


@pytest.fixture
def standin(mosquitto, tmp_path):
    made = []

    def factory(port=None, start=True):
        s = FleetStandin(mosquitto, tmp_path / "pki", port=port)
        made.append(s)
        return s.start() if start else s

    yield factory
    for s in made:
        s.stop()


def certificate_yaml(port: int, serial_file, key_origin: str = "Local") -> str:
    return f"""apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {{name: device}}
spec:
  issuer:
    awsIot:
      dataEndpoint: localhost:{port}
      keyOrigin: {key_origin}
      fleetProvisioning:
        templateName: edge-fleet
        claim: {{secretRef: fleet-claim}}
        caSecretRef: {{name: standin-ca, key: ca.crt}}
        parameters:
          - name: SerialNumber
            valueFrom: {{file: {serial_file}}}
          - {{name: Site, value: shed}}
"""


BRIDGE = """apiVersion: edgemq.io/v1alpha1
kind: Bridge
metadata: {name: to-aws}
spec:
  brokerRef: home
  remote:
    awsIotEndpoint: {certificateRef: device}
    tls:
      clientCertificateRef: device
      caSecretRef: {name: standin-ca, key: ca.crt}
  topics:
    - {pattern: "sensors/#", direction: out, qos: 1, remotePrefix: "home/"}
"""


def device(e, s, serial: str, endpoint_port=None, key_origin="Local"):
    """An edgemq with the claim and the stand-in's CA as Secrets, a serial number file,
    a broker on a free port, the fleet Certificate and a Bridge presenting it."""
    serial_file = e.root / "serial-number"
    serial_file.write_text(serial + "\n")
    e.write_secret("pki.yaml", support.docs(tls_secret_yaml("fleet-claim", *s.claim),
                                            ca_secret_yaml("standin-ca", s.ca[0])))
    port = support.free_port()
    e.write("broker.yaml", support.broker_yaml("home", port, OPEN_BROKER))
    e.write("cert.yaml", certificate_yaml(endpoint_port or s.port, serial_file, key_origin))
    e.write("bridge.yaml", BRIDGE)
    return port


def cert_status(st):
    return next((r for r in st["resources"]
                 if r["kind"] == "Certificate" and r["name"] == "device"), None)


def reason_is(reason):
    def check(st):
        r = cert_status(st)
        return r and r["conditions"][0]["reason"] == reason and r
    return check


def forwards_with_the_device_identity(e, s, port, payload: bytes):
    """A message published locally reaches the stand-in under home/, sent by the
    Bridge connected as the thing with the provisioned certificate."""
    sink = support.connect(s.port, client_id="sink", tls={
        "ca_certs": str(s.ca[0]), "certfile": str(s.provisioner[0]),
        "keyfile": str(s.provisioner[1])})
    try:
        assert sink.subscribe_wait("home/#", 1) == [1]
        support.pub(port, "sensors/temp", payload, qos=1)
        m = sink.get(15)
        assert (m.topic, m.payload) == ("home/sensors/temp", payload)
    finally:
        sink.disconnect_wait()


@pytest.mark.parametrize("key_origin", ["Local", "AWS"])
def test_a_device_provisions_by_claim_and_its_bridge_forwards_with_the_new_identity(
        edgemq, standin, key_origin):
    s = standin()
    e = edgemq(secrets=True)
    port = device(e, s, "SN-1001", key_origin=key_origin)
    e.start()
    r = e.wait_applied(reason_is("Provisioned"), timeout=60, message="device provisioned")
    aws = r["details"]["awsIot"]
    assert aws["thingName"] == "edge-SN-1001"
    assert aws["provisioningTemplate"] == "edge-fleet"
    assert r["conditions"][0]["status"] == "True"

    # The stored pair is the one AWS IoT (the stand-in) issued, named by its id.
    crt = x509.load_pem_x509_certificate(e.cert_path("device").read_bytes())
    assert aws["certificateId"] == hashlib.sha256(crt.public_bytes(Encoding.DER)).hexdigest()
    cn = crt.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert s.issued[aws["certificateId"]] == cn
    assert e.cert_path("device", file="endpoint").read_text() == f"localhost:{s.port}"
    expected = {"create-from-csr": 1, "create": 0, "provision": 1} if key_origin == "Local" \
        else {"create-from-csr": 0, "create": 1, "provision": 1}
    assert s.counts() == expected

    # The Bridge connects as the thing, with the device's own certificate.
    st = wait_connected(e, "to-aws", 60)["details"]
    assert st["clientId"] == "edge-SN-1001"
    forwards_with_the_device_identity(e, s, port, b"21")
    log = s.mosquitto.log_path.read_text(errors="replace")
    assert "as edge-SN-1001 (" in log and f"u'{cn}'" in log, log[-2000:]
    assert s.claim_connections() == 1


def test_a_refused_serial_number_shows_rejected_with_the_reason_and_stores_nothing(
        edgemq, standin):
    s = standin()
    e = edgemq(secrets=True)
    port = device(e, s, "SN-9999")
    e.start()
    r = e.wait_applied(reason_is("Rejected"), timeout=60, message="rejection reported")
    msg = r["conditions"][0]["message"]
    assert "RegisterThing rejected" in msg and "pre-provisioning hook refused" in msg, msg
    assert "AccessDenied" in msg and "serial SN-9999 is not allowed" in msg, msg
    assert r["conditions"][0]["status"] == "False"
    assert s.counts()["provision"] >= 1
    for f in ("tls.key", "tls.crt", "fleet.json", "endpoint"):
        assert not e.cert_path("device", file=f).exists(), f
    # The broker serves regardless.
    local = support.sub(port, "sensors/#", 1)
    support.pub(port, "sensors/x", b"1", qos=1)
    assert local.get(10).payload == b"1"


def test_an_unreachable_endpoint_is_retried_while_the_broker_serves(edgemq, standin):
    s = standin(start=False)
    e = edgemq(secrets=True)
    port = device(e, s, "SN-1001")
    e.start()

    def retrying(st):
        r = cert_status(st)
        return (r and r["conditions"][0]["reason"] == "Provisioning"
                and "retrying in" in r["conditions"][0]["message"] and r)
    r = e.wait_applied(retrying, timeout=60, message="retry reported")
    assert "not provisioned yet" in r["conditions"][0]["message"]
    assert r["details"]["failures"] >= 1
    assert e.metrics()["edgemq_certificate_renewal_failures"] >= 1
    # Meanwhile the broker serves local clients.
    local = support.sub(port, "sensors/#", 1)
    support.pub(port, "sensors/x", b"meanwhile", qos=1)
    assert local.get(10).payload == b"meanwhile"
    assert s.counts() == {"create-from-csr": 0, "create": 0, "provision": 0}

    # The endpoint comes up: the next attempt provisions.
    s.start()
    e.wait_applied(reason_is("Provisioned"), timeout=120, message="provisioned after retry")
    metrics = e.metrics()
    assert metrics["edgemq_certificate_renewal_failures"] == 0
    assert metrics["edgemq_certificate_expiration_timestamp_seconds"] > 0
    wait_connected(e, "to-aws", 60)
    forwards_with_the_device_identity(e, s, port, b"after")


def test_after_a_restart_the_identity_is_kept_and_the_claim_is_not_used_again(
        edgemq, standin):
    s = standin()
    e = edgemq(secrets=True)
    port = device(e, s, "SN-1001")
    e.start()
    first = e.wait_applied(reason_is("Provisioned"), timeout=60)["details"]["awsIot"]
    wait_connected(e, "to-aws", 60)
    assert s.counts()["provision"] == 1 and s.claim_connections() == 1

    e.restart()
    again = e.wait_applied(reason_is("Provisioned"), timeout=60)["details"]["awsIot"]
    assert again["certificateId"] == first["certificateId"]
    wait_connected(e, "to-aws", 60)
    forwards_with_the_device_identity(e, s, port, b"after-restart")
    assert s.counts() == {"create-from-csr": 1, "create": 0, "provision": 1}
    assert s.claim_connections() == 1


# ---------------------------------------------------------------- the administrator's side

def test_fleet_template_renders_the_template_and_policies_of_the_example(tmp_path):
    out = tmp_path / "aws"
    r = support.run([support.edgemq_bin(), "aws", "fleet-template",
                     "--config", support.REPO / "examples" / "fleet",
                     "--secrets", support.REPO / "examples" / "fleet-secrets",
                     "--region", "eu-west-1", "--account", "123456789012",
                     "--thing-name-prefix", "edge-", "-o", out])
    assert r.returncode == 0, r.stdout + r.stderr
    template = json.loads((out / "template.json").read_text())
    claim = json.loads((out / "claim-policy.json").read_text())
    device_policy = json.loads((out / "device-policy.json").read_text())
    assert set(template["Parameters"]) == {"SerialNumber", "DeviceName", "Site",
                                           "AWS::IoT::Certificate::Id"}
    thing = template["Resources"]["thing"]["Properties"]
    assert thing["ThingName"] == {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]}
    assert thing["ThingGroups"] == ["edge-fleet"]
    assert template["Resources"]["policy"]["Properties"]["PolicyName"] == \
        "edgemq-fleet-edge-fleet"
    arn = "arn:aws:iot:eu-west-1:123456789012"
    # The claim may touch nothing but this template's provisioning topics.
    claim_resources = [res for s in claim["Statement"] for res in s["Resource"]]
    for res in claim_resources:
        assert (res == f"{arn}:client/edgemq-provision-*"
                or "/$aws/certificates/create-from-csr/json" in res
                or "/$aws/provisioning-templates/edge-fleet/provision/json" in res), res
    actions = {s["Action"]: s["Resource"] for s in device_policy["Statement"]}
    assert actions["iot:Connect"] == [f"{arn}:client/${{iot:Connection.Thing.ThingName}}"]
    assert actions["iot:Publish"] == [f"{arn}:topic/fleet/sensors",
                                      f"{arn}:topic/fleet/sensors/*"]


def test_a_bad_fleet_certificate_is_reported_with_file_line_and_object(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "cert.yaml").write_text("""apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {name: device}
spec:
  issuer:
    awsIot:
      region: eu-west-1
      fleetProvisioning:
        templateName: "edge fleet"
        claim: {secretRef: missing-claim}
        parameters:
          - {name: SerialNumber, valueFrom: {file: serial.txt}}
---
apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {name: gw}
spec:
  issuer:
    awsIot: {region: eu-west-1}
""")
    r = support.run([support.edgemq_bin(), "validate", cfg])
    assert r.returncode != 0
    out = r.stdout
    for want in ("cert.yaml:7:", "Certificate/device", "region does not apply with fleetProvisioning",
                 "cert.yaml:9:", "templateName `edge fleet`",
                 "fleetProvisioning needs dataEndpoint",
                 "missing-claim", "file `serial.txt` must be an absolute path",
                 "Certificate/gw: set thingName, or fleetProvisioning"):
        assert want in out, f"{want!r} not in:\n{out}"
