"""What an object's writer may reach beyond its namespace, on a real cluster: nothing
the installer did not open (charts/edgemq/README.md, "What objects may reach").

- a fleet parameter `valueFrom.file` naming the controller's token, or a link out of an
  allowed folder: Ready=False, reason FileNotAllowed, nothing sent to the endpoint;
- an `awsIot` Certificate without `credentialsSecretRef` in a namespace the installer
  did not open the controller's AWS identity to: Ready=False, reason
  CredentialsRequired, nothing sent to AWS (the opened case is
  test_aws_iot_k8s.py::test_retain_leaves_everything_in_aws_and_adds_no_finalizer);
- a Broker naming an image the installer did not list: Ready=False, reason
  ImageNotAllowed, no Deployment (a listed image is
  test_controller.py::test_an_image_change_rolls_the_pod_once_and_an_idle_controller_writes_nothing).

The controller runs on this machine (as in the other cluster tests), so the endpoints
it would call are recording listeners on loopback.
"""

from __future__ import annotations

import datetime
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption,
                                                          PrivateFormat)

import edgemq_k8s as k
from helpers_aws import AWS_ENV, REGION

CERTS = "certificates.edgemq.io"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class Listener:
    """A TCP listener on a free loopback port that counts the connections it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def second_listener():
    lst = Listener()
    yield lst
    lst.close()


def claim_pair() -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet-claim")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(Encoding.PEM).decode(),
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode())


def fleet_certificate(name: str, port: int, path: str) -> dict:
    return {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": name},
            "spec": {"secretName": f"{name}-tls", "issuer": {"awsIot": {
                "dataEndpoint": f"127.0.0.1:{port}",
                "fleetProvisioning": {
                    "templateName": "edge-fleet",
                    "claim": {"secretRef": "fleet-claim"},
                    "caSecretRef": {"name": "claim-ca", "key": "ca.crt"},
                    "parameters": [{"name": "SerialNumber", "valueFrom": {"file": path}}]}}}}}


def ready_reason(cluster, kind: str, name: str, namespace: str) -> tuple:
    c = k.ready(k.get(cluster, kind, name, namespace)) or {}
    return c.get("status"), c.get("reason"), c.get("message", "")


# The installer allows one folder of the test's, and lists /var/run/secrets too: it is
# refused all the same.
@pytest.mark.controller_args(lambda _cluster, tmp: [
    "--fleet-file-root", str(tmp / "allowed"), "--fleet-file-root", "/var/run/secrets"])
def test_fleet_parameter_files_outside_the_allowed_folders_are_never_read_or_sent(
        crds, namespace, controller, tmp_path, listener, second_listener):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "serial-number").write_text("SN-1001\n")
    private = tmp_path / "private"
    private.write_text("a secret of the controller's machine\n")
    (allowed / "link").symlink_to(private)
    crt, key = claim_pair()
    k.apply(crds, namespace,
            k.secret("fleet-claim", "kubernetes.io/tls", **{"tls.crt": crt, "tls.key": key}),
            k.secret("claim-ca", **{"ca.crt": crt}),
            fleet_certificate("token", listener.port, TOKEN),
            fleet_certificate("link", listener.port, str(allowed / "link")),
            # An allowed file is read and sent: the endpoint sees the attempt.
            fleet_certificate("serial", second_listener.port, str(allowed / "serial-number")))

    token = k.wait_ready(crds, CERTS, "token", namespace, status="False",
                         reason="FileNotAllowed", timeout=60)
    msg = k.ready(token)["message"]
    assert msg.startswith(f"parameter SerialNumber: {TOKEN}: files under"), msg
    assert "never read on a cluster" in msg and "nothing was sent" in msg, msg
    link = k.wait_ready(crds, CERTS, "link", namespace, status="False",
                        reason="FileNotAllowed", timeout=60)
    msg = k.ready(link)["message"]
    assert f"resolves to {private.resolve()}, outside the folders" in msg, msg
    assert "fleetFileRoots" in msg, msg

    crds.wait_for(lambda: second_listener.connections >= 1, 60,
                  "the Certificate with an allowed file to reach its endpoint")
    assert ready_reason(crds, CERTS, "serial", namespace)[1] == "Provisioning"
    assert listener.connections == 0, "a refused Certificate reached its endpoint"
    for name in ("token", "link", "serial"):
        assert k.get(crds, "secret", f"{name}-tls", namespace) is None


def test_an_aws_iot_certificate_without_credentials_is_refused_where_the_installer_did_not_allow(
        crds, namespace, tmp_path, monkeypatch, listener):
    # The controller has AWS credentials of its own, opened to another namespace only.
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    c = k.Controller(crds, tmp_path, namespace,
                     extra=["--ambient-aws-namespace", "some-other-namespace"]).start()
    try:
        k.apply(crds, namespace, {
            "apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "aws-home"},
            "spec": {"secretName": "aws-home-tls", "deletionPolicy": "Delete",
                     "issuer": {"awsIot": {
                         "region": REGION, "thingName": "home-gw",
                         "endpointUrl": f"http://127.0.0.1:{listener.port}",
                         "importFrom": {"secretId": "someone-elses"}}}}})
        cert = k.wait_ready(crds, CERTS, "aws-home", namespace, status="False",
                            reason="CredentialsRequired", timeout=60)
        msg = k.ready(cert)["message"]
        assert "AWS credentials are required" in msg, msg
        assert "spec.issuer.awsIot.credentialsSecretRef" in msg, msg
        assert f"namespace {namespace}" in msg and "ambientAwsNamespaces" in msg, msg
        assert k.get(crds, "secret", "aws-home-tls", namespace) is None
        # Deleting it needs no AWS call either: nothing was ever made.
        crds.kubectl("delete", CERTS, "aws-home", "-n", namespace, "--wait=false")
        crds.wait_for(lambda: k.get(crds, CERTS, "aws-home", namespace) is None, 60,
                      "the refused Certificate to go")
        assert listener.connections == 0, "the controller called AWS with its own identity"
    except BaseException:
        print(f"\n--- controller log ---\n{c.log()[-6000:]}")
        raise
    finally:
        c.stop()
        crds.kubectl("patch", CERTS, "aws-home", "-n", namespace, "--type=merge",
                     "-p", '{"metadata":{"finalizers":null}}', check=False)


def test_a_broker_naming_an_image_the_installer_did_not_list_gets_no_pod(
        crds, namespace, controller):
    k.apply(crds, namespace, k.broker("home", [{"name": "lan", "port": 1883}],
                                      pod={"image": "busybox:latest"}))
    b = k.wait_ready(crds, "broker", "home", namespace, status="False",
                     reason="ImageNotAllowed", timeout=60)
    msg = k.ready(b)["message"]
    assert msg.startswith("spec.pod.image busybox:latest is not allowed"), msg
    assert f"controller's image ({crds.image})" in msg and "allowedBrokerImages" in msg, msg
    for kind in ("deployment", "role", "rolebinding", "serviceaccount", "service"):
        assert k.get(crds, kind, "edgemq-home", namespace) is None, kind
