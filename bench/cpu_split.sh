#!/usr/bin/env bash
# User and kernel CPU per delivered message of one broker, from `perf record` samples
# of its process at 10 kHz (finer than the 10 ms ticks of /proc/PID/stat, which the
# benchmark's own user/kernel figures come from).
#
#   bench/cpu_split.sh BROKER BENCH SCENARIO QOS MESSAGES [bench options...]
#
#   BROKER     edgemq:PATH (an edgemq binary) or mosquitto
#   BENCH      the edgemq-bench binary
#   SCENARIO   as --scenarios, one of them (1:1, 1:10, 1:100, 8:1)
#   QOS        0 or 1
#   MESSAGES   --messages (deliveries in the closed-loop phase)
#
# The broker runs alone (--only), under `taskset -c 1` (--pin-core 1), through the
# closed-loop phase and a 1 s fixed-rate phase at 2,000 deliveries/s; every sample of
# the broker's process from its start to its stop is counted, divided by the
# deliveries of both phases. Needs `perf` and the right to profile (root). Example:
#
#   bench/cpu_split.sh edgemq:target/release/edgemq target/profiling/edgemq-bench 1:1 1 100000 --one-per-packet
#   bench/cpu_split.sh mosquitto target/profiling/edgemq-bench 1:1 1 100000 --one-per-packet
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,20p' "$0"; exit 2; }
broker=$1 bench=$2 scenario=$3 qos=$4 messages=$5
shift 5
case "$broker" in
  edgemq:*) bin=$(realpath "${broker#edgemq:}"); only=(--edgemq "$bin" --only edgemq); pattern="^$bin run" ;;
  mosquitto) only=(--only mosquitto); pattern="^mosquitto -c" ;;
  *) echo "BROKER: edgemq:PATH or mosquitto" >&2; exit 2 ;;
esac
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
dir=$(mktemp -d)
bench_pid=
cleanup() {
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$bench" "${only[@]}" --pin-core 1 --idle-conns 0 --burst-messages 0 --settle-secs 0 \
  --rate-secs 1 --rate 2000 --drain-ms 500 --scenarios "$scenario" --qos "$qos" \
  --messages "$messages" "$@" >"$dir/bench.out" 2>"$dir/bench.err" &
bench_pid=$!
pid=
for _ in $(seq 200); do
  pid=$(pgrep -f "$pattern" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "the broker did not start:" >&2; tail -5 "$dir/bench.err" >&2; exit 1; }
perf record -F 10000 -p "$pid" -o "$dir/perf.data" >/dev/null 2>&1 &
perf_pid=$!
wait "$bench_pid" || { echo "the benchmark failed:" >&2; tail -5 "$dir/bench.err" >&2; exit 1; }
bench_pid=
kill -INT "$perf_pid" 2>/dev/null || true
wait "$perf_pid" 2>/dev/null || true
perf report -i "$dir/perf.data" --sort dso --stdio -n 2>/dev/null >"$dir/report.txt"
python3 - "$dir/report.txt" "$messages" "$broker" "$scenario" "$qos" "$*" <<'EOF'
import re, sys
report, messages, broker, scenario, qos, extra = sys.argv[1:]
deliveries = int(messages) + 2000  # closed loop + 1 s at 2,000/s
user = kernel = 0
for line in open(report):
    m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)", line)
    if m:
        if "kernel" in m.group(2):
            kernel += int(m.group(1))
        else:
            user += int(m.group(1))
period_ns = 1e9 / 10000
print(f"{broker.split(':')[0]} {scenario} QoS {qos} {extra}".rstrip()
      + f": user {user * period_ns / deliveries:.0f} ns/msg, kernel {kernel * period_ns / deliveries:.0f} ns/msg"
      + f" ({user} + {kernel} samples)")
EOF
