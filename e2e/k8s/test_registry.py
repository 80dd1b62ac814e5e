"""edgemq as users receive it: image and chart from a registry, on the real cluster.

A real registry (Debian's `docker-registry`) on 127.0.0.1 gets two versions, A and B,
of the image and chart from scripts/release.sh. The cluster's containerd is pointed at
it by a hosts.toml file (plain HTTP, loopback), as a node is pointed at a private
registry or a mirror; nothing is imported into containerd by hand. Then, in order:

    helm install oci://.../charts/edgemq --version A (image.pullPolicy IfNotPresent)
      → the controller runs image A, pulled from the registry by its recorded digest
    a Broker → its pod runs the same image (the controller passes its own); MQTT works;
      the controller's real /metrics (through its NodePort) has every controller
      metric monitoring/ uses, and edgemq_build_info
    helm upgrade --version B --reuse-values → controller and broker pod run image B
      (digest B); MQTT works
    a pod of image B under another registry's name, mirrored onto the test's registry
      → pulled through the mirror entry; it runs `edgemq version`

Only on the project's own cluster (scripts/cluster.sh), whose containerd reads
hosts.toml files under its state dir at each pull.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR))
sys.path.insert(0, str(K8S_DIR.parent))

import edgemq_k8s as k  # noqa: E402
import support  # noqa: E402
from oci_registry import Registry, helm_path  # noqa: E402

MON = REPO / "monitoring"
# A registry name that resolves nowhere (RFC 6761's reserved .example), mirrored onto the
# test's registry: how a site without internet access serves a public image name.
MIRRORED = "registry.example"
# Served by the controller only; the broker's are checked by e2e/test_monitoring.py.
CONTROLLER_ONLY = re.compile(r"^edgemq_(controller_.*|resource_ready)$")


class Setup:
    def __init__(self, cluster, tmp: Path):
        self.cluster = cluster
        self.tmp = tmp
        self.helm = helm_path()
        state = Path(cluster.kubeconfig).parent
        self.certs_d = state / "etc" / "containerd" / "certs.d"
        self.sock = state / "containerd" / "containerd.sock"
        if not self.certs_d.is_dir():
            support._missing(f"{self.certs_d} missing: this test configures the containerd of "
                             "the project's own cluster (scripts/cluster.sh start)")
        self.registry = Registry(tmp / "registry")
        suffix = uuid.uuid4().hex[:8]
        self.ns, self.iot = f"edgemq-reg-{suffix}", f"iot-reg-{suffix}"
        self.name = "edgemq"
        self.versions = (f"0.1.0-a{suffix}", f"0.1.0-b{suffix}")
        self.releases: dict = {}

    def helm_run(self, *args, timeout=300):
        r = subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "KUBECONFIG": self.cluster.kubeconfig})
        assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}\n{self.diagnose()}"
        return r

    def hosts_toml(self, name: str, server: str) -> Path:
        """containerd's file for registry `name`: pull and resolve from the test's
        registry over plain HTTP first, then (a mirror) from `server`."""
        d = self.certs_d / name
        d.mkdir(parents=True, exist_ok=True)
        url = f"http://{self.registry.host}"
        (d / "hosts.toml").write_text(
            f'server = "{server}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n')
        return d

    def chart_args(self, version: str) -> list:
        """The chart of `version` from the registry, as the README's commands name it."""
        minor = int(re.match(r"\d+", json.loads(self.cluster.kubectl("version", "-o", "json").stdout)
                             ["serverVersion"]["minor"]).group(0))
        legacy = ["--server-side=false"] if minor < 25 else []
        return [f"oci://{self.registry.host}/edgemq/charts/edgemq", "--version", version,
                "--plain-http", "-n", self.ns, "--wait", "--timeout", "180s", *legacy]

    def values(self) -> list:
        return ["--set", "image.pullPolicy=IfNotPresent",
                "--set", f"watchNamespaces={{{self.iot}}}",
                "--set", "metrics.service.type=NodePort"]

    def pods(self, ns: str, selector: str) -> list:
        items = json.loads(self.cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o",
                                                "json").stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def controller_pods(self) -> list:
        return self.pods(self.ns, "app.kubernetes.io/component=controller")

    def broker_pods(self) -> list:
        return self.pods(self.iot, "edgemq.io/broker=home")

    def diagnose(self) -> str:
        out = [self.cluster.kubectl("get", "pods,events", "-n", self.ns, "-o", "wide",
                                    check=False).stdout,
               self.cluster.kubectl("get", "brokers.edgemq.io,pods,events", "-n", self.iot,
                                    "-o", "wide", check=False).stdout]
        for p in self.controller_pods() + self.broker_pods():
            out.append(f"--- {p['metadata']['name']}: {json.dumps(p['status'].get('containerStatuses'))}")
        return "\n".join(out)

    def wait_for(self, predicate, timeout, what):
        try:
            return self.cluster.wait_for(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose()}") from None


