"""Helpers of the Kubernetes tests: the controller process, objects as JSON, NodePorts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR.parent))

import support  # noqa: E402

API = "edgemq.io/v1alpha1"


def install_crds(cluster) -> None:
    # `replace`, else `create`: no last-applied annotation (the Broker CRD is large), and
    # it works on 1.20, whose server-side apply refuses the CEL rules' field and whose
    # kubectl does not know it (--validate=false). On 1.25+ `kubectl apply
    # --server-side -f crds/` does the same.
    for f in sorted((REPO / "crds").glob("*.yaml")):
        if cluster.kubectl("replace", "--validate=false", "-f", str(f), check=False).returncode:
            cluster.kubectl("create", "--validate=false", "-f", str(f))
    for kind in ("brokers", "mqttusers", "bridges", "certificates"):
        cluster.wait_for(
            lambda k=kind: "True" in cluster.kubectl(
                "get", "crd", f"{k}.edgemq.io", "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                check=False).stdout,
            60, f"CRD {kind}.edgemq.io established")


class Controller:
    """`edgemq controller` as a process on this machine, talking to the cluster."""

    def __init__(self, cluster, tmp: Path, namespace: str, name: str = "controller",
                 extra: Optional[list] = None):
        self.cluster = cluster
        self.http_port = support.free_port()
        self.log_path = tmp / f"{name}.log"
        self.args = [support.edgemq_bin(), "controller", "--namespace", namespace,
                     "--broker-image", cluster.image,
                     "--broker-image-pull-policy", cluster.pull_policy,
                     "--http", f"127.0.0.1:{self.http_port}", *(extra or [])]
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Controller":
        env = dict(os.environ, KUBECONFIG=self.cluster.kubeconfig,
                   EDGEMQ_LOG="info,kube=warn,edgemq=debug")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        support._LIVE.append(self.proc)
        support.wait_port(self.http_port, timeout=20)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()


def get(cluster, kind: str, name: str, namespace: str) -> Optional[dict]:
    r = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ready(obj: Optional[dict]) -> Optional[dict]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c
    return None


def wait_ready(cluster, kind: str, name: str, namespace: str, status: str = "True",
               reason: Optional[str] = None, timeout: float = 180) -> dict:
    def check():
        obj = get(cluster, kind, name, namespace)
        c = ready(obj)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            return obj
        return None
    return cluster.wait_for(check, timeout, f"{kind}/{name} Ready={status}"
                            + (f" reason {reason}" if reason else ""))


def node_port(cluster, broker: str, namespace: str, listener: str) -> int:
    svc = get(cluster, "service", f"edgemq-{broker}", namespace)
    for p in svc["spec"]["ports"]:
        if p["name"] == listener:
            return int(p["nodePort"])
    raise AssertionError(f"no port {listener} in Service edgemq-{broker}: {svc['spec']['ports']}")


def apply(cluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def broker(name: str, listeners: list, **spec) -> dict:
    return {"apiVersion": API, "kind": "Broker", "metadata": {"name": name},
            "spec": {"listeners": listeners, "service": {"type": "NodePort"}, **spec}}


def user(name: str, broker_name: str, acl: Optional[list] = None, **spec) -> dict:
    s = {"brokerRef": broker_name, **spec}
    if acl is not None:
        s["acl"] = acl
    return {"apiVersion": API, "kind": "MqttUser", "metadata": {"name": name}, "spec": s}


def secret(name: str, type_: Optional[str] = None, **string_data) -> dict:
    s = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
         "stringData": string_data}
    if type_:
        s["type"] = type_
    return s


def pod_of(cluster, broker_name: str, namespace: str) -> dict:
    r = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"edgemq.io/broker={broker_name}",
                        "-o", "json")
    pods = [p for p in json.loads(r.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, f"expected one pod of Broker {broker_name}, found {len(pods)}"
    return pods[0]


def broker_logs(cluster, broker_name: str, namespace: str, tail: int = 60) -> str:
    """The last lines of every pod of a Broker (also one being deleted), for a failure
    report."""
    r = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"edgemq.io/broker={broker_name}",
                        "-o", "json", check=False)
    out = []
    for p in json.loads(r.stdout or '{"items": []}')["items"]:
        name = p["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", namespace, name, f"--tail={tail}", check=False)
        out.append(f"--- pod {name} ---\n{logs.stdout}{logs.stderr}")
    # Readiness changes (a pod dropped from its Service) and the rest of the story.
    events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                             check=False)
    out.append(f"--- events in {namespace} ---\n{events.stdout}{events.stderr}")
    # The node's proxy holds a socket on each node port: a connection queued there
    # (Recv-Q above 0) reached no pod, the port's forwarding rule did not catch it.
    svc = cluster.kubectl("get", "service", "-n", namespace, f"edgemq-{broker_name}", "-o", "json",
                          check=False)
    ports = [p.get("nodePort") for p in json.loads(svc.stdout or "{}").get("spec", {}).get("ports", [])
             if p.get("nodePort")]
    if ports:
        query = " or ".join(f"sport = :{p}" for p in ports)
        ss = subprocess.run(["ss", "-ltnp", query], capture_output=True, text=True)
        out.append(f"--- node port sockets {ports} ---\n{ss.stdout}{ss.stderr}")
    return "\n".join(out)


def restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))


def wait_connect(port: int, timeout: float = 30, **kw):
    """A connected client once the broker accepts the credentials (they may still be on
    their way to the pod)."""
    return support.poll(lambda: support.connect(port, **kw), timeout, 0.1,
                        f"connect to 127.0.0.1:{port} as {kw.get('username')}")


def namespaced_copy(src: Path, dst: Path, namespace: str) -> Path:
    """The manifests of `src` with `metadata.namespace` set, as `kubectl apply -n` sees them."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.yaml")):
        text = f.read_text()
        (dst / f.name).write_text(text.replace("metadata:\n", f"metadata:\n  namespace: {namespace}\n"))
    return dst


def percentile(values: list, p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def record(name: str, data: dict) -> None:
    """Figures for the notes, under target/ (not asserted)."""
    out = REPO / "target" / "k8s-measurements"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    sys.stderr.write(f"\n[measured] {name}: {json.dumps(data)}\n")


def served_der(port: int) -> bytes:
    """The leaf certificate a new TLS handshake on 127.0.0.1:port is given (DER)."""
    import socket
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s) as t:
            return t.getpeercert(binary_form=True)

