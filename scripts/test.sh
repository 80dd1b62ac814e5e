#!/usr/bin/env bash
# The test command: installs the peers, then runs the unit tests and the
# black-box tests of the built binary against real peers, then the benchmark
# regression check (ratios against Mosquitto, scripts/bench-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
cargo build --workspace --bins
cargo test --workspace
python3 -m pytest -q -rs e2e  # -rs: every skipped test is listed with its reason
bash scripts/bench-check.sh
