#!/usr/bin/env bash
# Builds the release binary for a platform and lays out the image's root filesystem.
# The Dockerfile's build stage runs it for each platform of a multi-architecture build
# (on the build machine's own architecture, cross-compiling), and scripts/release.sh
# runs it for this machine's platform: one build recipe for both.
#
#   scripts/build-release.sh --print PLATFORM    the Rust target and cross toolchain
#   scripts/build-release.sh --setup PLATFORM    install that toolchain (rustup target,
#                                                Debian's cross gcc and libc; root)
#   scripts/build-release.sh PLATFORM ROOTFS     cargo build --release, then
#                                                scripts/image-rootfs.sh into ROOTFS
#
# PLATFORM    Rust target                      cross gcc / libc (Debian packages)
# linux/amd64 x86_64-unknown-linux-gnu         gcc-x86-64-linux-gnu, libc6-dev-amd64-cross
# linux/arm64 aarch64-unknown-linux-gnu        gcc-aarch64-linux-gnu, libc6-dev-arm64-cross
# linux/arm/v7 armv7-unknown-linux-gnueabihf   gcc-arm-linux-gnueabihf, libc6-dev-armhf-cross
#
# When PLATFORM is this machine's own, the build is native (target/release/edgemq, the
# libraries `ldd` lists); otherwise it cross-compiles with `--target` (ring's C code
# and the final link through the cross gcc) and takes the libraries from the cross
# libc (/usr/TRIPLE). glibc, not musl: the same allocator and libc on every
# architecture, and Debian ships the cross libc as packages.
#
# Environment:
#   EDGEMQ_RELEASE_BIN  an edgemq binary already built for PLATFORM: no cargo build
#                       (the tests pass the binary the other tests use)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf '[build-release] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[build-release] %s\n' "$*" >&2; }

# platform PLATFORM: sets TARGET (Rust), TRIPLE (multiarch / gcc prefix), DEBARCH.
platform() {
  case "$1" in
    linux/amd64) TARGET=x86_64-unknown-linux-gnu TRIPLE=x86_64-linux-gnu DEBARCH=amd64 ;;
    linux/arm64 | linux/arm64/v8) TARGET=aarch64-unknown-linux-gnu TRIPLE=aarch64-linux-gnu DEBARCH=arm64 ;;
    linux/arm/v7) TARGET=armv7-unknown-linux-gnueabihf TRIPLE=arm-linux-gnueabihf DEBARCH=armhf ;;
    *) die "platform '$1' is not built: linux/amd64, linux/arm64 or linux/arm/v7" ;;
  esac
  HOST="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
  [ -n "$HOST" ] || die "rustc not found"
  if [ "$TARGET" = "$HOST" ]; then CROSS=0; else CROSS=1; fi
}

cmd_print() {
  platform "$1"
  echo "target=$TARGET"
  echo "cross=$CROSS"
  if [ "$CROSS" = 1 ]; then
    echo "packages=gcc-${TRIPLE//_/-} libc6-dev-$DEBARCH-cross"
    echo "linker=$TRIPLE-gcc"
    echo "sysroot=/usr/$TRIPLE"
  fi
}

cmd_setup() {
  platform "$1"
  [ "$CROSS" = 1 ] || { log "setup: $1 is this machine's platform, nothing to install"; return; }
  rustup target add "$TARGET"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "gcc-${TRIPLE//_/-}" "libc6-dev-$DEBARCH-cross" binutils-"${TRIPLE//_/-}"
}

cmd_build() {
  local plat="$1" rootfs="$2" bin
  platform "$plat"
  if [ -n "${EDGEMQ_RELEASE_BIN:-}" ]; then
    bin="$EDGEMQ_RELEASE_BIN"
    [ -f "$bin" ] || die "EDGEMQ_RELEASE_BIN=$bin: no such file"
    log "using $bin (not built here)"
  elif [ "$CROSS" = 0 ]; then
    cargo build --release --locked --bin edgemq
    bin=target/release/edgemq
  else
    local var
    var="$(echo "$TARGET" | tr 'a-z-' 'A-Z_')"
    env "CARGO_TARGET_${var}_LINKER=$TRIPLE-gcc" "CC_${TARGET//-/_}=$TRIPLE-gcc" \
      "AR_${TARGET//-/_}=$TRIPLE-ar" \
      cargo build --release --locked --bin edgemq --target "$TARGET"
    bin="target/$TARGET/release/edgemq"
  fi
  if [ "$CROSS" = 1 ]; then
    EDGEMQ_IMAGE_SYSROOT="/usr/$TRIPLE" EDGEMQ_IMAGE_MULTIARCH="$TRIPLE" STRIP="$TRIPLE-strip" \
      bash scripts/image-rootfs.sh "$bin" "$rootfs"
  else
    bash scripts/image-rootfs.sh "$bin" "$rootfs"
  fi
  log "$plat: $bin -> $rootfs"
}

case "${1:-}" in
  --print) [ $# -eq 2 ] || die "usage: $0 --print PLATFORM"; cmd_print "$2" ;;
  --setup) [ $# -eq 2 ] || die "usage: $0 --setup PLATFORM"; cmd_setup "$2" ;;
  -*|"") awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
  *) [ $# -eq 2 ] || die "usage: $0 PLATFORM ROOTFS"; cmd_build "$1" "$2" ;;
esac