def _running(pod: dict, image: str, digest: str) -> bool:
    """The pod's container runs `image`, pulled from its registry with `digest`
    (containerd reports a pulled image's id as REPOSITORY@DIGEST)."""
    statuses = pod["status"].get("containerStatuses") or []
    repo = image.rsplit(":", 1)[0]
    return (pod["spec"]["containers"][0]["image"] == image and len(statuses) == 1
            and statuses[0].get("ready") is True
            and statuses[0].get("imageID") == f"{repo}@{digest}")


@pytest.fixture(scope="module")
def setup(cluster, tmp_path_factory):
    s = Setup(cluster, tmp_path_factory.mktemp("registry"))
    s.registry.start()
    hosts = []
    try:
        hosts.append(s.hosts_toml(s.registry.host, f"http://{s.registry.host}"))
        hosts.append(s.hosts_toml(MIRRORED, f"https://{MIRRORED}"))
        for v in s.versions:
            s.releases[v] = s.registry.release(v, s.tmp / f"out-{v}", s.helm)
        cluster.kubectl("create", "namespace", s.iot)
        yield s
    finally:
        subprocess.run([s.helm, "uninstall", s.name, "-n", s.ns, "--ignore-not-found"],
                       capture_output=True, timeout=120,
                       env={**os.environ, "KUBECONFIG": cluster.kubeconfig})
        cluster.kubectl("delete", "brokers.edgemq.io,mqttusers.edgemq.io", "--all", "-n", s.iot,
                        "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", s.ns, s.iot, "--wait=false", check=False)
        s.registry.stop()
        for d in hosts:
            (d / "hosts.toml").unlink(missing_ok=True)
            d.rmdir()
        # The images pulled by this test: removed, so the node's disk does not fill.
        for rec in s.releases.values():
            names = [rec["image"], f"{rec['image'].rsplit(':', 1)[0]}@{rec['imageDigest']}"]
            names += [n.replace(s.registry.host, MIRRORED, 1) for n in names]
            subprocess.run(["ctr", "-a", str(s.sock), "-n", "k8s.io", "images", "rm", *names],
                           capture_output=True, timeout=60)


