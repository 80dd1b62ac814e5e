"""The alert rules and dashboard of monitoring/ against the real tools and a real scrape.

- `promtool check rules` is clean and `promtool test rules` passes
  monitoring/rules_test.yaml, which has a test for every alert;
- every `edgemq_...` metric the rules and dashboard use is in a real /metrics scrape of
  `edgemq run` serving a broker, a bridge and a certificate; the controller-only ones
  (`edgemq_controller_*`, `edgemq_resource_ready`) are checked in a real scrape of
  the controller installed from a registry by e2e/k8s/test_registry.py, and against
  the controller's registry by the Rust test
  kubernetes::tests::every_metric_the_alert_rules_and_dashboard_use_is_exported;
- a real Prometheus scraping `edgemq run` whose bridge remote is down fires
  EdgemqBridgeDisconnected. It loads a copy of rules.yaml whose `for: 10m` on that
  alert is shortened to 10s by text substitution (nothing else changed), so the test
  takes seconds, not ten minutes;
- the chart's copies of the files are the repository's, and `helm template` with
  monitoring.dashboard.enabled and monitoring.prometheusRule.enabled renders a
  ConfigMap (schema-valid, labelled grafana_dashboard) and a PrometheusRule holding the
  rules.

Prometheus and promtool come from Debian's `prometheus` package
(scripts/install-peers.sh).
"""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers_certs import block, openssl_ca
from support import (Edgemq, broker_yaml, docs, free_port, poll, require, run,
                     _stop_proc, _LIVE)

REPO = Path(__file__).resolve().parent.parent
MON = REPO / "monitoring"
CHART = REPO / "charts" / "edgemq"
RULES = MON / "rules.yaml"
DASHBOARD = MON / "dashboard.json"
# Served by the controller only (checked by the Rust test named above).
CONTROLLER_ONLY = re.compile(r"^edgemq_(controller_.*|resource_ready)$")


def alert_names() -> list:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def metric_names(text: str) -> set:
    return set(re.findall(r"\bedgemq_[a-z0-9_]+", text))


