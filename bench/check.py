#!/usr/bin/env python3
"""The benchmark regression check of the test command (scripts/bench-check.sh).

Runs a short edgemq-bench suite against edgemq and Mosquitto in the same run and fails
when edgemq's figures relative to Mosquitto's cross a bound. Only ratios are checked,
never absolute times, and the bounds leave two to three times the room of today's
figures (bench/README.md), so a noisy shared machine does not fail it while a
regression of the size issue 20 describes (CPU per message, memory) does.

    bench/check.py BENCH_BINARY EDGEMQ_BINARY

Prints every checked figure with its bound, then exits 1 if any is out of bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# (scenario, figure, bound): edgemq / Mosquitto must stay at or below the bound.
# Today (pinned, release): CPU 0.15-0.30, user CPU about 0.5-1.0, one message per
# packet about 1.0 in total.
BATCHED = [
    ("1:1 QoS0", "cpu_ns_per_msg", 0.75),
    ("1:1 QoS1", "cpu_ns_per_msg", 0.75),
    ("1:100 QoS0", "cpu_ns_per_msg", 0.75),
    ("1:100 QoS1", "cpu_ns_per_msg", 0.75),
    ("1:1 QoS0", "user_ns_per_msg", 2.5),
    ("1:1 QoS1", "user_ns_per_msg", 2.5),
    ("1:100 QoS0", "user_ns_per_msg", 2.5),
    ("1:100 QoS1", "user_ns_per_msg", 2.5),
]
# One message per packet costs each broker only tens of clock ticks of CPU in a short
# run, too few to split into user and kernel time: the total is checked.
ONE_PER_PACKET = [
    ("1:1 QoS1", "cpu_ns_per_msg", 2.0),
]
# Resident memory of the idle broker, edgemq / Mosquitto.
IDLE_RSS_BOUND = 3.0
# edgemq must deliver at least this share of Mosquitto's closed-loop rate.
MIN_RATE_RATIO = 0.5


def run(bench: str, edgemq: str, *extra: str) -> dict:
    args = [bench, "--edgemq", edgemq, "--json", "--burst-messages", "0", "--settle-secs", "0",
            "--rate-secs", "1", "--rate", "2000", "--drain-ms", "1000", *extra]
    if (os.cpu_count() or 1) >= 2:
        args += ["--pin-core", "1"]
    sys.stderr.write("bench-check: " + " ".join(args) + "\n")
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"bench-check: edgemq-bench exited with {r.returncode}")
    report = json.loads(r.stdout)
    errors = [e for b in report["brokers"] for e in b["errors"]]
    if errors:
        raise SystemExit(f"bench-check: the run reported errors: {errors}")
    return report


def closed(report: dict, label: str, scenario: str) -> dict:
    broker = next(b for b in report["brokers"] if b["label"] == label)
    return next(s for s in broker["scenarios"] if s["name"] == scenario)["closed_loop"]


def main() -> int:
    bench, edgemq = sys.argv[1], sys.argv[2]
    batched = run(bench, edgemq, "--scenarios", "1:1,1:100", "--qos", "0,1",
                  "--messages", "100000", "--idle-conns", "100")
    single = run(bench, edgemq, "--one-per-packet", "--scenarios", "1:1", "--qos", "1",
                 "--messages", "20000", "--idle-conns", "0")
    failures = []

    def check(what: str, value, bound: float, above: bool = False) -> None:
        bad = value is None or (value < bound if above else value > bound)
        rel = ">=" if above else "<="
        shown = "missing" if value is None else f"{value:.2f}"
        print(f"{'FAIL' if bad else 'ok  '} {what}: {shown} (bound {rel} {bound})")
        if bad:
            failures.append(what)

    for report, checks, tag in ((batched, BATCHED, "closed loop"),
                                (single, ONE_PER_PACKET, "one per packet")):
        for scenario, figure, bound in checks:
            check(f"{tag} {scenario} {figure} edgemq/mosquitto",
                  report["ratios"][scenario][figure], bound)
        for scenario in report["ratios"]:
            check(f"{tag} {scenario} msgs/s edgemq/mosquitto",
                  report["ratios"][scenario]["msgs_per_sec"], MIN_RATE_RATIO, above=True)
            m = closed(report, "edgemq", scenario)
            if scenario.endswith("QoS1"):
                check(f"{tag} {scenario} edgemq lost+duplicated QoS 1 messages",
                      m["lost"] + m["duplicated"], 0)

    rss = {b["label"]: b["idle"]["idle_rss_kb"] for b in batched["brokers"]}
    check("idle RSS edgemq/mosquitto", rss["edgemq"] / rss["mosquitto"], IDLE_RSS_BOUND)
    print(f"bench-check: {len(failures)} of the figures out of bounds" if failures
          else "bench-check: all figures within bounds")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
