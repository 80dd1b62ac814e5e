"""AWS IoT Core certificates through `edgemq run`, against moto's server (an AWS API
emulator, started per test on a free loopback port and stopped by pid).

A Certificate with the awsIot issuer gets a thing, a certificate, a least-privilege
policy generated from the Bridge that presents it, and the account's endpoint; status
shows them. Removing the Certificate from the folder cleans AWS up with
`deletionPolicy: Delete` and touches nothing with `Retain`.
"""

from __future__ import annotations

import json
import os

import pytest

import support

from helpers_aws import AWS_ENV, REGION, Moto


@pytest.fixture
def moto(tmp_path):
    m = Moto(tmp_path)
    yield m
    m.stop()


def certificate_yaml(url, policy, extra=""):
    return (
        "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: aws-home}\n"
        f"spec:\n  deletionPolicy: {policy}\n  issuer:\n    awsIot:\n"
        f"      region: {REGION}\n      endpointUrl: {url}\n      thingName: home-gw\n"
        f"      keyOrigin: AWS\n{extra}")


BRIDGE = """apiVersion: edgemq.io/v1alpha1
kind: Bridge
metadata: {name: to-aws}
spec:
  brokerRef: home
  remote:
    awsIotEndpoint: {certificateRef: aws-home}
    tls: {clientCertificateRef: aws-home}
  topics:
    - {pattern: "sensors/#", direction: out, remotePrefix: "home/"}
    - {pattern: "commands/#", direction: in}
"""


def cert_status(st):
    for r in st["resources"]:
        if r["kind"] == "Certificate" and r["name"] == "aws-home":
            return r
    return None


def issued(st):
    r = cert_status(st)
    if r and r["conditions"][0]["status"] == "True":
        return r
    return None


def start(edgemq, moto, policy):
    e = edgemq(env=AWS_ENV)
    e.write("broker.yaml", support.broker_yaml("home", support.free_port()))
    e.write("cert.yaml", certificate_yaml(moto.url, policy))
    e.write("bridge.yaml", BRIDGE)
    e.start()
    r = e.wait_applied(issued, timeout=60, message="AWS IoT certificate issued")
    return e, r


def test_status_shows_the_certificate_endpoint_and_generated_policy_and_delete_cleans_up(
        edgemq, moto):
    e, r = start(edgemq, moto, "Delete")
    aws = r["details"]["awsIot"]
    assert aws["certificateArn"].endswith("cert/" + aws["certificateId"])
    assert aws["endpoint"].endswith(f"-ats.iot.{REGION}.amazonaws.com")
    assert aws["policyName"] == "edgemq-home-gw-aws-home"
    assert aws["certificateId"] in r["conditions"][0]["message"]

    inv = moto.inventory()
    assert inv["things"] == ["home-gw"]
    assert inv["certificates"] == [(aws["certificateId"], "ACTIVE")]
    assert inv["policies"] == ["edgemq-home-gw-aws-home"]
    iot = moto.client("iot")
    in_aws = json.loads(iot.get_policy(policyName=aws["policyName"])["policyDocument"])
    assert in_aws == json.loads(aws["policyDocument"])
    acct = aws["certificateArn"].split(":")[4]
    arn = f"arn:aws:iot:{REGION}:{acct}"
    actions = {s["Action"]: s["Resource"] for s in in_aws["Statement"]}
    assert actions == {
        "iot:Connect": [f"{arn}:client/home-gw"],
        "iot:Publish": [f"{arn}:topic/home/sensors", f"{arn}:topic/home/sensors/*"],
        "iot:Subscribe": [f"{arn}:topicfilter/commands/#"],
        "iot:Receive": [f"{arn}:topic/commands", f"{arn}:topic/commands/*"],
    }
    assert iot.list_principal_things(principal=aws["certificateArn"])["things"] == ["home-gw"]
    assert [p["policyName"] for p in
            iot.list_attached_policies(target=aws["certificateArn"])["policies"]] == \
        [aws["policyName"]]
    # The file a Bridge with awsIotEndpoint reads: the host, no port.
    assert e.cert_path("aws-home", file="endpoint").read_text() == aws["endpoint"]
    key = e.cert_path("aws-home", file="tls.key")
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"

    # The Certificate (and the Bridge using it) leave the folder: nothing is left in AWS.
    e.remove("bridge.yaml")
    e.remove("cert.yaml")
    support.poll(lambda: moto.inventory() == {"things": [], "certificates": [], "policies": [],
                                              "secrets": []},
                 timeout=60, message="AWS IoT resources deleted")
    support.poll(lambda: not e.cert_path("aws-home", file="aws.json").exists(), timeout=10)
    assert e.running()


