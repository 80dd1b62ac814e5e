"""The Helm chart, from `helm lint` to `helm uninstall` on a real cluster.

Without a cluster: the chart's crds/ are the repository's crds/, `helm lint --strict`
is clean, the rendered objects pass the Kubernetes schemas (strict), values.yaml
passes its own schema and every value is documented, and the schema refuses wrong
values with a message naming them.

On the cluster (the `cluster` fixture), in order, one release:
    install --wait → controller Ready, non-root, read-only root filesystem
    examples/kubernetes (NodePort variant) → MQTT on 127.0.0.1:<nodePort>, plain and TLS
    upgrade touching no pod template → no pod replaced
    upgrade to a new image tag → controller and broker pod rolled once each
    delete the edgemq objects, uninstall → nothing left but CRDs and the data PVC;
    the namespaces delete.

Helm comes from scripts/install-helm.sh (the PyPI wheel); the schema checks need
kubernetes-validate, check-jsonschema and yamllint (e2e/requirements.txt). A missing
one fails in CI (CI=true) and skips locally.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
CHART = REPO / "charts" / "edgemq"
EXAMPLE = REPO / "examples" / "kubernetes"
sys.path.insert(0, str(K8S_DIR.parent))

import support  # noqa: E402
from helpers_certs import openssl_ca, openssl_server_cert  # noqa: E402

API = "edgemq.io/v1alpha1"
EDGEMQ_KINDS = "brokers.edgemq.io,mqttusers.edgemq.io,bridges.edgemq.io,certificates.edgemq.io"
# Kubernetes versions whose schemas the rendered chart must pass: k3s' oldest
# supported line and a current one (the 1.20 test cluster checks the rest for real).
SCHEMA_VERSIONS = ("1.28.0", "1.33.0")


def _missing(message: str):
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    r = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        _missing(f"scripts/install-helm.sh failed (pip needed):\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        _missing(f"{name} not found: pip install {package}")
    return path


def run_helm(helm: str, *args: str, kubeconfig: Optional[str] = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def render(helm: str, *sets: str) -> list:
    args = ["template", "edgemq", str(CHART), "-n", "edgemq"]
    for s in sets:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


# ------------------------------------------------------------------ without a cluster

def test_the_charts_crds_are_the_repositorys_crds():
    repo = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == repo, f"charts/edgemq/crds holds {chart}, crds/ holds {repo}"
    _, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", repo, shallow=False)
    assert not mismatch and not errors, (
        f"charts/edgemq/crds differs from crds/ in {mismatch + errors}: "
        "run `cp crds/*.yaml charts/edgemq/crds/` and commit")


VARIANTS = {
    "default": (),
    "two replicas, listed namespaces, everything on": (
        "replicaCount=2", "watchNamespaces={iot,home}", "metrics.serviceMonitor.enabled=true",
        "metrics.service.type=NodePort", "metrics.service.nodePort=30080",
        "imagePullSecrets[0].name=regcred", "nodeSelector.kubernetes\\.io/arch=arm64",
        "extraVolumes[0].name=serial",
        "extraVolumes[0].hostPath.path=/sys/firmware/devicetree/base/serial-number",
        "extraVolumeMounts[0].name=serial", "extraVolumeMounts[0].mountPath=/host/serial",
        "extraVolumeMounts[0].readOnly=true"),
    "own ServiceAccount and RBAC": ("serviceAccount.create=false", "serviceAccount.name=mine",
                                    "rbac.create=false"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_strict_is_clean(helm, variant):
    args = ["lint", "--strict", str(CHART)]
    for s in VARIANTS[variant]:
        args += ["--set", s]
    r = run_helm(helm, *args, check=False)
    assert r.returncode == 0 and "[WARNING]" not in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_rendered_objects_pass_the_kubernetes_schemas_strictly(helm, tmp_path, variant, version):
    validate = tool("kubernetes-validate", "kubernetes-validate")
    docs = render(helm, *VARIANTS[variant])
    # The ServiceMonitor is the Prometheus Operator's kind, not in Kubernetes' schemas.
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        assert m["spec"]["endpoints"][0]["port"] == "http"
    core = [d for d in docs if d["kind"] != "ServiceMonitor"]
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(core))
    r = subprocess.run([validate, "--strict", "-k", version, str(f)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(core), r.stdout


VOLUME_READ = [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]}]


def test_rbac_is_namespaced_for_listed_namespaces_and_cluster_wide_only_for_all(helm):
    listed = render(helm, "watchNamespaces={iot,home}")
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in listed]
    # Cluster-wide: only `get` on PersistentVolumes (HandOver or Recreate), and not
    # even that with rbac.readVolumes=false.
    cluster_roles = [d for d in listed if d["kind"] == "ClusterRole"]
    assert [r["rules"] for r in cluster_roles] == [VOLUME_READ], cluster_roles
    assert [k for k, _ in kinds if k.startswith("Cluster")] == ["ClusterRole", "ClusterRoleBinding"]
    closed = render(helm, "watchNamespaces={iot,home}", "rbac.readVolumes=false")
    assert not any(d["kind"].startswith("Cluster") for d in closed)
    assert ("Role", "iot") in kinds and ("RoleBinding", "home") in kinds, kinds
    everything = render(helm)
    cluster_role = next(d for d in everything if d["kind"] == "ClusterRole"
                        and d["rules"] != VOLUME_READ)
    verbs = {v for r in cluster_role["rules"] for v in r["verbs"]}
    assert "*" not in verbs, cluster_role["rules"]
    # delete only for the ACME HTTP-01 solver objects
    deletable = {res for r in cluster_role["rules"] if "delete" in r["verbs"] for res in r["resources"]}
    assert deletable == {"pods", "services", "ingresses"}, cluster_role["rules"]
    assert all("*" not in r["resources"] for r in cluster_role["rules"]), cluster_role["rules"]


def test_what_objects_may_reach_is_closed_by_default_and_opened_by_values(helm):
    def env(*sets):
        dep = next(d for d in render(helm, *sets) if d["kind"] == "Deployment")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in c["env"]}
    closed = env()
    for name in ("EDGEMQ_FLEET_FILE_ROOTS", "EDGEMQ_AMBIENT_AWS_NAMESPACES",
                 "EDGEMQ_ALLOWED_BROKER_IMAGES"):
        # Unset, not empty: the controller then opens nothing (an empty path list
        # would not even parse).
        assert name not in closed, (name, closed[name])
    opened = env("fleetFileRoots={/host,/etc/edgemq}", "ambientAwsNamespaces={iot}",
                 "allowedBrokerImages={registry.local/edgemq:*}")
    assert opened["EDGEMQ_FLEET_FILE_ROOTS"] == "/host,/etc/edgemq"
    assert opened["EDGEMQ_AMBIENT_AWS_NAMESPACES"] == "iot"
    assert opened["EDGEMQ_ALLOWED_BROKER_IMAGES"] == "registry.local/edgemq:*"


def test_values_pass_their_own_schema_and_the_chart_files_lint():
    check = tool("check-jsonschema", "check-jsonschema")
    lint = tool("yamllint", "yamllint")
    r = subprocess.run([check, "--check-metaschema", str(CHART / "values.schema.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([check, "--schemafile", str(CHART / "values.schema.json"),
                        str(CHART / "values.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    config = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
    r = subprocess.run([lint, "-d", config, str(CHART / "values.yaml"), str(CHART / "Chart.yaml"),
                        *map(str, sorted(EXAMPLE.glob("*.yaml")))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# Values whose content is a Kubernetes structure of its own, documented as a whole.
WHOLE = {"resources"}


def _leaves(values: dict, prefix: str = "") -> list:
    out = []
    for k, v in values.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path not in WHOLE:
            out += _leaves(v, path + ".")
        else:
            out.append(path)
    return out


def _commented_paths(text: str) -> tuple:
    """(every key path of values.yaml, those with a comment line right above)."""
    stack: list = []  # (indent, key)
    every, commented = [], []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        if any(path.startswith(w + ".") for w in WHOLE):
            continue
        every.append(path)
        if i > 0 and lines[i - 1].strip().startswith("#"):
            commented.append(path)
    return every, commented


def test_every_value_is_documented_in_values_yaml_and_the_readme():
    text = (CHART / "values.yaml").read_text()
    leaves = _leaves(yaml.safe_load(text))
    every, commented = _commented_paths(text)
    undocumented = [p for p in leaves if p not in commented]
    assert not undocumented, f"values.yaml: no comment right above {undocumented}"
    assert set(leaves) <= set(every)
    readme = (CHART / "README.md").read_text()
    missing = [p for p in leaves if f"`{p}`" not in readme]
    assert not missing, f"charts/edgemq/README.md does not document {missing}"
    schema = json.loads((CHART / "values.schema.json").read_text())

    def schema_leaves(s: dict, prefix: str = "") -> list:
        out = []
        for k, v in (s.get("properties") or {}).items():
            path = f"{prefix}{k}"
            if k == "global":
                continue
            if v.get("properties") and path not in WHOLE:
                out += schema_leaves(v, path + ".")
            else:
                out.append(path)
        return out
    assert sorted(schema_leaves(schema)) == sorted(leaves), \
        "values.schema.json and values.yaml name different values"


@pytest.mark.parametrize("setting, named", [
    ("replicaCount=-1", "/replicaCount"),
    ("replicaCount=3", "/replicaCount"),
    ("replicaCuont=1", "replicaCuont"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("image.tagg=v1", "tagg"),
    ("logFormat=xml", "/logFormat"),
    ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
    ("fleetFileRoots={relative/dir}", "/fleetFileRoots/0"),
    ("ambientAwsNamespaces={Not_A_Namespace}", "/ambientAwsNamespaces/0"),
    ("metrics.service.nodePort=80", "/metrics/service/nodePort"),
    ("resources.limits.gpu=1", "gpu"),
])
def test_the_schema_refuses_a_wrong_value_and_names_it(helm, setting, named):
    r = run_helm(helm, "template", "edgemq", str(CHART), "--set", setting, check=False)
    assert r.returncode != 0, f"--set {setting} was accepted"
    assert "schema" in r.stderr and named in r.stderr, r.stderr


# ------------------------------------------------------------------------ on a cluster

def split_image(image: str) -> tuple:
    """("repo", "tag") of repo[:tag] (a registry port is part of the repo)."""
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repo, tag


class Release:
    """The state the cluster tests of this module share, in order."""

    def __init__(self, cluster, helm: str):
        self.cluster = cluster
        self.helm = helm
        suffix = uuid.uuid4().hex[:8]
        self.ns = f"edgemq-{suffix}"       # the release's namespace
        self.iot = f"iot-{suffix}"         # the example's namespace
        self.name = "edgemq"
        self.repo, self.tag = split_image(cluster.image)
        self.pv: Optional[str] = None
        self.pv_dir: Optional[str] = None
        self.tmp = Path(tempfile.mkdtemp(prefix="edgemq-helm-"))

    def helm_run(self, *args, check=True, timeout=300):
        return run_helm(self.helm, *args, kubeconfig=self.cluster.kubeconfig, check=check,
                        timeout=timeout)

    def kubectl(self, *args, **kw):
        return self.cluster.kubectl(*args, **kw)

    def get(self, kind, name, ns) -> Optional[dict]:
        r = self.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def items(self, kind, ns, selector=None) -> list:
        args = ["get", kind, "-n", ns, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args).stdout)["items"]

    def live_pods(self, ns, selector) -> list:
        return [p for p in self.items("pods", ns, selector)
                if not p["metadata"].get("deletionTimestamp")]

    def diagnose(self) -> str:
        """What a failed wait shows: the edgemq objects' status, the pods, the log."""
        out = [self.kubectl("get", f"{EDGEMQ_KINDS},pods,pvc,events", "-n", self.iot, "-o", "wide",
                            check=False).stdout]
        for kind in ("brokers.edgemq.io", "certificates.edgemq.io", "bridges.edgemq.io"):
            for o in json.loads(self.kubectl("get", kind, "-n", self.iot, "-o", "json",
                                             check=False).stdout or '{"items": []}')["items"]:
                out.append(f"{kind}/{o['metadata']['name']}: {json.dumps(o.get('status'))}")
        for p in self.controller_pods() + self.broker_pods():
            out.append(f"--- log of {p['metadata']['name']}")
            out.append("\n".join(self.kubectl("logs", p["metadata"]["name"], "-n",
                                               p["metadata"]["namespace"], "--tail", "40",
                                               check=False).stdout.splitlines()[-40:]))
        return "\n".join(out)

    def wait_for(self, predicate, timeout: float, what: str):
        try:
            return self.cluster.wait_for(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose()}") from None

    def controller_pods(self) -> list:
        return self.live_pods(self.ns, f"app.kubernetes.io/instance={self.name},"
                                       "app.kubernetes.io/component=controller")

    def broker_pods(self) -> list:
        return self.live_pods(self.iot, "edgemq.io/broker=home")

    def server_minor(self) -> int:
        v = json.loads(self.kubectl("version", "-o", "json").stdout)["serverVersion"]
        return int(re.match(r"\d+", v["minor"]).group(0))

    def install_args(self) -> list:
        # Before 1.25 the apiserver's server-side apply refuses the CRDs'
        # x-kubernetes-validations ("field not declared in schema"); Helm 4 applies
        # server-side by default, so it is told not to (as the chart README says).
        legacy = ["--server-side=false"] if self.server_minor() < 25 else []
        return [*legacy, "--set", f"image.repository={self.repo}", "--set-string", f"image.tag={self.tag}",
                "--set", f"image.pullPolicy={self.cluster.pull_policy}",
                # only the example's namespace: other tests' namespaces stay theirs
                "--set", f"watchNamespaces={{{self.iot}}}",
                "--set", "logLevel=info\\,edgemq=debug"]


