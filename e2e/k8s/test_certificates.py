"""Certificates on a real cluster: the controller issues `selfSigned` and `ca`
Certificates into `kubernetes.io/tls` Secrets and renews them when due; the broker pod
reads the Secret through the API and swaps the pair under live listeners.

Short lifetimes make renewal come quickly: `duration: 40s` with `renewBefore: 30s`
renews about ten seconds after each issuance, with nobody editing anything.
"""

from __future__ import annotations

import base64
import queue
import ssl
import subprocess
import threading
import time

import pytest

import edgemq_k8s as k
from edgemq_k8s import support
from helpers_certs import openssl_ca

Z2M_HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRig"
            "ZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==")  # secret1
CLIENTS = 50
RENEWALS = 3


def leaf_der(pem: str) -> bytes:
    """The first certificate of a PEM chain, as DER."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem[:pem.index(end) + len(end)] + "\n")


def serial_of(der: bytes) -> int:
    r = subprocess.run([support.require("openssl"), "x509", "-inform", "DER", "-noout", "-serial"],
                       input=der, capture_output=True, check=True)
    return int(r.stdout.decode().strip().split("=", 1)[1], 16)


class SecretWatch:
    """`kubectl get secret NAME -w`: each version of `tls.crt`, with the monotonic time
    its watch event reached this machine (the moment the Secret rotated, to within the
    watch's latency)."""

    def __init__(self, cluster, name: str, namespace: str):
        self.versions: "queue.Queue[tuple]" = queue.Queue()
        self.proc = subprocess.Popen(
            [cluster.kubectl_bin, "--kubeconfig", cluster.kubeconfig, "get", "secret", name,
             "-n", namespace, "-w", "-o", r"jsonpath={.data.tls\.crt}{'\n'}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)
        support._LIVE.append(self.proc)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        last = None
        for line in self.proc.stdout:
            at = time.monotonic()
            b64 = line.strip().strip("'")
            if not b64 or b64 == last:
                continue  # an unchanged pair (another field moved)
            last = b64
            self.versions.put((at, base64.b64decode(b64).decode()))

    def next(self, timeout: float) -> tuple:
        try:
            return self.versions.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the Secret did not rotate within {timeout}s") from None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _issuer(kind: str) -> dict:
    return {"selfSigned": {}} if kind == "selfSigned" else {"ca": {"secretRef": "lan-ca"}}


@pytest.mark.parametrize("issuer", ["selfSigned", "ca"])
def test_a_short_lived_certificate_is_renewed_under_50_live_tls_clients(
        cluster, controller, namespace, tmp_path, issuer):
    objects = []
    if issuer == "ca":
        ca_crt, ca_key = openssl_ca(tmp_path / "pki", cn="LAN CA")
        objects.append(k.secret("lan-ca", "kubernetes.io/tls",
                                **{"tls.crt": ca_crt.read_text(), "tls.key": ca_key.read_text()}))
    objects += [
        {"apiVersion": k.API, "kind": "Certificate", "metadata": {"name": "site-tls"},
         "spec": {"dnsNames": ["localhost"], "ipAddresses": ["127.0.0.1"],
                  "duration": "40s", "renewBefore": "30s", "issuer": _issuer(issuer)}},
        k.broker("site", [{"name": "tls", "port": 8883, "tls": {"certificateRef": "site-tls"}}]),
        k.user("steady", "site", acl=[{"topic": "#", "access": "readwrite"}], passwordHash=Z2M_HASH),
    ]
    k.apply(cluster, namespace, *objects)
    k.wait_ready(cluster, "certificates.edgemq.io", "site-tls", namespace, reason="Issued")
    secret = k.get(cluster, "secret", "site-tls", namespace)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "Certificate"
    assert set(secret["data"]) >= {"tls.crt", "tls.key", "ca.crt"}
    k.wait_ready(cluster, "broker", "site", namespace, timeout=240)
    port = k.node_port(cluster, "site", namespace, "tls")
    pod_uid = k.pod_of(cluster, "site", namespace)["metadata"]["uid"]

    # 50 clients that verify the pair they are given (against ca.crt as it is now: the
    # self-signed certificate is its own CA) and then stay connected throughout.
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(base64.b64decode(
        k.get(cluster, "secret", "site-tls", namespace)["data"]["ca.crt"]))
    steady = [k.wait_connect(port, username="steady", password="secret1",
                             tls={"ca_certs": str(ca_path)}) for _ in range(CLIENTS)]
    watcher = steady[0]
    watcher.subscribe_wait("t/#", qos=1)

    watch = SecretWatch(cluster, "site-tls", namespace)
    try:
        _, first_pem = watch.next(30)  # the watch begins with the current version
        seen = {serial_of(leaf_der(first_pem))}
        latencies = []
        for n in range(RENEWALS):
            # Nobody edits anything: the controller renews at the renewal time.
            rotated_at, pem = watch.next(90)
            new = leaf_der(pem)
            serial = serial_of(new)
            assert serial not in seen, "a renewal has a new serial"
            seen.add(serial)
            cluster.wait_for(lambda: k.served_der(port) == new, 60,
                             f"renewal {n + 1} served to a new handshake", interval=0.02)
            latencies.append(time.monotonic() - rotated_at)
            cluster.wait_for(
                lambda: int((k.get(cluster, "certificates.edgemq.io", "site-tls", namespace)
                             ["status"].get("serial") or "0"), 16) == serial,
                30, f"the Certificate's status shows serial {serial:x}")
    finally:
        watch.stop()

    cert = k.wait_ready(cluster, "certificates.edgemq.io", "site-tls", namespace, reason="Issued")
    assert cert["status"]["notAfter"] and cert["status"]["renewalTime"]
    disconnected = [c for c in steady if c.disconnected.is_set()]
    assert not disconnected, f"{len(disconnected)} of {CLIENTS} TLS clients were disconnected"
    # Still working, not just still open: a QoS 1 round trip over a pre-renewal session.
    for i, c in enumerate(steady[-3:]):
        c.publish_wait(f"t/{i}", b"after renewals", qos=1)
    got = sorted(watcher.get(timeout=10).topic for _ in range(3))
    assert got == ["t/0", "t/1", "t/2"]
    now = k.pod_of(cluster, "site", namespace)
    assert now["metadata"]["uid"] == pod_uid and k.restarts(now) == 0, "the pod was not replaced"
    ms = [x * 1000 for x in latencies]
    k.record(f"certificate_rotation_to_handshake_{issuer}", {
        "renewals": len(ms),
        "tls_clients_connected": CLIENTS,
        "disconnects": len(disconnected),
        "p50_ms": round(k.percentile(ms, 50)),
        "max_ms": round(max(ms)),
        "all_ms": [round(x) for x in ms],
    })
    for c in steady:
        c.disconnect_wait()
