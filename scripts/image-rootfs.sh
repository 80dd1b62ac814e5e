#!/usr/bin/env bash
# Lays out the edgemq image's root filesystem in a directory:
#
#   scripts/image-rootfs.sh BINARY OUTDIR
#
#   /usr/local/bin/edgemq              BINARY, stripped (serves controller, broker, run)
#   the libraries `ldd` lists           at their paths, the dynamic loader included
#                                       (none for a static build)
#   /etc/ssl/certs/ca-certificates.crt  the CA roots (bridges to AWS IoT Core, ACME)
#   /etc/passwd, /etc/group             root and the user edgemq, uid/gid 65532
#   /tmp                                mode 1777
#
# The Dockerfile's runtime stage is exactly this directory (FROM scratch). The test
# cluster builds its image without Docker (scripts/cluster.sh image, through
# scripts/cluster/image.py) with the same content; e2e/k8s/test_image.py compares
# the two file by file.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY OUTDIR" >&2; exit 2; }
bin="$1" out="$2"
[ -f "$bin" ] || { echo "$bin: no such file" >&2; exit 1; }
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || { echo "$CA missing: install package ca-certificates" >&2; exit 1; }

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
cp "$bin" "$out/usr/local/bin/edgemq"
"${STRIP:-strip}" "$out/usr/local/bin/edgemq"
chmod 755 "$out/usr/local/bin/edgemq"

# put SOURCE DEST: a library into the image, at DEST, with SOURCE's mode.
put() {
  mkdir -p "$out$(dirname "$2")"
  cp -L "$1" "$out$2"
  chmod "$(stat -L -c %a "$1")" "$out$2"
}

if [ -n "${EDGEMQ_IMAGE_SYSROOT:-}" ]; then
  sysroot="$EDGEMQ_IMAGE_SYSROOT" triple="${EDGEMQ_IMAGE_MULTIARCH:?EDGEMQ_IMAGE_MULTIARCH must name the multiarch triple of the binary}"
  # find NAME: the file NAME in the target root's library folders.
  find_lib() {
    local d
    for d in "$sysroot/lib/$triple" "$sysroot/lib" "$sysroot/usr/lib/$triple" "$sysroot/usr/lib"; do
      [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
    done
    echo "$1: not found under $sysroot (install the target's libc, e.g. libc6-dev-arm64-cross)" >&2
    return 1
  }
  # "[Requesting program interpreter: /lib/ld-linux-aarch64.so.1]"
  interp="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
  if [ -n "$interp" ]; then
    put "$(find_lib "$(basename "$interp")")" "$interp"
    # " 0x0000000000000001 (NEEDED)  Shared library: [libc.so.6]"; one level is enough:
    # libc, libm and libgcc_s need only the loader and each other. The loader, also
    # NEEDED by some binaries, is there already.
    readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r name; do
      [ "$name" = "$(basename "$interp")" ] && continue
      put "$(find_lib "$name")" "/lib/$triple/$name"
    done
  fi
# "libX.so => /lib/.../libX.so (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
elif ldd "$bin" >/dev/null 2>&1; then
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do put "$lib" "$lib"; done
fi

cp -L "$CA" "$out$CA"
chmod 644 "$out$CA"
printf 'root:x:0:0:root:/root:/sbin/nologin\nedgemq:x:65532:65532:edgemq:/:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nedgemq:x:65532:\n' > "$out/etc/group"
chmod 644 "$out/etc/passwd" "$out/etc/group"
