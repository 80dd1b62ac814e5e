#!/usr/bin/env python3
"""Controller memory next to many Secrets no edgemq object names (a benchmark, not a test).

    python3 bench/k8s/secret_memory.py --edgemq BIN [--edgemq BIN2 ...] [--secrets 1000] [--kib 100]

Uses the cluster of KUBECONFIG, or the project's own test cluster (scripts/cluster.sh,
which must be running). In a fresh namespace it creates N unrelated Secrets of the given
size (random bytes, `kubectl create`, so no last-applied copy of the values) and one
Broker with one MqttUser whose password is in a Secret of its own (the Broker carries a
nodeSelector no node has: only the controller is measured). Then, for each binary in
turn, it runs `edgemq controller --namespace NS` on this machine, waits until the Broker
shows a desiredConfigHash, idles, and reports the process's RSS (VmRSS) and peak RSS
(VmHWM). Prints JSON; removes the namespace.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from controller_scale import free_port, sh  # noqa: E402 - the same folder


def mem_mb(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            out[{"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}[key]] = round(int(line.split()[1]) / 1024, 1)
    return out


def measure(binary, kubectl, env, ns, idle):
    port = free_port()
    ctl = subprocess.Popen([binary, "controller", "--namespace", ns, "--broker-image", "edgemq:none",
                            "--broker-image-pull-policy", "Never", "--http", f"127.0.0.1:{port}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request
        t0 = time.monotonic()
        while True:
            # This process's first Broker reconcile is done: it read what it needs.
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                text = ""
            done = [line for line in text.splitlines()
                    if line.startswith('edgemq_controller_reconciles_total{kind="Broker"}')]
            if done and float(done[0].split()[-1]) >= 1:
                break
            if time.monotonic() - t0 > 300:
                sys.exit("the Broker was not reconciled within 300 s")
            time.sleep(0.5)
        reconciled = round(time.monotonic() - t0, 1)
        time.sleep(idle)
        return {"binary": binary, "reconciled_after_s": reconciled, **mem_mb(ctl.pid)}
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgemq", action="append", required=True)
    ap.add_argument("--secrets", type=int, default=1000)
    ap.add_argument("--kib", type=int, default=100)
    ap.add_argument("--idle-seconds", type=int, default=10)
    a = ap.parse_args()
    env = dict(os.environ)
    if not env.get("KUBECONFIG"):
        cluster = ["bash", str(REPO / "scripts" / "cluster.sh")]
        if sh(*cluster, "status", check=False).returncode:
            sys.exit("no KUBECONFIG and the project's cluster is not running (scripts/cluster.sh start)")
        for line in sh(*cluster, "env").stdout.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = v
    kubectl = [env.get("EDGEMQ_KUBECTL", "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    for f in sorted((REPO / "crds").glob("*.yaml")):
        if sh(*kubectl, "replace", "--validate=false", "-f", str(f), check=False).returncode:
            sh(*kubectl, "create", "--validate=false", "-f", str(f))
    ns = f"bench-secrets-{uuid.uuid4().hex[:8]}"
    sh(*kubectl, "create", "namespace", ns)
    out = {"secrets": a.secrets, "secret_kib": a.kib, "runs": []}
    try:
        batch = max(1, 1024 // a.kib)  # about 1.4 MB of base64 per request
        t0 = time.monotonic()
        for i in range(0, a.secrets, batch):
            items = [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"unrelated-{j}"},
                      "data": {"blob": base64.b64encode(os.urandom(a.kib * 1024)).decode()}}
                     for j in range(i, min(i + batch, a.secrets))]
            sh(*kubectl, "create", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        out["create_seconds"] = round(time.monotonic() - t0, 1)
        sh(*kubectl, "create", "secret", "generic", "u-pw", "-n", ns, "--from-literal=password=pw")
        sh(*kubectl, "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "edgemq.io/v1alpha1", "kind": "Broker", "metadata": {"name": "b"},
             "spec": {"listeners": [{"name": "lan", "port": 1883}],
                      "pod": {"nodeSelector": {"edgemq.io/bench": "none"}}}},
            {"apiVersion": "edgemq.io/v1alpha1", "kind": "MqttUser", "metadata": {"name": "u"},
             "spec": {"brokerRef": "b", "passwordSecretRef": {"name": "u-pw", "key": "password"}}},
        ]}))
        for binary in a.edgemq:
            out["runs"].append(measure(binary, kubectl, env, ns, a.idle_seconds))
    finally:
        sh(*kubectl, "delete", "namespace", ns, "--wait=false", check=False)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
