"""AWS IoT Core certificates issued by the controller on a real cluster, against moto's
server (an AWS API emulator on a free loopback port; the controller runs on this
machine and reaches it there).

The controller makes the thing, the certificate and the least-privilege policy
generated from the Bridges presenting the Certificate; the key pair, the Amazon root
CAs and the endpoint go into the Certificate's `kubernetes.io/tls` Secret, and status
shows the ARN, the endpoint and the policy. What it made in AWS is recorded in status as
it goes, so a controller killed halfway resumes without leaving anything behind; with
`deletionPolicy: Delete` a finalizer cleans AWS up before the Certificate goes.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess

import pytest

import edgemq_k8s as k
from edgemq_k8s import support
from helpers_aws import AWS_ENV, REGION, Gate, Moto, empty_inventory

FINALIZER = "edgemq.io/aws-iot-cleanup"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture
def moto(tmp_path):
    m = Moto(tmp_path)
    yield m
    m.stop()


@pytest.fixture
def release_finalizers(crds, namespace):
    """Whatever happens in the test, no Certificate keeps the namespace from going."""
    yield
    r = crds.kubectl("get", "certificates.edgemq.io", "-n", namespace, "-o", "name", check=False)
    for obj in r.stdout.split():
        crds.kubectl("patch", obj, "-n", namespace, "--type=merge",
                     "-p", '{"metadata":{"finalizers":null}}', check=False)


def keys_secret(name="aws-keys"):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": KEYS}


def certificate(url, policy, credentials="aws-keys", **extra):
    aws = {"region": REGION, "endpointUrl": url, "thingName": "home-gw", "keyOrigin": "AWS",
           **extra}
    if credentials:
        aws["credentialsSecretRef"] = credentials
    return {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "aws-home"},
            "spec": {"secretName": "aws-home-tls", "deletionPolicy": policy,
                     "issuer": {"awsIot": aws}}}


def bridge(topics):
    return {"apiVersion": k.API, "kind": "Bridge", "metadata": {"name": "to-aws"},
            "spec": {"brokerRef": "home",
                     "remote": {"awsIotEndpoint": {"certificateRef": "aws-home"},
                                "tls": {"clientCertificateRef": "aws-home"}},
                     "topics": topics}}


SENSORS = {"pattern": "sensors/#", "direction": "out", "remotePrefix": "home/"}
COMMANDS = {"pattern": "commands/#", "direction": "in"}
ALARMS = {"pattern": "alarms/#", "direction": "out", "remotePrefix": "home/"}


def secret_data(cluster, namespace, name="aws-home-tls") -> dict:
    s = k.get(cluster, "secret", name, namespace)
    assert s, f"Secret {name} missing"
    return {"type": s["type"], "owners": s["metadata"].get("ownerReferences") or [],
            **{key: base64.b64decode(v).decode() for key, v in s["data"].items()}}


def public_key(pem: str, kind: str) -> bytes:
    openssl = support.require("openssl")
    args = ["x509", "-pubkey", "-noout"] if kind == "cert" else ["pkey", "-pubout"]
    return subprocess.run([openssl, *args], input=pem.encode(), capture_output=True,
                          check=True).stdout


def record(cert: dict) -> dict:
    return json.loads(cert["status"]["awsIotRecord"])


def gone(cluster, namespace, name="aws-home"):
    return cluster.wait_for(lambda: k.get(cluster, "certificates.edgemq.io", name, namespace)
                            is None, 90, f"Certificate {name} to go")


def test_the_pair_is_in_the_secret_status_shows_arn_endpoint_policy_and_delete_cleans_aws(
        crds, namespace, controller, moto, release_finalizers):
    k.apply(crds, namespace, keys_secret(), certificate(moto.url, "Delete"),
            bridge([SENSORS, COMMANDS]))
    cert = k.wait_ready(crds, "certificates.edgemq.io", "aws-home", namespace, reason="Issued",
                        timeout=120)
    aws = cert["status"]["awsIot"]
    assert aws["certificateArn"].endswith("cert/" + aws["certificateId"])
    assert aws["endpoint"].endswith(f"-ats.iot.{REGION}.amazonaws.com")
    assert aws["policyName"] == "edgemq-home-gw-aws-home"
    assert FINALIZER in cert["metadata"]["finalizers"]

    # Key material only in the Secret, owned by the Certificate, with the endpoint.
    s = secret_data(crds, namespace)
    assert s["type"] == "kubernetes.io/tls"
    assert [(o["kind"], o["uid"]) for o in s["owners"]] == \
        [("Certificate", cert["metadata"]["uid"])]
    assert public_key(s["tls.crt"], "cert") == public_key(s["tls.key"], "key")
    assert s["ca.crt"].count("BEGIN CERTIFICATE") == 5  # the Amazon roots
    assert s["endpoint"] == aws["endpoint"]
    assert "PRIVATE KEY" not in json.dumps(cert["status"])

    iot = moto.client("iot")
    inv = moto.inventory()
    assert inv["things"] == ["home-gw"]
    assert inv["certificates"] == [(aws["certificateId"], "ACTIVE")]
    assert inv["policies"] == ["edgemq-home-gw-aws-home"]
    in_aws = json.loads(iot.get_policy(policyName=aws["policyName"])["policyDocument"])
    assert in_aws == json.loads(aws["policyDocument"])
    acct = aws["certificateArn"].split(":")[4]
    arn = f"arn:aws:iot:{REGION}:{acct}"
    actions = {st["Action"]: st["Resource"] for st in in_aws["Statement"]}
    assert actions["iot:Publish"] == [f"{arn}:topic/home/sensors", f"{arn}:topic/home/sensors/*"]
    assert actions["iot:Subscribe"] == [f"{arn}:topicfilter/commands/#"]
    assert iot.list_principal_things(principal=aws["certificateArn"])["things"] == ["home-gw"]
    assert record(cert)["certificate"]["certificateId"] == aws["certificateId"]

    # A Bridge change re-shapes the policy: a new version, the same certificate.
    k.apply(crds, namespace, bridge([SENSORS, COMMANDS, ALARMS]))

    def widened():
        c = k.get(crds, "certificates.edgemq.io", "aws-home", namespace)
        doc = ((c or {}).get("status") or {}).get("awsIot", {}).get("policyDocument") or ""
        return c if "home/alarms" in doc else None
    cert = crds.wait_for(widened, 90, "the policy in status to follow the Bridge")
    in_aws = json.loads(iot.get_policy(policyName=aws["policyName"])["policyDocument"])
    assert in_aws == json.loads(cert["status"]["awsIot"]["policyDocument"])
    assert f"{arn}:topic/home/alarms/*" in json.dumps(in_aws)
    assert len(iot.list_policy_versions(policyName=aws["policyName"])["policyVersions"]) == 2
    assert moto.inventory()["certificates"] == [(aws["certificateId"], "ACTIVE")]

    # Deleting the Certificate with Delete: nothing is left in AWS.
    crds.kubectl("delete", "certificates.edgemq.io", "aws-home", "-n", namespace,
                 "--wait=false")
    gone(crds, namespace)
    assert moto.inventory() == empty_inventory()


def test_retain_leaves_everything_in_aws_and_adds_no_finalizer(
        crds, namespace, tmp_path, moto, release_finalizers, monkeypatch):
    # Credentials from the standard chain: the controller's environment, which the
    # installer opened to this namespace (chart value ambientAwsNamespaces).
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    c = k.Controller(crds, tmp_path, namespace,
                     extra=["--ambient-aws-namespace", namespace]).start()
    try:
        k.apply(crds, namespace, certificate(moto.url, "Retain", credentials=None),
                bridge([SENSORS]))
        cert = k.wait_ready(crds, "certificates.edgemq.io", "aws-home", namespace,
                            reason="Issued", timeout=120)
        assert FINALIZER not in (cert["metadata"].get("finalizers") or [])
        before = moto.inventory()
        assert before["certificates"] == [(cert["status"]["awsIot"]["certificateId"], "ACTIVE")]
        assert before["things"] == ["home-gw"] and len(before["policies"]) == 1
        crds.kubectl("delete", "certificates.edgemq.io", "aws-home", "-n", namespace)
        gone(crds, namespace)
        assert moto.inventory() == before
    except BaseException:
        print(f"\n--- controller log ---\n{c.log()[-6000:]}")
        raise
    finally:
        c.stop()


def test_a_controller_killed_halfway_through_issuance_leaves_no_orphan(
        crds, namespace, controller, tmp_path, moto, release_finalizers):
    # AttachPolicy (PUT /target-policies/NAME) is held: the thing, the certificate and the
    # policy exist in AWS, the policy is not attached yet.
    gate = Gate(moto, "PUT", "/target-policies/")
    second = None
    try:
        k.apply(crds, namespace, keys_secret(), certificate(gate.url, "Delete"),
                bridge([SENSORS]))
        assert gate.reached.wait(timeout=120), "the controller never got to AttachPolicy"
        controller.stop(signal.SIGKILL)
        halfway = moto.inventory()
        assert len(halfway["certificates"]) == 1, halfway
        made = halfway["certificates"][0][0]
        cert = k.get(crds, "certificates.edgemq.io", "aws-home", namespace)
        assert record(cert)["certificate"]["certificateId"] == made, \
            "the certificate was made in AWS before its record was saved"
        assert k.ready(cert) is None or k.ready(cert)["status"] != "True"

        gate.open()
        second = k.Controller(crds, tmp_path, namespace, name="controller-2").start()
        cert = k.wait_ready(crds, "certificates.edgemq.io", "aws-home", namespace,
                            reason="Issued", timeout=120)
        # The same certificate, finished: nothing made twice, nothing orphaned.
        assert cert["status"]["awsIot"]["certificateId"] == made
        after = moto.inventory()
        assert after["certificates"] == [(made, "ACTIVE")]
        assert after["things"] == ["home-gw"]
        iot = moto.client("iot")
        arn = cert["status"]["awsIot"]["certificateArn"]
        assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] \
            == ["edgemq-home-gw-aws-home"]

        crds.kubectl("delete", "certificates.edgemq.io", "aws-home", "-n", namespace,
                     "--wait=false")
        gone(crds, namespace)
        assert moto.inventory() == empty_inventory()
    except BaseException:
        if second:
            print(f"\n--- second controller log ---\n{second.log()[-6000:]}")
        raise
    finally:
        gate.stop()
        if second:
            second.stop()


def test_an_aws_error_is_in_status_and_deleting_before_any_issuance_completes(
        crds, namespace, controller, moto, release_finalizers):
    k.apply(crds, namespace, keys_secret(),
            certificate(moto.url, "Delete", thingTypeName="missing"))
    cert = k.wait_ready(crds, "certificates.edgemq.io", "aws-home", namespace, status="False",
                        reason="IssueFailed", timeout=120)
    msg = k.ready(cert)["message"]
    assert "CreateThing" in msg and "ResourceNotFoundException" in msg, msg
    assert cert["status"]["failures"] >= 1 and cert["status"]["nextAttempt"]
    assert FINALIZER in cert["metadata"]["finalizers"]
    assert k.get(crds, "secret", "aws-home-tls", namespace) is None
    # Nothing was made, and the finalizer does not hold the Certificate.
    crds.kubectl("delete", "certificates.edgemq.io", "aws-home", "-n", namespace,
                 "--wait=false")
    gone(crds, namespace)
    assert moto.inventory() == empty_inventory()