def test_promtool_finds_the_rules_valid():
    promtool = require("promtool", "prometheus")
    r = run([promtool, "check", "rules", str(RULES)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in r.stdout, r.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert():
    promtool = require("promtool", "prometheus")
    tests = yaml.safe_load((MON / "rules_test.yaml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]
              if any(t.get("exp_alerts") or [])}
    untested = set(alert_names()) - tested
    assert not untested, f"alerts without a firing unit test: {sorted(untested)}"
    r = run([promtool, "test", "rules", "rules_test.yaml"], timeout=120, cwd=str(MON))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_the_charts_monitoring_files_are_the_repositorys():
    for name in ("rules.yaml", "dashboard.json"):
        assert filecmp.cmp(MON / name, CHART / "monitoring" / name, shallow=False), (
            f"charts/edgemq/monitoring/{name} differs from monitoring/{name}: "
            "run `cp monitoring/rules.yaml monitoring/dashboard.json charts/edgemq/monitoring/`")


def ca_secret(name: str, ca: tuple) -> str:
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\n"
            f"stringData:\n  tls.crt: |\n{block(Path(ca[0]).read_text())}\n"
            f"  tls.key: |\n{block(Path(ca[1]).read_text())}\n")


def broker_with_bridge_and_certificate(e: Edgemq, tmp_path: Path, remote_port: int) -> None:
    """A broker with a TLS listener from a `ca` Certificate and a bridge to
    127.0.0.1:remote_port."""
    # A CA valid for a year, so the 90-day certificate is not within 14 days of expiry.
    ca = openssl_ca(tmp_path / "pki", cn="Monitoring CA", days=365)
    port, tls_port = free_port(), free_port()
    listeners = (f"    - {{name: mqtt, port: {port}, bindAddress: 127.0.0.1}}\n"
                 f"    - {{name: tls, port: {tls_port}, bindAddress: 127.0.0.1, "
                 f"tls: {{certificateRef: home-tls}}}}")
    cert = ("apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: home-tls}\n"
            "spec: {dnsNames: [localhost], issuer: {ca: {secretRef: home-ca}}}\n")
    bridge = ("apiVersion: edgemq.io/v1alpha1\nkind: Bridge\nmetadata: {name: cloud}\n"
              f"spec:\n  brokerRef: home\n  remote: {{address: \"127.0.0.1:{remote_port}\"}}\n"
              "  topics:\n    - {pattern: \"sensors/#\", direction: out, qos: 1}\n")
    e.write("home.yaml", docs(
        broker_yaml("home", port, "  allowAnonymous: true\n  aclEnabled: false\n",
                    listeners=listeners),
        ca_secret("home-ca", ca), cert, bridge))


def test_every_broker_metric_the_rules_and_dashboard_use_is_in_a_real_scrape(edgemq, tmp_path):
    e = edgemq()
    broker_with_bridge_and_certificate(e, tmp_path, free_port())
    e.start()
    used = metric_names(RULES.read_text()) | metric_names(DASHBOARD.read_text())
    broker_side = {n for n in used if not CONTROLLER_ONLY.match(n)}
    assert {"edgemq_bridge_connected", "edgemq_certificate_expiration_timestamp_seconds",
            "edgemq_auth_failures_total"} <= broker_side, broker_side

    def scraped():
        names = {k.split("{", 1)[0] for k in e.metrics()}
        return names if "edgemq_certificate_expiration_timestamp_seconds" in names else None

    names = poll(scraped, 20, 0.2, "the certificate issued and its expiry exported")
    missing = sorted(broker_side - names)
    assert not missing, f"used by monitoring/ but not in /metrics: {missing}"
    build = [k for k in e.metrics() if k.startswith("edgemq_build_info{")]
    assert len(build) == 1 and 'version="0.1.0"' in build[0] and 'target="' in build[0], build


def edgemq_version() -> str:
    from support import edgemq_bin
    r = run([edgemq_bin(), "version"], timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_edgemq_version_prints_version_commit_and_target():
    out = edgemq_version().splitlines()
    assert out[0] == "edgemq 0.1.0", out
    commit = out[1].removeprefix("commit: ")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        # Built from this checkout: the commit is a full hash (HEAD when built last).
        assert re.fullmatch(r"[0-9a-f]{40}", commit), out
    assert re.fullmatch(r"target: [a-z0-9_]+-[a-z0-9_-]+", out[2]), out
    # The binary the tests run is the default build, which has the controller.
    assert out[3] == "kubernetes: yes", out


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_a_real_prometheus_fires_the_bridge_alert_when_the_remote_is_down(edgemq, tmp_path):
    prometheus = require("prometheus", "prometheus")
    e = edgemq()
    broker_with_bridge_and_certificate(e, tmp_path, free_port())  # nothing listens there
    e.start()
    # The same rules, with only EdgemqBridgeDisconnected's `for` shortened.
    text = RULES.read_text()
    block_start = text.index("- alert: EdgemqBridgeDisconnected")
    block_end = text.index("- alert:", block_start + 1)
    part = text[block_start:block_end]
    assert "for: 10m" in part, part
    rules = tmp_path / "rules.yaml"
    rules.write_text(text[:block_start] + part.replace("for: 10m", "for: 10s") + text[block_end:])
    interval = 1
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{interval}s", "evaluation_interval": f"{interval}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "edgemq",
                            "static_configs": [{"targets": [f"127.0.0.1:{e.http_port}"]}]}],
    }))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _LIVE.append(proc)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def alert(state: str):
            try:
                alerts = http_json(f"{api}/alerts")["data"]["alerts"]
            except OSError:
                return None
            return next((a for a in alerts if a["labels"].get("alertname") == "EdgemqBridgeDisconnected"
                         and a["state"] == state), None)

        pending = poll(lambda: alert("pending"), 30, 0.2, "the bridge alert pending")
        assert pending["labels"]["bridge"] == "default/cloud", pending
        assert pending["labels"]["job"] == "edgemq", pending
        seen_pending = time.monotonic()
        # Within `for` (10 s) plus a scrape and an evaluation, with slack for the machine.
        firing = poll(lambda: alert("firing"), 10 + 2 * interval + 8, 0.2, "the bridge alert firing")
        waited = time.monotonic() - seen_pending
        # Not before `for` has run out (pending was seen at most an evaluation late).
        assert waited >= 10 - 2 * interval - 0.5, waited
        assert firing["labels"]["severity"] == "warning", firing
        assert firing["annotations"]["summary"] == "Bridge default/cloud is disconnected from its remote"
        # The other alerts stay quiet: a fresh certificate, an empty queue, no drops.
        others = [a["labels"]["alertname"] for a in http_json(f"{api}/alerts")["data"]["alerts"]
                  if a["labels"]["alertname"] != "EdgemqBridgeDisconnected"]
        assert others == [], others
    finally:
        _stop_proc(proc)
        log.close()


def helm_bin() -> str:
    r = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"scripts/install-helm.sh failed (pip needed):\n{r.stderr}", pytrace=False)
    return r.stdout.strip().splitlines()[-1]


def render(*sets: str) -> list:
    args = [helm_bin(), "template", "edgemq", str(CHART), "-n", "edgemq"]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_the_chart_renders_the_dashboard_and_rules_only_when_asked(tmp_path):
    off = render()
    assert not [d for d in off if d["kind"] in ("PrometheusRule",)
                or d["metadata"].get("labels", {}).get("grafana_dashboard")], "on by default"
    on = render("monitoring.dashboard.enabled=true", "monitoring.prometheusRule.enabled=true",
                "monitoring.prometheusRule.labels.release=kube-prometheus-stack")
    cm = next(d for d in on if d["kind"] == "ConfigMap"
              and d["metadata"]["labels"].get("grafana_dashboard") == "1")
    assert json.loads(cm["data"]["edgemq.json"]) == json.loads(DASHBOARD.read_text())
    rule = next(d for d in on if d["kind"] == "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "edgemq"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    # The ConfigMap passes Kubernetes' schema; the PrometheusRule's groups pass promtool.
    validate = require("kubernetes-validate", "kubernetes-validate (pip)")
    f = tmp_path / "cm.yaml"
    f.write_text(yaml.safe_dump(cm))
    r = run([validate, "--strict", "-k", "1.28.0", str(f)], timeout=120)
    assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
    g = tmp_path / "groups.yaml"
    g.write_text(yaml.safe_dump(rule["spec"]))
    r = run([require("promtool", "prometheus"), "check", "rules", str(g)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
