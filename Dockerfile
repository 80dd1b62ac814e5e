# The edgemq image: one binary (`edgemq controller`, `edgemq broker`, `edgemq run`),
# the shared libraries it links, the CA roots and a non-root user; nothing else (no
# shell, no package manager).
#
#   docker build -t edgemq:0.1.0 .
#
# The runtime stage is the directory scripts/image-rootfs.sh lays out; the test
# cluster's Docker-free image (scripts/cluster.sh image) holds the same files, which
# e2e/k8s/test_image.py checks.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Stripped: the release binary is about 29 MB stripped against 328 MB with debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin edgemq \
 && bash scripts/image-rootfs.sh target/release/edgemq /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
# uid/gid 65532 (`edgemq` in /etc/passwd): Kubernetes' runAsNonRoot accepts it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/edgemq"]