def _controller_metrics(s: Setup) -> str:
    svc = json.loads(s.cluster.kubectl("get", "service", f"{s.name}-metrics", "-n", s.ns, "-o",
                                       "json").stdout)
    port = svc["spec"]["ports"][0]["nodePort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_helm_install_from_the_registry_runs_the_pushed_image_by_its_digest(setup):
    s = setup
    a = s.releases[s.versions[0]]
    s.helm_run("install", s.name, *s.chart_args(a["version"]), *s.values(), "--create-namespace")
    pods = s.controller_pods()
    assert len(pods) == 1 and _running(pods[0], a["image"], a["imageDigest"]), (
        f"controller pod not running {a['image']}@{a['imageDigest']}:\n{s.diagnose()}")
    assert pods[0]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    # Pulled, not imported: the kubelet's event says so.
    events = s.cluster.kubectl("get", "events", "-n", s.ns, "-o", "json").stdout
    assert f'Successfully pulled image \\"{a["image"]}\\"' in events, events[-2000:]


def _broker_serves(s: Setup) -> None:
    port = k.node_port(s.cluster, "home", s.iot, "lan")
    sub = k.wait_connect(port, timeout=60, username="app", password="app-pass")
    try:
        sub.subscribe_wait("reg/#", qos=1)
        pub = k.wait_connect(port, username="app", password="app-pass")
        try:
            payload = uuid.uuid4().hex.encode()
            pub.publish_wait("reg/t", payload, qos=1)
            assert sub.get(timeout=10).payload == payload
        finally:
            pub.disconnect_wait()
    finally:
        sub.disconnect_wait()


def test_a_broker_runs_the_controllers_image_and_serves_mqtt(setup):
    s = setup
    a = s.releases[s.versions[0]]
    k.apply(s.cluster, s.iot,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.secret("app-pw", password="app-pass"),
            k.user("app", "home", acl=[{"topic": "reg/#", "access": "readwrite"}],
                   passwordSecretRef={"name": "app-pw", "key": "password"}))
    s.wait_for(lambda: (k.ready(k.get(s.cluster, "brokers.edgemq.io", "home", s.iot)) or {})
               .get("status") == "True", 240, "Broker home Ready")
    s.wait_for(lambda: len(s.broker_pods()) == 1
               and _running(s.broker_pods()[0], a["image"], a["imageDigest"]), 60,
               f"the broker pod running {a['image']}")
    _broker_serves(s)


def test_the_controllers_real_metrics_have_what_the_dashboard_and_rules_use(setup):
    """After a Broker reconciled: its Ready series and the per-kind ones are there."""
    s = setup
    text = s.wait_for(lambda: _controller_metrics(s), 60, "the controller's /metrics")
    used = set(re.findall(r"\bedgemq_[a-z0-9_]+", (MON / "rules.yaml").read_text()
                          + (MON / "dashboard.json").read_text()))
    controller_side = {n for n in used if CONTROLLER_ONLY.match(n)}
    assert {"edgemq_resource_ready", "edgemq_controller_reconcile_failures_total"} <= controller_side
    scraped = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    missing = sorted(controller_side - scraped)
    assert not missing, f"used by monitoring/ but not in the controller's /metrics: {missing}"
    build = [line for line in text.splitlines() if line.startswith("edgemq_build_info{")]
    assert len(build) == 1 and 'version="0.1.0"' in build[0], build


def test_helm_upgrade_to_the_second_pushed_version_rolls_both_onto_its_image(setup):
    s = setup
    a, b = (s.releases[v] for v in s.versions)
    assert a["imageDigest"] != b["imageDigest"] and a["chartDigest"] != b["chartDigest"]
    # As the chart README says: the new chart version's appVersion brings its image.
    s.helm_run("upgrade", s.name, *s.chart_args(b["version"]), "--reuse-values")
    s.wait_for(lambda: len(s.controller_pods()) == 1
               and _running(s.controller_pods()[0], b["image"], b["imageDigest"]), 120,
               f"one controller pod running {b['image']}@{b['imageDigest']}")
    s.wait_for(lambda: len(s.broker_pods()) == 1
               and _running(s.broker_pods()[0], b["image"], b["imageDigest"]), 240,
               f"one broker pod running {b['image']}@{b['imageDigest']}")
    release = json.loads(s.helm_run("list", "-n", s.ns, "-o", "json").stdout)
    assert [(r["chart"], r["app_version"]) for r in release] == [
        (f"edgemq-{b['version']}", b["version"])], release
    _broker_serves(s)


def test_a_mirror_entry_serves_the_image_under_another_registrys_name(setup):
    s = setup
    b = s.releases[s.versions[1]]
    image = b["image"].replace(s.registry.host, MIRRORED, 1)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "version"},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "edgemq", "image": image, "args": ["version"],
                                    # Always: resolved by that name, whatever the
                                    # node holds; only the mirror can answer.
                                    "imagePullPolicy": "Always",
                                    "securityContext": {"runAsNonRoot": True,
                                                        "readOnlyRootFilesystem": True,
                                                        "allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    k.apply(s.cluster, s.iot, pod)

    def finished():
        p = k.get(s.cluster, "pod", "version", s.iot)
        if p and p["status"].get("phase") == "Failed":
            raise s.cluster.GiveUp(f"pod failed: {json.dumps(p['status'])}")
        return p if p and p["status"].get("phase") == "Succeeded" else None
    p = s.wait_for(finished, 120, f"a pod of {image} to run `edgemq version`")
    # containerd names the image by the first name it got (B was pulled by its own
    # name before): the digest is what identifies it.
    status = p["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(f"@{b['imageDigest']}"), status
    events = s.cluster.kubectl("get", "events", "-n", s.iot, "--field-selector",
                               "involvedObject.name=version", "-o", "json").stdout
    assert f'Successfully pulled image \\"{image}\\"' in events, events[-2000:]
    out = s.cluster.kubectl("logs", "version", "-n", s.iot).stdout.splitlines()
    assert out[0] == "edgemq 0.1.0" and out[1].startswith("commit: "), out