@pytest.fixture(scope="module")
def release(cluster, helm):
    rel = Release(cluster, helm)
    cluster.kubectl("create", "namespace", rel.iot)
    try:
        yield rel
    finally:
        # Whatever a failed step left: release, objects, namespaces, the volume.
        rel.helm_run("uninstall", rel.name, "-n", rel.ns, "--ignore-not-found", check=False)
        cluster.kubectl("delete", EDGEMQ_KINDS, "--all", "-n", rel.iot, "--wait=false",
                        check=False)
        cluster.kubectl("delete", "namespace", rel.ns, rel.iot, "--wait=false", check=False)
        if rel.pv:
            cluster.kubectl("delete", "pv", rel.pv, "--wait=false", check=False)
        if rel.pv_dir:
            shutil.rmtree(rel.pv_dir, ignore_errors=True)
        shutil.rmtree(rel.tmp, ignore_errors=True)


def _condition(obj: Optional[dict], type_: str = "Ready") -> Optional[dict]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def _revision(deployment: dict) -> int:
    return int(deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"])


def _pod_ready(pod: dict) -> bool:
    return (_condition(pod) or {}).get("status") == "True"


def _process_of(pod_name: str) -> Optional[int]:
    """The pid of the container process started for pod_name on this machine (the
    project's own cluster runs its node here), found by its EDGEMQ_IDENTITY."""
    want = f"EDGEMQ_IDENTITY={pod_name}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if want in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            continue
    return None


def test_install_waits_for_a_ready_controller_running_non_root_on_a_read_only_root(release):
    rel = release
    rel.helm_run("install", rel.name, str(CHART), "-n", rel.ns, "--create-namespace",
                 "--wait", "--timeout", "180s", *rel.install_args())
    # --wait returned: the controller must be Ready now, not eventually.
    dep = rel.get("deployment", rel.name, rel.ns)
    assert dep["status"].get("readyReplicas") == 1, dep["status"]
    pods = rel.controller_pods()
    assert len(pods) == 1 and _pod_ready(pods[0]), [p["status"] for p in pods]
    pod = pods[0]

    # What the kubelet ran: the pod as admitted, and the container running under it.
    spec = pod["spec"]
    c = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["status"]["containerStatuses"][0]["state"].get("running"), pod["status"]

    # The process itself, when the node is this machine: uid, no capabilities, and a
    # root filesystem mounted read-only.
    pid = _process_of(pod["metadata"]["name"])
    if pid is None:
        if not os.environ.get("KUBECONFIG"):
            pytest.fail(f"no process of pod {pod['metadata']['name']} on this machine, "
                        "although the cluster is the project's own")
        return
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert set(uids) == {"65532"}, f"controller runs as uids {uids}"
    cap_eff = re.search(r"^CapEff:\s+(\w+)$", status, re.M).group(1)
    assert int(cap_eff, 16) == 0, f"effective capabilities {cap_eff}"
    root = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"]
    assert root and "ro" in root[-1][5].split(","), f"root mount: {root}"


def _has_default_storage_class(rel) -> bool:
    for sc in json.loads(rel.kubectl("get", "storageclass", "-o", "json").stdout)["items"]:
        ann = sc["metadata"].get("annotations") or {}
        if ann.get("storageclass.kubernetes.io/is-default-class") == "true":
            return True
    return False


def _example_for_the_test(rel) -> str:
    """examples/kubernetes as the test runs it: the Broker's Service as NodePort (the
    test reaches it on 127.0.0.1; a LoadBalancer needs k3s' ServiceLB), and the AWS IoT
    bridge pointed at a closed port on the pod's own loopback (the test leaves the
    machine for nothing)."""
    docs = []
    for f in sorted(EXAMPLE.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d:
                continue
            if d["kind"] == "Broker":
                assert d["spec"]["service"]["type"] == "LoadBalancer"
                d["spec"]["service"]["type"] = "NodePort"
            if d["kind"] == "Bridge":
                assert d["spec"]["remote"]["tls"]["clientSecretRef"] == "aws-iot-home"
                d["spec"]["remote"]["address"] = "127.0.0.1:1"
            docs.append(d)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["Bridge", "Broker", "Certificate", "MqttUser", "Secret"], kinds
    return yaml.safe_dump_all(docs)


def _prepare_volume(rel) -> None:
    """The example's Broker keeps data on a PersistentVolumeClaim. A cluster without a
    default StorageClass (the test cluster) gets a hostPath volume bound to it."""
    if _has_default_storage_class(rel):
        return
    rel.pv_dir = tempfile.mkdtemp(prefix="edgemq-pv-")
    os.chmod(rel.pv_dir, 0o777)  # the broker runs as uid 65532
    rel.pv = f"edgemq-test-{rel.iot}"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": rel.pv},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": rel.pv_dir, "type": "Directory"},
                   "claimRef": {"namespace": rel.iot, "name": "edgemq-home-data"}}}
    rel.kubectl("apply", "-f", "-", input=json.dumps(pv))


