#!/usr/bin/env bash
# Resident memory of an idle `edgemq run` on the bundled example, once a second.
#
#   bench/idle_rss.sh EDGEMQ [SECONDS]
#
# Starts EDGEMQ (an edgemq binary) on examples/standalone with a fresh state directory
# and, from its 3rd second to its SECONDS-th (default 130: two of the minute's
# reloads), reads VmRSS, RssAnon (heap and stacks) and RssFile (pages of the binary
# and libraries) from /proc/PID/status. Prints the reading at 3 s and the least,
# median and most of each over the whole run, in MB. The example's listeners must be
# free (1883 and the others it declares).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,11p' "$0"; exit 2; }
bin=$(realpath "$1") seconds=${2:-130}
cd "$(dirname "$0")/.."
state=$(mktemp -d)
"$bin" run --config examples/standalone --state "$state/state" >"$state/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$state"' EXIT
sleep 3
samples=$state/samples
for _ in $(seq 3 "$seconds"); do
  kill -0 $pid 2>/dev/null || { echo "edgemq stopped:" >&2; cat "$state/log" >&2; exit 1; }
  awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2} END {print ""}' /proc/$pid/status >>"$samples"
  sleep 1
done
python3 - "$samples" <<'PY'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
for i, name in enumerate(["VmRSS", "RssAnon", "RssFile"]):
    col = sorted(r[i] / 1024 for r in rows)
    print(f"{name:8} at 3 s {rows[0][i] / 1024:5.1f} MB   least {col[0]:5.1f}   "
          f"median {statistics.median(col):5.1f}   most {col[-1]:5.1f}   ({len(col)} s)")
PY
