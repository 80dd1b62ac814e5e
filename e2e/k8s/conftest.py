"""Pytest fixtures for edgemq's Kubernetes tests.

Fixtures:
    cluster     session: a Cluster. With KUBECONFIG set, that cluster as-is and the
                image named by EDGEMQ_IMAGE (required then). Otherwise the project's
                own single-node cluster: `scripts/cluster.sh start` (it builds
                Kubernetes when not cached), the image built from the edgemq binary
                ($EDGEMQ_BIN or target/debug/edgemq) and imported as edgemq:dev (or the
                tag in $EDGEMQ_IMAGE_TAG, so two checkouts can share the cluster), and
                `scripts/cluster.sh stop` at the end of the session (also on failure;
                a cluster that was already running before the session is left running).
    namespace   function: a fresh namespace name, deleted after the test.

Cluster:
    .kubeconfig, .image, .pull_policy (Never on the own cluster, whose images exist only
    in its containerd; IfNotPresent or $EDGEMQ_IMAGE_PULL_POLICY with KUBECONFIG)
    .kubectl(*args, input=None, check=True) -> subprocess.CompletedProcess
    .apply_yaml(text, namespace) -> CompletedProcess
    .wait_for(predicate, timeout, what) -> the predicate's truthy value; a predicate
        raises cluster.GiveUp(...) to fail at once

The cluster's pods are reached only through NodePorts on 127.0.0.1. A missing
prerequisite (no root, no binary) fails in CI (CI=true) and skips locally.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR.parent))

import support  # noqa: E402
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
DEFAULT_IMAGE = "edgemq:dev"


def _missing(message: str):
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs scripts/cluster.sh; its progress goes to stderr (shown by pytest -s)."""
    r = subprocess.run(["bash", str(CLUSTER_SH), *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    sys.stderr.write(r.stderr)
    return r


def _exports(text: str) -> dict:
    """`export NAME=value` lines of cluster.sh's output as a dict."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            out[name] = value
    return out


class Cluster:
    GiveUp = support.GiveUp

    def __init__(self, kubeconfig: str, image: str, kubectl_bin: str, pull_policy: str):
        self.kubeconfig = kubeconfig
        self.image = image
        self.pull_policy = pull_policy
        self.kubectl_bin = kubectl_bin

    def kubectl(self, *args: str, input: Optional[str] = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}")
        return r

    def apply_yaml(self, text: str, namespace: str) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=text)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.5) -> Any:
        """support.poll: predicate until truthy or the deadline. Exceptions count as "not
        yet" (the last one is shown on timeout), except GiveUp, which ends the wait."""
        return support.poll(predicate, timeout, interval, f"waiting for {what}")


@pytest.fixture(scope="session")
def cluster():
    if os.environ.get("KUBECONFIG"):
        image = os.environ.get("EDGEMQ_IMAGE")
        if not image:
            pytest.fail("KUBECONFIG is set, so the tests use that cluster: set EDGEMQ_IMAGE "
                        "to the edgemq image its nodes can run", pytrace=False)
        kubectl = os.environ.get("EDGEMQ_KUBECTL") or shutil.which("kubectl")
        if not kubectl:
            _missing("kubectl not found: install package kubernetes-client or set EDGEMQ_KUBECTL")
        yield Cluster(os.environ["KUBECONFIG"], image, kubectl,
                      os.environ.get("EDGEMQ_IMAGE_PULL_POLICY", "IfNotPresent"))
        return

    if os.geteuid() != 0:
        _missing("the test cluster needs root (network links, iptables, containers): run as "
                 "root, or set KUBECONFIG and EDGEMQ_IMAGE to use another cluster")
    binary = os.environ.get("EDGEMQ_BIN") or str(REPO / "target" / "debug" / "edgemq")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"edgemq binary not found at {binary}: run `cargo build --workspace --bins` "
                    "or set EDGEMQ_BIN", pytrace=False)

    already_running = _script("status", timeout=60).returncode == 0
    try:
        started = _script("start", timeout=1800)  # a cold start builds Kubernetes (~6 min)
        if started.returncode != 0:
            pytest.fail(f"scripts/cluster.sh start failed:\n{started.stderr[-3000:]}",
                        pytrace=False)
        env = _exports(_script("env", timeout=60).stdout)
        tag = os.environ.get("EDGEMQ_IMAGE_TAG", DEFAULT_IMAGE)
        image = _script("image", binary, tag, timeout=600)
        if image.returncode != 0:
            pytest.fail(f"scripts/cluster.sh image failed:\n{image.stderr[-3000:]}", pytrace=False)
        # the image exists only in the node's containerd: never pull
        yield Cluster(env["KUBECONFIG"], tag, env.get("EDGEMQ_KUBECTL", "kubectl"),
                      "Never")
    finally:
        if not already_running:
            _script("stop", timeout=300)


@pytest.fixture
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    # the namespace's default ServiceAccount comes from the controller-manager
    cluster.wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                                             check=False).returncode == 0,
                     60, f"the default ServiceAccount in namespace {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def crds(cluster):
    """The cluster, with edgemq's CRDs installed."""
    import edgemq_k8s as k
    k.install_crds(cluster)
    return cluster


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "controller_args(f): f(cluster, tmp_path) gives extra flags of the "
        "`controller` fixture (what the installer allows: --fleet-file-root, "
        "--ambient-aws-namespace, --allowed-broker-image)")


@pytest.fixture
def controller(crds, namespace, tmp_path, request):
    """`edgemq controller` on this machine, watching only the test's namespace; its
    log (and the broker pod's, for a Broker named `home`) is printed when the test fails.
    A `controller_args` marker adds flags."""
    import edgemq_k8s as k
    marker = request.node.get_closest_marker("controller_args")
    extra = marker.args[0](crds, tmp_path) if marker else []
    c = k.Controller(crds, tmp_path, namespace, extra=extra).start()
    yield c
    c.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"\n--- controller log ---\n{c.log()[-6000:]}")
        print(k.broker_logs(crds, "home", namespace))

