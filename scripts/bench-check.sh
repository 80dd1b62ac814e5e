#!/usr/bin/env bash
# The benchmark regression check (bench/check.py): a short run of edgemq-bench against
# edgemq and Mosquitto, failing when edgemq's CPU per message, rate or idle memory
# relative to Mosquitto's crosses a generous bound. Built with the `profiling` profile
# (optimised like the shipping build, without its long whole-program link).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
command -v mosquitto >/dev/null || { echo "bench-check: mosquitto is not installed (apt-get install -y mosquitto)" >&2; exit 1; }
cargo build --profile profiling -p edgemq -p edgemq-bench
target_dir="${CARGO_TARGET_DIR:-target}"
ulimit -n 65536 2>/dev/null || true
python3 bench/check.py "$target_dir/profiling/edgemq-bench" "$target_dir/profiling/edgemq"
