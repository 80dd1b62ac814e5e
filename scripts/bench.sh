#!/usr/bin/env bash
# Builds edgemq and the load generator in release mode, then runs the default
# benchmark suite against edgemq and Mosquitto (alternating) and prints the table.
# Extra arguments go to edgemq-bench, e.g. `scripts/bench.sh --json` or
# `scripts/bench.sh --pin-core 1`. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "bench: mosquitto is not installed (apt-get install -y mosquitto)" >&2
  exit 1
fi
# Mosquitto lives in /usr/sbin on Debian; make sure it is found.
export PATH="$PATH:/usr/sbin"

only_mosquitto=false
edgemq_given=false
for a in "$@"; do
  case "$a" in
    mosquitto | --only=mosquitto) only_mosquitto=true ;;
    --edgemq | --edgemq=*) edgemq_given=true ;;
  esac
done

target_dir="${CARGO_TARGET_DIR:-target}"
if $only_mosquitto; then
  cargo build --release -p edgemq-bench
else
  if ! cargo build --release -p edgemq -p edgemq-bench; then
    echo "bench: building edgemq failed; \`scripts/bench.sh --only mosquitto\` measures Mosquitto alone" >&2
    exit 1
  fi
fi

# The idle-connection test opens 1000 sockets; the brokers inherit this limit.
ulimit -n 65536 2>/dev/null || true

if $edgemq_given; then
  exec "$target_dir/release/edgemq-bench" "$@"
fi
exec "$target_dir/release/edgemq-bench" --edgemq "$target_dir/release/edgemq" "$@"