def _secrets_made_elsewhere(rel) -> Path:
    """The two Secrets the README has the user make: the CA (home-ca) and the AWS IoT
    client key pair (aws-iot-home; here one signed by the same test CA)."""
    crt, key = openssl_ca(rel.tmp, "home-ca", "edgemq example CA")
    rel.kubectl("create", "secret", "tls", "home-ca", "-n", rel.iot, "--cert", str(crt),
                "--key", str(key))
    leaf_crt, leaf_key = openssl_server_cert(rel.tmp, (crt, key), "aws-iot-home")
    rel.kubectl("create", "secret", "tls", "aws-iot-home", "-n", rel.iot, "--cert",
                str(leaf_crt), "--key", str(leaf_key))
    return crt


def _node_port(rel, listener: str) -> int:
    svc = rel.get("service", "edgemq-home", rel.iot)
    for p in svc["spec"]["ports"]:
        if p["name"] == listener:
            return int(p["nodePort"])
    raise AssertionError(f"no port {listener}: {svc['spec']['ports']}")


def _connect_eventually(rel, port: int, timeout: float = 60, **kw):
    return rel.wait_for(lambda: support.connect(port, **kw), timeout,
                                f"an MQTT connection to 127.0.0.1:{port} as {kw.get('username')}")


def _mqtt_round_trip(rel, ca: Path) -> None:
    lan, tls = _node_port(rel, "lan"), _node_port(rel, "tls")
    ha = _connect_eventually(rel, lan, username="homeassistant",
                             password="change-me-homeassistant")
    try:
        ha.subscribe_wait("zigbee2mqtt/#", qos=1)
        # zigbee2mqtt over TLS, checking the CA-issued certificate (IP SAN 127.0.0.1)
        z2m = _connect_eventually(rel, tls, username="zigbee2mqtt",
                                  password="change-me-zigbee2mqtt", tls={"ca_certs": str(ca)})
        try:
            payload = uuid.uuid4().hex.encode()
            z2m.publish_wait("zigbee2mqtt/lamp", payload, qos=1)
            assert ha.get(timeout=10).payload == payload
        finally:
            z2m.disconnect_wait()
    finally:
        ha.disconnect_wait()