def test_retain_leaves_everything_in_aws(edgemq, moto):
    e, r = start(edgemq, moto, "Retain")
    before = moto.inventory()
    assert before["certificates"] == [(r["details"]["awsIot"]["certificateId"], "ACTIVE")]
    e.remove("bridge.yaml")
    e.remove("cert.yaml")
    e.wait_applied(lambda st: cert_status(st) is None, message="Certificate gone from status")
    assert moto.inventory() == before
    assert e.cert_path("aws-home", file="tls.key").exists()


def test_an_aws_error_is_in_status_with_operation_and_code(edgemq, moto):
    e = edgemq(env=AWS_ENV)
    e.write("broker.yaml", support.broker_yaml("home", support.free_port()))
    e.write("cert.yaml", certificate_yaml(moto.url, "Delete", "      thingTypeName: missing\n"))
    e.start()

    def failed(st):
        r = cert_status(st)
        return r and r["conditions"][0]["reason"] == "IssueFailed" and r
    r = e.wait_applied(failed, timeout=60, message="issue failure reported")
    msg = r["conditions"][0]["message"]
    assert "CreateThing" in msg and "ResourceNotFoundException" in msg, msg
    # The broker runs regardless.
    assert e.status()["config"]["valid"]


def test_a_due_certificate_is_rotated_and_the_old_one_retired(edgemq, moto):
    # duration 40s, renewBefore 20s: due 20 s after issue.
    e = edgemq(env=AWS_ENV)
    e.write("broker.yaml", support.broker_yaml("home", support.free_port()))
    e.write("cert.yaml", certificate_yaml(moto.url, "Delete").replace(
        "spec:\n", "spec:\n  duration: 40s\n  renewBefore: 20s\n"))
    e.write("bridge.yaml", BRIDGE)
    e.start()
    first = e.wait_applied(issued, timeout=60)["details"]["awsIot"]["certificateId"]

    def rotated(st):
        r = issued(st)
        cid = r and r["details"]["awsIot"]["certificateId"]
        return cid and cid != first and cid
    e.wait_applied(rotated, timeout=90, message="certificate rotated")
    # The old one is detached, deactivated and deleted once the new one was handed out.
    support.poll(lambda: first not in [c for c, _ in moto.inventory()["certificates"]],
                 timeout=150, message="old certificate retired")
    # The thing and its policy stay through rotations.
    inv = moto.inventory()
    assert inv["things"] == ["home-gw"] and inv["policies"] == ["edgemq-home-gw-aws-home"]
    assert e.running()


def test_a_certificate_made_elsewhere_is_imported_from_secrets_manager(edgemq, moto, tmp_path):
    """The path of a local stand-in for AWS IoT Core: a device certificate made with
    openssl (as by hand or Terraform), registered in AWS IoT, its pair kept in Secrets
    Manager; Bridges pointed at dataEndpoint instead of the discovered endpoint."""
    import helpers_b
    crt, key = helpers_b.make_cert(tmp_path / "device", "device", 7, cn="home-gw")
    iot = moto.client("iot")
    reg = iot.register_certificate_without_ca(certificatePem=crt.read_text(), status="ACTIVE")
    moto.client("secretsmanager").create_secret(Name="terraform/home-gw", SecretString=json.dumps({
        "certificateArn": reg["certificateArn"],
        "certificatePem": crt.read_text(),
        "privateKey": key.read_text(),
    }))
    e = edgemq(env=AWS_ENV)
    e.write("broker.yaml", support.broker_yaml("home", support.free_port()))
    e.write("cert.yaml", certificate_yaml(moto.url, "Delete").replace(
        "      keyOrigin: AWS\n",
        "      importFrom: {secretId: terraform/home-gw}\n      dataEndpoint: localhost:18883\n"))
    e.write("bridge.yaml", BRIDGE)
    e.start()
    r = e.wait_applied(issued, timeout=60, message="imported certificate in place")
    aws = r["details"]["awsIot"]
    assert aws["certificateArn"] == reg["certificateArn"]
    assert aws["endpoint"] == "localhost:18883"
    assert e.cert_path("aws-home", file="endpoint").read_text() == "localhost:18883"
    assert e.cert_path("aws-home").read_text() == crt.read_text()
    assert e.cert_path("aws-home", file="tls.key").read_text() == key.read_text()
    assert iot.list_principal_things(principal=reg["certificateArn"])["things"] == ["home-gw"]
    # Deleted with Delete: detached, but the certificate stays with whoever made it.
    e.remove("bridge.yaml")
    e.remove("cert.yaml")
    support.poll(lambda: moto.inventory()["things"] == [], timeout=60, message="thing deleted")
    assert moto.inventory()["certificates"] == [(reg["certificateId"], "ACTIVE")]
    assert iot.list_attached_policies(target=reg["certificateArn"])["policies"] == []


