#!/usr/bin/env bash
# Installs the real peers the tests run against: Mosquitto 2.0 and its clients,
# Pebble (an RFC 8555 ACME server) with pebble-challtestsrv, openssl, Paho MQTT
# (Python), MQTT.js (Node), pytest; for DNS-01: BIND 9 (`named`) and Knot DNS
# (`knotd`), which take RFC 2136 updates with TSIG, and `dig`; Prometheus and
# promtool (the monitoring rules and a real scrape); Debian's docker-registry, umoci and
# skopeo (the image and chart through a real registry), actionlint and shellcheck (the
# release workflow); moto's server (an AWS API emulator
# for the Route 53, AWS IoT and Secrets Manager tests; boto3 comes with it); for the
# Kubernetes tests, a single-node Kubernetes 1.20 built from Debian's source package
# (scripts/cluster.sh) and Helm 4 (scripts/install-helm.sh). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || need_apt+=(bind9)
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || need_apt+=(knot)
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# Config from git: the real git command and OpenSSH's ssh-keygen (signing and verifying).
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
# Monitoring: promtool (rule checks and unit tests) and a real Prometheus server.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Release: a real OCI registry (the CNCF distribution registry), umoci (builds the OCI
# image) and skopeo (pushes it); shellcheck, which actionlint runs on the release
# workflow's scripts.
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v umoci >/dev/null 2>&1 || need_apt+=(umoci)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# The Debian package starts a system Mosquitto on 1883; the tests start their own
# on free ports and need none.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi
# Likewise BIND's and Knot's services on 53: the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop named >/dev/null 2>&1 || true
  systemctl stop knot >/dev/null 2>&1 || true
  # And Prometheus' own on 9090 (with its node exporter), and the registry's on 5000:
  # the tests start their own.
  systemctl stop prometheus prometheus-node-exporter docker-registry >/dev/null 2>&1 || true
fi

python3 -m pip install -q -r e2e/requirements.txt
command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
(cd e2e && npm install --silent --no-audit --no-fund)
# Kubernetes tests: the single-node cluster built from Debian's Kubernetes source package
# (cached outside the repository: only a fresh machine builds it) and Helm 4.
bash scripts/cluster.sh install
bash scripts/cluster.sh build
bash scripts/install-helm.sh >/dev/null
