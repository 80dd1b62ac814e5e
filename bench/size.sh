#!/usr/bin/env bash
# Sizes of an edgemq build, in MB (10^6 bytes):
#
#   bench/size.sh EDGEMQ...
#
# For each binary: stripped, its code (.text), its unwind tables (.eh_frame), and the
# image made from it (scripts/image-rootfs.sh: the binary stripped, its libraries, the
# CA roots), as files and as one gzip-compressed tar layer.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,8p' "$0"; exit 2; }
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '%-40s %9s %7s %9s %9s %9s\n' binary stripped .text .eh_frame image image.gz
for bin in "$@"; do
  strip -o "$dir/stripped" "$bin"
  section() { size -A "$dir/stripped" | awk -v s="$1" '$1 == s {printf "%.1f", $2 / 1e6}'; }
  rm -rf "$dir/rootfs"
  bash scripts/image-rootfs.sh "$bin" "$dir/rootfs" >/dev/null
  mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
  printf '%-40s %9s %7s %9s %9s %9s\n' "$bin" "$(mb "$(stat -c %s "$dir/stripped")")" \
    "$(section .text)" "$(section .eh_frame)" "$(mb "$(du -sb "$dir/rootfs" | cut -f1)")" \
    "$(mb "$(tar -C "$dir/rootfs" --sort=name -cf - . | gzip -9 | wc -c)")"
done
