#!/usr/bin/env bash
# The test command: installs the peers, then runs the unit tests and the
# black-box tests of the built binary against real peers, then the benchmark
# regression check (ratios against Mosquitto, scripts/bench-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
# The standalone-only build (no Kubernetes), kept aside for e2e/test_standalone_build.py;
# then the default build, which the other tests run.
cargo build -p edgemq --no-default-features
cp target/debug/edgemq target/debug/edgemq-standalone
cargo build --workspace --bins
cargo test --workspace
python3 -m pytest -q -rs e2e  # -rs: every skipped test is listed with its reason
bash scripts/bench-check.sh
