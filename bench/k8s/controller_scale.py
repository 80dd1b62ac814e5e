#!/usr/bin/env python3
"""Controller and broker-pod figures on a real cluster (a benchmark, not a test).

    python3 bench/k8s/controller_scale.py [--brokers 100] [--users 1000] [--edgemq PATH]

Uses the cluster of KUBECONFIG, or the project's own test cluster (scripts/cluster.sh,
started when it is not running and left running). Prints JSON:

- controller RSS and CPU (its process on this machine): idle with nothing to do; while
  reconciling N Brokers and M MqttUsers (Brokers carry a nodeSelector no node has, so
  only the controller's work is measured, not N pods); idle afterwards;
- time until every Broker shows the controller's `desiredConfigHash`, and the writes
  the controller made while idle (resourceVersions before and after);
- reconcile durations per kind (mean, from /metrics);
- RSS of one broker pod's process and of `edgemq run` on the same example folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")
HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRig"
        "ZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==")


def sh(*args, input=None, check=True, timeout=300):
    r = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        sys.exit(f"{' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def status_mb(pid, *fields):
    """The named fields of /proc/PID/status in MB, from one read."""
    out = dict.fromkeys(fields)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in out:
            out[name] = round(int(value.split()[0]) / 1024, 1)
    return out


def rss_mb(pid):
    return status_mb(pid, "VmRSS")["VmRSS"]


def memory_mb(pid):
    """VmRSS, its peak so far, and RssAnon: the heap and stacks, without the pages of
    the binary that the kernel maps around each page it faults in (file-backed and
    reclaimable)."""
    m = status_mb(pid, "VmRSS", "RssAnon", "VmHWM")
    # VmHWM: the highest RSS so far, which a moment's reading can miss or catch.
    return {"rss_mb": m["VmRSS"], "rss_anon_mb": m["RssAnon"], "peak_rss_mb": m["VmHWM"]}


def cpu_over(pid, seconds):
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0), 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", type=int, default=100)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--controller-only", action="store_true",
                    help="skip the broker pod against edgemq run comparison")
    ap.add_argument("--edgemq", default=str(REPO / "target" / "release" / "edgemq"))
    a = ap.parse_args()
    if not os.access(a.edgemq, os.X_OK):
        a.edgemq = str(REPO / "target" / "debug" / "edgemq")

    env = dict(os.environ)
    image = env.get("EDGEMQ_IMAGE")
    if env.get("KUBECONFIG") and not image:
        sys.exit("KUBECONFIG is set, so that cluster is used: set EDGEMQ_IMAGE to the edgemq "
                 "image its nodes can run (or unset KUBECONFIG for the project's own cluster)")
    if not env.get("KUBECONFIG"):
        cluster = ["bash", str(REPO / "scripts" / "cluster.sh")]
        sh(*cluster, "start", timeout=3600)
        for line in sh(*cluster, "env").stdout.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = v
        image = "edgemq:bench"
        sh(*cluster, "image", a.edgemq, image, timeout=600)
    kubectl = [env.get("EDGEMQ_KUBECTL", "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    for f in sorted((REPO / "crds").glob("*.yaml")):
        if sh(*kubectl, "replace", "--validate=false", "-f", str(f), check=False).returncode:
            sh(*kubectl, "create", "--validate=false", "-f", str(f))
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    sh(*kubectl, "create", "namespace", ns)
    port = free_port()
    log = open(tempfile.mkstemp(prefix="controller-", suffix=".log")[1], "w")
    ctl = subprocess.Popen([a.edgemq, "controller", "--namespace", ns, "--broker-image", image,
                            "--broker-image-pull-policy", "Never", "--http", f"127.0.0.1:{port}"],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    out = {"binary": a.edgemq, "brokers": a.brokers, "users": a.users}
    try:
        time.sleep(3)
        out["controller_idle_empty"] = {**memory_mb(ctl.pid), "cpu_percent": cpu_over(ctl.pid, 10)}

        items = []
        for b in range(a.brokers):
            items.append({"apiVersion": "edgemq.io/v1alpha1", "kind": "Broker",
                          "metadata": {"name": f"b{b}"},
                          "spec": {"listeners": [{"name": "lan", "port": 1883}],
                                   "pod": {"nodeSelector": {"edgemq.io/bench": "none"}}}})
        for u in range(a.users):
            items.append({"apiVersion": "edgemq.io/v1alpha1", "kind": "MqttUser",
                          "metadata": {"name": f"u{u}"},
                          "spec": {"brokerRef": f"b{u % a.brokers}", "passwordHash": HASH,
                                   "acl": [{"topic": f"devices/u{u}/#"}]}})
        c0, t0 = cpu_seconds(ctl.pid), time.monotonic()
        for i in range(0, len(items), 200):
            sh(*kubectl, "apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items[i:i + 200]}))
        applied = time.monotonic() - t0
        while True:
            got = json.loads(sh(*kubectl, "get", "brokers", "-n", ns, "-o", "json").stdout)["items"]
            done = sum(1 for b in got if (b.get("status") or {}).get("desiredConfigHash"))
            # The MqttUsers as the server prints them (NAME BROKER READY ...), not as
            # whole objects: listing 1,000 objects as JSON every poll loaded the API
            # server this measures as much as the controller did.
            rows = [r.split() for r in
                    sh(*kubectl, "get", "mqttusers", "-n", ns, "--no-headers").stdout.splitlines()]
            udone = sum(1 for cols in rows if len(cols) > 2 and cols[2] != "<none>")
            if done == a.brokers and udone == a.users:
                break
            if time.monotonic() - t0 > 900:
                sys.exit(f"only {done} Brokers and {udone} MqttUsers reconciled after 900 s")
            time.sleep(0.5)
        took = time.monotonic() - t0
        out["reconcile_all"] = {"seconds": round(took, 1),
                                # of which kubectl apply itself (the floor, whatever the controller does)
                                "kubectl_apply_seconds": round(applied, 1),
                                # from the last object written to the last one reconciled
                                "after_apply_seconds": round(took - applied, 1),
                                "cpu_percent": round(100 * (cpu_seconds(ctl.pid) - c0) / took, 1),
                                **memory_mb(ctl.pid)}
        time.sleep(5)

        def versions():
            v = {}
            for kind in ("brokers.edgemq.io", "mqttusers.edgemq.io", "deployments", "services", "secrets"):
                for o in json.loads(sh(*kubectl, "get", kind, "-n", ns, "-o", "json").stdout)["items"]:
                    v[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
            return v
        before = versions()
        out["controller_idle_loaded"] = {"cpu_percent": cpu_over(ctl.pid, a.idle_seconds),
                                         **memory_mb(ctl.pid)}
        after = versions()
        out["writes_while_idle"] = sum(1 for k, v in before.items() if after.get(k) != v)

        import urllib.request
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        sums, counts = {}, {}
        for line in metrics.splitlines():
            if line.startswith("edgemq_controller_reconcile_duration_seconds_sum"):
                kind = line.split('kind="')[1].split('"')[0]
                sums[kind] = float(line.split()[-1])
            if line.startswith("edgemq_controller_reconcile_duration_seconds_count"):
                kind = line.split('kind="')[1].split('"')[0]
                counts[kind] = float(line.split()[-1])
        out["reconcile_mean_ms"] = {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}
        out["reconciles"] = {k: int(v) for k, v in counts.items()}
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=30)
        # Waited for: a namespace still being emptied (1,100 objects, 100 Deployments)
        # would load the cluster under the next run and blur a paired comparison.
        sh(*kubectl, "delete", "namespace", ns, "--timeout=600s", check=False, timeout=660)
    if not a.controller_only:
        out.update(pod_vs_standalone(a.edgemq, kubectl, image))
    print(json.dumps(out, indent=2))


def pod_vs_standalone(binary, kubectl, image):
    """RSS of the example's broker as a pod and as `edgemq run`, after 5 s of idling."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    sh(*kubectl, "create", "namespace", ns)
    port = free_port()
    ctl = subprocess.Popen([binary, "controller", "--namespace", ns, "--broker-image", image,
                            "--broker-image-pull-policy", "Never", "--http", f"127.0.0.1:{port}"],
                           env=dict(os.environ, KUBECONFIG=kubectl[2]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The example without persistence (no volume needed) and on free ports.
        folder = Path(tmp) / "example"
        folder.mkdir()
        ports = {"1883": free_port(), "8883": free_port(), "8083": free_port()}
        for f in (REPO / "examples" / "standalone").glob("*.yaml"):
            text = f.read_text().replace("  persistence: {enabled: true}\n", "")
            (folder / f.name).write_text(text)
        try:
            sh(*kubectl, "apply", "-n", ns, "-f", str(folder))
            deadline = time.monotonic() + 240
            pid = None
            while time.monotonic() < deadline and pid is None:
                for line in sh("pgrep", "-af", "edgemq broker", check=False).stdout.splitlines():
                    p = line.split()[0]
                    env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
                    if f"EDGEMQ_NAMESPACE={ns}".encode() in env or ns.encode() in b"".join(env):
                        pid = int(p)
                time.sleep(1)
            if pid:
                time.sleep(5)
                res["broker_pod_rss_mb"] = rss_mb(pid)
        finally:
            ctl.send_signal(signal.SIGTERM)
            ctl.wait(timeout=30)
            sh(*kubectl, "delete", "namespace", ns, "--wait=false", check=False)
        for f in folder.glob("*.yaml"):
            text = f.read_text()
            for old, new in ports.items():
                text = text.replace(f"port: {old}", f"port: {new}")
            f.write_text(text)
        http = free_port()
        run = subprocess.Popen([binary, "run", "--config", str(folder), "--state", str(Path(tmp) / "state"),
                                "--http", f"127.0.0.1:{http}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)
            res["standalone_rss_mb"] = rss_mb(run.pid)
        finally:
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=30)
    if res.get("broker_pod_rss_mb") and res.get("standalone_rss_mb"):
        res["pod_over_standalone"] = round(res["broker_pod_rss_mb"] / res["standalone_rss_mb"], 2)
    return res


if __name__ == "__main__":
    main()
