#!/usr/bin/env bash
# User-space instructions per delivered message of one broker build, counted by
# valgrind's callgrind: exact and repeatable, where CPU time on a shared machine
# moves by a third between runs. The benchmark runs twice against the broker under
# callgrind, with MESSAGES and with 3 x MESSAGES deliveries in its closed loop; the
# difference of the two counts, divided by 2 x MESSAGES, leaves out start-up and
# shutdown. Prints the total and the functions that cost most per message (their own
# instructions, not those of what they call).
#
#   bench/instructions.sh BROKER BENCH SCENARIO QOS MESSAGES [bench options...]
#
#   BROKER     an edgemq binary with symbols (the `profiling` profile names functions),
#              or `mosquitto` (or a path to a Mosquitto binary) for the same count of it
#   BENCH      the edgemq-bench binary
#   SCENARIO, QOS, MESSAGES as for bench/cpu_split.sh
#
# Needs valgrind (apt-get install valgrind). Under callgrind the broker runs about 50
# times slower: 10,000 messages one per packet take about a minute. Example:
#
#   bench/instructions.sh target/profiling/edgemq target/profiling/edgemq-bench 1:1 1 10000 --one-per-packet
#   bench/instructions.sh mosquitto target/profiling/edgemq-bench 1:1 1 10000 --one-per-packet
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,21p' "$0"; exit 2; }
if [[ $1 == mosquitto ]]; then bin=$(command -v mosquitto); else bin=$(realpath "$1"); fi
bench=$2 scenario=$3 qos=$4 messages=$5
shift 5
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
dir=$(mktemp -d)
vg_pid=
cleanup() {
  [ -n "$vg_pid" ] && kill -KILL "$vg_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# The benchmark stops its broker with SIGKILL once done; callgrind writes its counts
# only when the program exits or is asked to. So the broker runs behind a wrapper that
# the benchmark may kill; once the benchmark is done the counts are dumped
# (callgrind_control) and the broker stopped with SIGTERM.
case $(basename "$bin") in
  mosquitto*) side=mosquitto ;;
  *) side=edgemq ;;
esac
# Mosquitto started as root would run as the user `mosquitto`, which callgrind_control
# cannot reach: the wrapper keeps it root (`user root` in the benchmark's config).
stay_root=
[[ $side == mosquitto ]] && stay_root='[[ $1 == -c ]] && echo "user root" >>"$2"'
cat >"$dir/broker" <<EOF
#!/usr/bin/env bash
$stay_root
valgrind --tool=callgrind --callgrind-out-file="$dir/out.\$\$" "$bin" "\$@" &
echo \$! >"$dir/vg.pid"
wait
EOF
chmod +x "$dir/broker"

run() { # MESSAGES [bench options...]: the counts land in $dir/run-MESSAGES
  local m=$1
  shift
  rm -f "$dir"/out.* "$dir/vg.pid"
  "$bench" "--$side" "$dir/broker" --only "$side" --pin-core 1 --idle-conns 0 \
    --burst-messages 0 --settle-secs 0 --rate-secs 1 --rate 500 --drain-ms 500 \
    --scenarios "$scenario" --qos "$qos" --messages "$m" "$@" \
    >"$dir/bench.out" 2>"$dir/bench.err" \
    || { echo "the benchmark failed:" >&2; tail -5 "$dir/bench.err" >&2; exit 1; }
  vg_pid=$(cat "$dir/vg.pid")
  callgrind_control --dump "$vg_pid" >/dev/null 2>&1
  kill -TERM "$vg_pid"
  for _ in $(seq 300); do kill -0 "$vg_pid" 2>/dev/null || break; sleep 0.1; done
  vg_pid=
  # the dump (out.PID.1) holds everything up to the end of the benchmark
  mv "$(ls "$dir"/out.*.1 | head -1)" "$dir/run-$m"
  rm -f "$dir"/out.*
}
short=$messages long=$((messages * 3))
run "$short" "$@"
run "$long" "$@"
python3 - "$dir/run-$short" "$dir/run-$long" "$((long - short))" <<'PY'
import collections, re, subprocess, sys
def own_costs(path):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    total, costs = 0, collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = n
        else:
            # file:function [object]: the function is what is compared
            name = re.sub(r"^\S*?:(?=\S)", "", m.group(2))
            name = re.sub(r"\s*\[[^\]]*\]$", "", name)
            costs[name] += n
    return total, costs
(t1, a), (t2, b), n = own_costs(sys.argv[1]), own_costs(sys.argv[2]), int(sys.argv[3])
print(f"instructions per delivered message: {(t2 - t1) / n:,.0f}")
diff = {k: (v - a.get(k, 0)) / n for k, v in b.items()}
for name, v in sorted(diff.items(), key=lambda x: -x[1])[:15]:
    print(f"{v:8,.0f}  {name[:110]}")
PY