def test_a_bridge_set_up_exactly_as_for_aws_iot_core_connects_to_a_mutual_tls_stand_in(
        edgemq, moto, mosquitto, tmp_path):
    """The bridge of examples/bridges/to-aws-iot.yaml (endpoint from the awsIot
    Certificate, mutual TLS with its pair, ALPN offered) against a local Mosquitto that
    requires a client certificate and takes its identity as the username, as AWS IoT
    Core does. moto's own certificates chain to no CA a TLS peer can verify, so the
    device pair is made by a local CA, registered in moto and imported from Secrets
    Manager; the endpoint points at the stand-in."""
    from test_bridges import ca_secret_yaml, make_leaf, mutual_tls_remote, wait_connected
    d = tmp_path / "pki"
    ca, standin = mutual_tls_remote(mosquitto, d, "standin-ca", identity="home-gw",
                                    topics=("home/#", "commands/#"))
    device = make_leaf(d, "device", ca, "home-gw", server=False)
    iot = moto.client("iot")
    reg = iot.register_certificate_without_ca(certificatePem=device[0].read_text(), status="ACTIVE")
    moto.client("secretsmanager").create_secret(Name="standin/home-gw", SecretString=json.dumps({
        "certificateArn": reg["certificateArn"],
        "certificatePem": device[0].read_text(),
        "privateKey": device[1].read_text(),
    }))
    port = support.free_port()
    e = edgemq(env=AWS_ENV, secrets=True)
    e.write_secret("ca.yaml", ca_secret_yaml("standin-ca", ca[0]))
    e.write("broker.yaml", support.broker_yaml("home", port,
                                               "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.write("cert.yaml", certificate_yaml(moto.url, "Retain").replace(
        "      keyOrigin: AWS\n",
        f"      importFrom: {{secretId: standin/home-gw}}\n"
        f"      dataEndpoint: localhost:{standin.port}\n"))
    # As for AWS IoT Core; only the roots differ (the stand-in is not signed by Amazon).
    e.write("bridge.yaml", """apiVersion: edgemq.io/v1alpha1
kind: Bridge
metadata: {name: to-aws}
spec:
  brokerRef: home
  remote:
    awsIotEndpoint: {certificateRef: aws-home}
    cleanSession: false
    tls:
      clientCertificateRef: aws-home
      caSecretRef: {name: standin-ca, key: ca.crt}
      alpn: [x-amzn-mqtt-ca]
  topics:
    - {pattern: "sensors/#", direction: out, qos: 1, remotePrefix: "home/"}
    - {pattern: "commands/#", direction: in, qos: 1}
""")
    e.start()
    st = wait_connected(e, "to-aws", 60)["details"]
    assert st["remote"] == f"localhost:{standin.port}" and st["clientId"] == "home-gw"
    sink = support.connect(standin.port, client_id="sink", tls={
        "ca_certs": str(ca[0]), "certfile": str(device[0]), "keyfile": str(device[1])})
    assert sink.subscribe_wait("home/#", 1) == [1]
    support.pub(port, "sensors/temp", b"20", qos=1)
    m = sink.get(10)
    assert (m.topic, m.payload) == ("home/sensors/temp", b"20")
    local = support.sub(port, "commands/#", 1)
    sink.publish_wait("commands/light", b"on", qos=1)
    assert local.get(10).payload == b"on"
    sink.disconnect_wait()