def test_the_kubernetes_example_serves_mqtt_through_a_node_port(release):
    rel = release
    assert rel.get("deployment", rel.name, rel.ns), "the release is not installed"
    _prepare_volume(rel)
    ca = _secrets_made_elsewhere(rel)
    rel.kubectl("apply", "-n", rel.iot, "-f", "-", input=_example_for_the_test(rel))

    def broker_ready():
        b = rel.get("brokers.edgemq.io", "home", rel.iot)
        c = _condition(b)
        return c and c["status"] == "True" and b
    rel.wait_for(broker_ready, 240, "Broker home Ready")
    cert = rel.get("certificates.edgemq.io", "home-tls", rel.iot)
    assert (_condition(cert) or {}).get("status") == "True", cert.get("status")
    _mqtt_round_trip(rel, ca)
    rel.ca = ca
    # The bridge's remote is unreachable here: reported, and the broker serves anyway.
    bridge = rel.wait_for(lambda: _condition(rel.get("bridges.edgemq.io", "to-aws", rel.iot))
                          and rel.get("bridges.edgemq.io", "to-aws", rel.iot), 60,
                          "the Bridge's Ready condition")
    assert _condition(bridge)["status"] == "False", bridge.get("status")


def _snapshot(rel) -> dict:
    ctl = rel.get("deployment", rel.name, rel.ns)
    brk = rel.get("deployment", "edgemq-home", rel.iot)
    return {
        "controller_generation": ctl["metadata"]["generation"],
        "controller_revision": _revision(ctl),
        "controller_pods": sorted(p["metadata"]["uid"] for p in rel.controller_pods()),
        "broker_generation": brk["metadata"]["generation"],
        "broker_revision": _revision(brk),
        "broker_pods": sorted(p["metadata"]["uid"] for p in rel.broker_pods()),
    }


