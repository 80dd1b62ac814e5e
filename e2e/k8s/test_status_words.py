"""One status model, two sinks: the same folder with mistakes gives the same Ready
status and reason words in `edgemq status` (standalone) and in each object's status on
a cluster (`kubectl get`), also when a private CA breaks under a Certificate that
still serves its last pair.

The controller runs on this machine for the test's namespace; no Broker here is valid,
so no broker pod (and no image) is involved: every word compared is the controller's.
"""

from __future__ import annotations

import json

import edgemq_k8s as k
from edgemq_k8s import support
from helpers_certs import block, openssl_ca

HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRig"
        "ZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==")

MISTAKES = f"""\
apiVersion: edgemq.io/v1alpha1
kind: Broker
metadata: {{name: broken}}
spec:
  listeners:
    - {{name: lan, port: 18830}}
    - {{name: tls, port: 18831, tls: {{certificateRef: missing-tls}}}}
---
apiVersion: edgemq.io/v1alpha1
kind: MqttUser
metadata: {{name: alice}}
spec: {{brokerRef: broken, passwordHash: "{HASH}"}}
---
apiVersion: edgemq.io/v1alpha1
kind: MqttUser
metadata: {{name: bob}}
spec: {{brokerRef: nowhere, passwordHash: "{HASH}"}}
---
apiVersion: edgemq.io/v1alpha1
kind: Bridge
metadata: {{name: uplink}}
spec:
  brokerRef: nowhere
  remote: {{address: "127.0.0.1:1", clientId: uplink}}
  topics: [{{pattern: "#", direction: out}}]
---
apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {{name: self-tls}}
spec: {{dnsNames: [localhost], issuer: {{selfSigned: {{}}}}}}
---
apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {{name: junk-ca-tls}}
spec: {{dnsNames: [localhost], issuer: {{ca: {{secretRef: junk-ca}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: junk-ca}}
type: kubernetes.io/tls
stringData: {{tls.crt: "not a certificate", tls.key: "not a key"}}
---
apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {{name: lan-tls}}
spec: {{dnsNames: [localhost], issuer: {{ca: {{secretRef: lan-ca}}}}}}
"""


def ca_secret(crt: str, key: str) -> str:
    return ("apiVersion: v1\nkind: Secret\nmetadata: {name: lan-ca}\n"
            "type: kubernetes.io/tls\nstringData:\n"
            f"  tls.crt: |\n{block(crt)}\n  tls.key: |\n{block(key)}\n")


# What each object says, in both modes (READY, REASON).
EXPECTED = {
    ("Broker", "broken"): ("False", "InvalidSpec"),
    ("MqttUser", "alice"): ("False", "InvalidSpec"),
    ("MqttUser", "bob"): ("False", "InvalidSpec"),
    ("Bridge", "uplink"): ("False", "InvalidSpec"),
    ("Certificate", "self-tls"): ("True", "Issued"),
    ("Certificate", "junk-ca-tls"): ("False", "IssueFailed"),
    ("Certificate", "lan-tls"): ("True", "Issued"),
}


def standalone_words(e: support.Edgemq) -> dict:
    """(kind, name) -> (READY, REASON) from the `edgemq status` table."""
    r = e.cli("status", "--state", str(e.state_dir))
    # 3: some object is not Ready (as here); anything else is a failure of the command.
    assert r.returncode == 3, r.stdout + r.stderr
    words, table = {}, False
    for line in r.stdout.splitlines():
        cols = line.split()
        if cols[:1] == ["KIND"]:
            table = True
            continue
        if table and len(cols) >= 5:
            words[(cols[0], cols[2])] = (cols[3], cols[4])
    return words


def cluster_words(cluster, namespace: str) -> dict:
    """(kind, name) -> (Ready status, reason) of every edgemq object, from `kubectl get`."""
    out = cluster.kubectl("get", "brokers.edgemq.io,mqttusers.edgemq.io,bridges.edgemq.io,"
                          "certificates.edgemq.io", "-n", namespace, "-o", "json").stdout
    words = {}
    for o in json.loads(out)["items"]:
        c = k.ready(o)
        if c:
            words[(o["kind"], o["metadata"]["name"])] = (c["status"], c["reason"])
    return words


def wait_words(read, expected: dict, what: str) -> dict:
    last = {}

    def check():
        last.update(read())
        return all(last.get(key) == want for key, want in expected.items())
    try:
        support.poll(check, 90, 0.5, what)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {expected}, got {last}") from None
    return dict(last)


def test_a_folder_with_mistakes_says_the_same_words_standalone_and_on_a_cluster(
        cluster, controller, namespace, tmp_path):
    crt, key = openssl_ca(tmp_path / "pki", cn="LAN CA", days=400)
    good_ca = ca_secret(crt.read_text(), key.read_text())
    folder = MISTAKES + "---\n" + good_ca

    e = support.Edgemq(tmp_path, "standalone")
    e.write("all.yaml", folder)
    # Nothing in the folder can run, so it never becomes ready: wait on its status.
    e.start(wait_ready=False)
    try:
        alone = wait_words(lambda: standalone_words(e), EXPECTED, "edgemq status words")
        cluster.apply_yaml(folder, namespace)
        on_cluster = wait_words(lambda: cluster_words(cluster, namespace), EXPECTED,
                                "kubectl get words")
        assert {key: alone[key] for key in EXPECTED} == {key: on_cluster[key] for key in EXPECTED}

        # The CA breaks: the pair issued before keeps serving in both modes, and both say
        # a new one could not be issued (Ready stays True), with the attempts counted.
        broken = MISTAKES + "---\n" + ca_secret("not a certificate", "not a key")
        e.write("all.yaml", broken)
        cluster.apply_yaml(broken, namespace)
        failing = dict(EXPECTED)
        failing[("Certificate", "lan-tls")] = ("True", "ReissueFailing")
        alone = wait_words(lambda: standalone_words(e), failing, "edgemq status words")
        on_cluster = wait_words(lambda: cluster_words(cluster, namespace), failing,
                                "kubectl get words")
        assert {key: alone[key] for key in failing} == {key: on_cluster[key] for key in failing}
        st = k.get(cluster, "certificates.edgemq.io", "lan-tls", namespace)["status"]
        assert st["failures"] >= 1 and "CA certificate in Secret lan-ca" in st["lastFailure"], st
        local = next(r for r in e.status()["resources"]
                     if r["kind"] == "Certificate" and r["name"] == "lan-tls")
        assert local["details"]["failures"] >= 1, local
        assert "CA certificate in Secret lan-ca" in local["details"]["lastFailure"], local
    finally:
        e.stop()
