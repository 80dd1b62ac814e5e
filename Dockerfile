# syntax=docker/dockerfile:1
# The edgemq image: one binary (`edgemq controller`, `edgemq broker`, `edgemq run`),
# the shared libraries it links, the CA roots and a non-root user; nothing else (no
# shell, no package manager).
#
#   docker build -t edgemq:0.1.0 .                                   this machine's platform
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t IMAGE --push .
#
# The build stage runs on the build machine's own platform ($BUILDPLATFORM) and
# cross-compiles for each target platform: scripts/build-release.sh maps
# $TARGETPLATFORM to a Rust target (x86_64/aarch64-unknown-linux-gnu,
# armv7-unknown-linux-gnueabihf), installs its cross gcc and libc (`--setup`), builds,
# and lays out the root filesystem with scripts/image-rootfs.sh. No emulation: an arm
# image builds in the time of an amd64 one. scripts/release.sh runs the same two
# scripts and makes the same runtime stage with umoci (e2e/k8s/test_release.py keeps
# the USER, ENTRYPOINT and ENV below equal to what it writes).

FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG TARGETPLATFORM
WORKDIR /src
# The toolchain first: cached per platform across source changes.
COPY scripts/build-release.sh scripts/build-release.sh
RUN bash scripts/build-release.sh --setup "$TARGETPLATFORM"
COPY . .
# The commit `edgemq version` reports (the build context holds no .git).
ARG EDGEMQ_GIT_COMMIT=unknown
ENV EDGEMQ_GIT_COMMIT=$EDGEMQ_GIT_COMMIT
# Stripped: the release binary is about 29 MB stripped against 328 MB with debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN bash scripts/build-release.sh "$TARGETPLATFORM" /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
# uid/gid 65532 (`edgemq` in /etc/passwd): Kubernetes' runAsNonRoot accepts it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/edgemq"]