def test_an_upgrade_that_touches_no_pod_template_replaces_no_pod(release):
    rel = release
    before = _snapshot(rel)
    assert len(before["broker_pods"]) == 1, "the example's broker is not running"
    rel.helm_run("upgrade", rel.name, str(CHART), "-n", rel.ns, "--wait", "--timeout", "180s",
                 *rel.install_args(),
                 "--set-string", "serviceAccount.annotations.example\\.com/owner=iot-team",
                 "--set-string", "metrics.service.annotations.prometheus\\.io/scrape=true")
    sa = rel.get("serviceaccount", rel.name, rel.ns)
    assert sa["metadata"]["annotations"].get("example.com/owner") == "iot-team"
    # The broker's Status is written after the controller looked at everything again.
    after = _snapshot(rel)
    assert after == before, f"pods or pod templates changed:\nbefore {before}\nafter  {after}"


def test_an_image_upgrade_rolls_the_controller_and_the_broker_pod_once_each(release):
    rel = release
    new_image = os.environ.get("EDGEMQ_IMAGE_UPGRADE")
    if not new_image:
        if os.environ.get("KUBECONFIG"):
            _missing("set EDGEMQ_IMAGE_UPGRADE to a second tag of the edgemq image that the "
                     "cluster's nodes can run (the upgrade target)")
        # The project's own cluster: the same binary under a new tag.
        binary = os.environ.get("EDGEMQ_BIN") or str(REPO / "target" / "debug" / "edgemq")
        new_image = f"{rel.repo}:{rel.tag}-upgrade"
        r = subprocess.run(["bash", str(REPO / "scripts" / "cluster.sh"), "image", binary,
                            new_image], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    new_repo, new_tag = split_image(new_image)
    assert new_repo == rel.repo, f"{new_image}: the upgrade keeps the repository {rel.repo}"
    before = _snapshot(rel)
    rel.tag = new_tag
    rel.helm_run("upgrade", rel.name, str(CHART), "-n", rel.ns, "--wait", "--timeout", "180s",
                 *rel.install_args())

    def controller_rolled():
        pods = rel.controller_pods()
        return (len(pods) == 1 and pods[0]["spec"]["containers"][0]["image"] == new_image
                and _pod_ready(pods[0]) and pods)
    rel.wait_for(controller_rolled, 120, f"one Ready controller pod of {new_image}")

    def broker_rolled():
        pods = rel.broker_pods()
        return (len(pods) == 1 and pods[0]["spec"]["containers"][0]["image"] == new_image
                and _pod_ready(pods[0]) and pods)
    rel.wait_for(broker_rolled, 240, f"one Ready broker pod of {new_image}")
    after = _snapshot(rel)
    assert after["controller_revision"] == before["controller_revision"] + 1, (before, after)
    assert after["broker_revision"] == before["broker_revision"] + 1, (before, after)
    assert not set(after["controller_pods"]) & set(before["controller_pods"])
    assert not set(after["broker_pods"]) & set(before["broker_pods"])
    # Still the same broker for its clients.
    _mqtt_round_trip(rel, rel.ca)


def test_uninstall_after_deleting_the_edgemq_objects_leaves_only_crds_and_the_data_claim(release):
    rel = release
    rel.kubectl("delete", EDGEMQ_KINDS, "--all", "-n", rel.iot, "--wait=true", timeout=120)

    # The garbage collector removes each Broker's objects (owner references).
    def broker_objects_gone():
        left = rel.kubectl("get", "deployments,services,serviceaccounts,roles,rolebindings",
                           "-n", rel.iot, "-l", "edgemq.io/broker=home", "-o", "name").stdout
        return not left.strip()
    rel.wait_for(broker_objects_gone, 120, "the Broker's objects to be collected")

    rel.helm_run("uninstall", rel.name, "-n", rel.ns, "--wait", "--timeout", "120s")

    def left_in(ns: str, kinds: str) -> list:
        names = rel.kubectl("get", kinds, "-n", ns, "-o", "name").stdout.split()
        # A pod already being deleted (an earlier rollout's, say) is on its way out: the
        # kubelet removes its object once it has reclaimed it, which this cluster's
        # kubelet has been seen to take minutes over after the container exited.
        pods = json.loads(rel.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        going = {f"pod/{p['metadata']['name']}" for p in pods
                 if p["metadata"].get("deletionTimestamp")}
        # the namespace's own: default ServiceAccount, its token, the cluster CA ConfigMap
        return [x for x in names if x not in going and
                not re.match(r"^(serviceaccount/default|secret/default-token-|configmap/kube-root-ca.crt)", x)]

    # Pods of the controller may take their grace period to go.
    kinds = "all,serviceaccounts,roles,rolebindings,leases,secrets,configmaps"
    try:
        rel.cluster.wait_for(lambda: not left_in(rel.ns, kinds), 60, "the release's objects to go")
    except AssertionError:
        raise AssertionError(f"left in the release's namespace: {left_in(rel.ns, kinds)}") from None
    cluster_wide = rel.kubectl("get", "clusterroles,clusterrolebindings", "-o", "name").stdout
    assert f"{rel.name}-{rel.ns}" not in cluster_wide

    # In the example's namespace: the retained data claim, and the Secrets the user made
    # (once the broker pod has used its grace period).
    rel.wait_for(lambda: not rel.items("pods", rel.iot), 60, "the broker pod to go")
    left = left_in(rel.iot, "all,serviceaccounts,roles,rolebindings,leases,secrets,pvc")
    expected = {"persistentvolumeclaim/edgemq-home-data", "secret/home-ca", "secret/aws-iot-home",
                "secret/homeassistant-mqtt", "secret/zigbee2mqtt-mqtt"}
    # the issued certificate's Secret is owned by its Certificate (collected) or kept
    # like any user Secret; either way nothing else
    assert set(left) - {"secret/home-tls"} == expected, left
    crds = rel.kubectl("get", "crd", "-o", "name").stdout
    for kind in ("brokers", "mqttusers", "bridges", "certificates"):
        assert f"{kind}.edgemq.io" in crds

    # No finalizer holds either namespace.
    rel.kubectl("delete", "namespace", rel.ns, rel.iot, "--wait=false")
    rel.wait_for(
        lambda: all(rel.kubectl("get", "namespace", n, check=False).returncode != 0
                    for n in (rel.ns, rel.iot)),
        120, f"namespaces {rel.ns} and {rel.iot} to delete")
