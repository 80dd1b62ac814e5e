#!/usr/bin/env bash
# Tokio task polls per delivered message of one edgemq build: every poll of a task
# (each wake-up of a connection) is counted with uprobes on tokio's task poll
# function, over a run of the benchmark against that build alone.
#
#   bench/task_polls.sh EDGEMQ BENCH SCENARIO QOS MESSAGES [bench options...]
#
#   EDGEMQ     an edgemq binary with its symbols (release or profiling; not stripped)
#   BENCH      the edgemq-bench binary
#   SCENARIO, QOS, MESSAGES as for bench/cpu_split.sh
#
# Needs `perf` with uprobes and root. Example (a device that waits for each PUBACK):
#
#   bench/task_polls.sh target/release/edgemq target/profiling/edgemq-bench 1:1 1 100000 --one-per-packet
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,14p' "$0"; exit 2; }
bin=$(realpath "$1") bench=$2 scenario=$3 qos=$4 messages=$5
shift 5
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
group=edgemq_polls_$$
dir=$(mktemp -d)
cleanup() {
  perf probe -q -d "$group:*" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
# One probe per instance of tokio::runtime::task::raw::poll (one per kind of task).
n=0
for sym in $(nm "$bin" | awk '$3 ~ /tokio7runtime4task3raw4poll17h/ {print $3}'); do
  n=$((n + 1))
  perf probe -q -x "$bin" --no-demangle -a "$group:p$n=$sym"
done
[ "$n" -gt 0 ] || { echo "no tokio task poll symbol in $bin (stripped?)" >&2; exit 1; }
perf stat -e "$group:*" -a -o "$dir/stat.txt" -- "$bench" --edgemq "$bin" --only edgemq \
  --pin-core 1 --idle-conns 0 --burst-messages 0 --settle-secs 0 --rate-secs 1 --rate 2000 \
  --drain-ms 500 --scenarios "$scenario" --qos "$qos" --messages "$messages" "$@" \
  >/dev/null 2>"$dir/bench.err" || { echo "the benchmark failed:" >&2; tail -5 "$dir/bench.err" >&2; exit 1; }
# Deliveries: the closed loop plus 1 s at 2,000/s, as bench/cpu_split.sh counts them.
awk -v m="$messages" -v s="$scenario" -v q="$qos" '
  $2 ~ /:p[0-9]+$/ { gsub(",", "", $1); polls += $1 }
  END { printf "edgemq %s QoS %s: %.2f task polls per delivered message (%d polls)\n", s, q, polls / (m + 2000), polls }
' "$dir/stat.txt"
