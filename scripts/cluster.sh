#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the Kubernetes e2e tests
# and CI: no Docker, no registry, nothing downloaded but Debian packages.
#
#   scripts/cluster.sh install          apt-get the build tools and runtime (idempotent)
#   scripts/cluster.sh build            build Kubernetes 1.20 from Debian's source package
#                                       (cached outside the repository; ~6 min cold on
#                                       2 idle cores, seconds when cached)
#   scripts/cluster.sh start            start etcd, the control plane, containerd, kubelet
#                                       and kube-proxy; wait for the Node to be Ready
#   scripts/cluster.sh stop             stop everything, remove links and iptables chains
#   scripts/cluster.sh image BIN [TAG]  build a docker-archive image holding BIN and
#                                       import it into the cluster's containerd
#   scripts/cluster.sh tag IMAGE NAME   give an imported image a second name
#   scripts/cluster.sh env              print `export KUBECONFIG=...` (and EDGEMQ_KUBECTL,
#                                       a kubectl of the cluster's version)
#   scripts/cluster.sh status           exit 0 when the cluster is up
#
# Why it looks like this:
# - Debian bookworm ships the full Kubernetes source (with vendor/) as the source
#   package `kubernetes`; its vendored reflect2 v1.0.1 crashes under Go 1.19 (SIGSEGV
#   in mapiterinit on the first custom-resource create), so Debian's reflect2 1.0.2
#   replaces it before the build.
# - containerd needs `restrict_oom_score_adj = true`: here a process may not lower its
#   OOM score, and without it runc fails with "failed to update
#   /proc/self/oom_score_adj: Permission denied".
# - The kubelet refuses a loopback node IP and this kernel has no dummy links, so the
#   node gets a /32 address on a veth pair that never leaves the machine.
# - Images are docker-archive tars imported with `ctr`; pods use imagePullPolicy: Never.
#   The sandbox (pause) image is built with gcc -static from the Kubernetes tree.
# - Processes are ended between sessions but links, iptables chains and containerd
#   state stay: `start` tolerates (cleans or reuses) what a killed run left behind.
#
# One cluster per machine at a time: the links, the node address, the pod subnet and
# the KUBE-* iptables chains are machine-wide (`start` and `stop` remove the chains).
#
# Environment:
#   EDGEMQ_CLUSTER_DIR  state dir (default /tmp/edgemq-cluster), wiped by each fresh
#                       `start` (images must be imported again after it):
#                         kubeconfig      admin kubeconfig (token in system:masters)
#                         ports.env       the free ports picked for this run
#                         pki/            CA, apiserver cert, SA key pair, tokens.csv
#                         etc/            component kubeconfigs, containerd.toml,
#                                         containerd/certs.d/HOST/hosts.toml (mirrors),
#                                         kubelet.yaml, kube-proxy.yaml, cni/
#                         logs/NAME.log   pids/NAME.pid   one per component
#                         etcd/ containerd/ runc/ kubelet/ cni/   runtime data
#                         images/         the image tars that were imported
#   EDGEMQ_K8S_CACHE    built binaries (default ~/.cache/edgemq/k8s-<version>): bin/
#                       kube-apiserver kube-controller-manager kube-scheduler kubelet
#                       kube-proxy pause kubectl, VERSION
#   EDGEMQ_NODE_IP      the node's address on the veth pair (default 10.254.254.1)
#   EDGEMQ_POD_CIDR     the pod subnet of the CNI bridge (default 10.244.77.0/24)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_VERSION_SHORT="1.20.2"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/edgemq"
CACHE="${EDGEMQ_K8S_CACHE:-$CACHE_ROOT/k8s-$K8S_VERSION}"
STATE="${EDGEMQ_CLUSTER_DIR:-/tmp/edgemq-cluster}"
NODE_IP="${EDGEMQ_NODE_IP:-10.254.254.1}"
POD_CIDR="${EDGEMQ_POD_CIDR:-10.244.77.0/24}"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"
VETH="edgemq-node"      # carries NODE_IP
VETH_PEER="edgemq-nodep"
BRIDGE="edgemq-cni0"    # the CNI bridge (interface names are at most 15 characters)
NODE_NAME="edgemq-node"
PAUSE_IMAGE="localhost/edgemq/pause:$K8S_VERSION_SHORT"
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --------------------------------------------------------------------------- install
PACKAGES=(golang-go rsync jq dpkg-dev etcd-server containerd runc containernetworking-plugins
  iptables conntrack iproute2 kubernetes-client golang-github-modern-go-reflect2-dev openssl
  gcc binutils python3 ca-certificates)

cmd_install() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
    # Another package (a cloud SDK's kubectl) may own /usr/bin/kubectl; then
    # kubernetes-client cannot be installed and `build` extracts its kubectl into the
    # cache instead (a client of the server's own version).
    if [ "$p" = kubernetes-client ] && [ -e /usr/bin/kubectl ]; then continue; fi
    missing+=("$p")
  done
  local src
  src="$(python3 "$HERE/cluster/sources.py" bookworm)"
  if [ -z "$src" ] && [ ${#missing[@]} -eq 0 ]; then
    log "install: everything is there"
    return
  fi
  if [ -n "$src" ]; then
    log "install: adding a deb-src entry derived from the deb entries"
    printf '%s\n' "$src" | as_root tee /etc/apt/sources.list.d/edgemq-deb-src.sources >/dev/null
  fi
  as_root apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    log "install: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # The package's own containerd service is not used (we run our own instance).
  if command -v systemctl >/dev/null 2>&1; then as_root systemctl disable --now containerd >/dev/null 2>&1 || true; fi
}

# ----------------------------------------------------------------------------- build
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

cached() {
  local b
  for b in "${BINARIES[@]}" pause kubectl; do [ -x "$CACHE/bin/$b" ] || return 1; done
}

cmd_build() {
  local root old pid
  root="$(dirname "$CACHE")"
  # Left over from an interrupted build (its builder is gone): remove.
  for old in "$root"/.build.*; do
    [ -d "$old" ] || continue
    pid="$(cat "$old/pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || rm -rf "$old"
  done
  if cached; then
    log "build: cached in $CACHE"
    return
  fi
  for c in go rsync jq gcc dpkg-source; do command -v "$c" >/dev/null || die "$c missing: run '$0 install'"; done
  local work src
  mkdir -p "$root"
  work="$(mktemp -d "$root/.build.XXXXXX")"
  echo $$ > "$work/pid"
  BUILD_WORK="$work"
  trap 'rm -rf "$BUILD_WORK"' EXIT
  log "build: Kubernetes $K8S_VERSION in $work"
  (cd "$work" && apt-get source -qq -o APT::Sandbox::User=root --download-only "kubernetes=$K8S_VERSION" >/dev/null) \
    || die "apt-get source failed: is there a deb-src entry? ('$0 install' adds one)"
  (cd "$work" && dpkg-source -x ./*.dsc src >/dev/null 2>&1) || die "unpacking the source failed"
  src="$work/src"

  # The reflect2 patch: vendored v1.0.1 crashes under Go 1.19; Debian's 1.0.2 does not.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "$r2 missing: run '$0 install'"
  cp "$r2"/*.go "$r2"/*.s "$src/vendor/github.com/modern-go/reflect2/"
  rm -f "$src"/vendor/github.com/modern-go/reflect2/{go_above_17.go,go_below_17.go,go_below_19.go}

  mkdir -p "$src/.go/src/k8s.io"
  ln -s "$src" "$src/.go/src/k8s.io/kubernetes"
  local t0=$SECONDS
  (
    cd "$src/.go/src/k8s.io/kubernetes"
    export GOPATH="$src/.go" GOCACHE="$work/gocache" GOFLAGS=-mod=vendor GO111MODULE=off CGO_ENABLED=0
    export KUBE_GIT_VERSION="v$K8S_VERSION_SHORT" KUBE_GIT_TREE_STATE=clean
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"
  ) > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; die "make failed (log above)"; }
  log "build: Kubernetes binaries in $((SECONDS - t0)) s"

  mkdir -p "$work/out/bin"
  local b
  for b in "${BINARIES[@]}"; do cp "$src/_output/bin/$b" "$work/out/bin/$b"; done
  gcc -Os -static -o "$work/out/bin/pause" "$src/build/pause/linux/pause.c" -DVERSION="$K8S_VERSION_SHORT"
  strip "$work/out/bin/pause"
  # A kubectl of the server's version: Debian's kubernetes-client, or its kubectl
  # extracted from the .deb when another package owns /usr/bin/kubectl.
  if dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q "install ok installed"; then
    cp /usr/bin/kubectl "$work/out/bin/kubectl"
  else
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "kubernetes-client=$K8S_VERSION" >/dev/null && dpkg-deb -x kubernetes-client_*.deb client)
    cp "$work/client/usr/bin/kubectl" "$work/out/bin/kubectl"
  fi
  echo "$K8S_VERSION" > "$work/out/VERSION"
  rm -rf "$CACHE"
  mv "$work/out" "$CACHE"
  log "build: done in $CACHE"
}

# ------------------------------------------------------------------------- processes
SOCK="$STATE/containerd/containerd.sock"
RUNC_ROOT="$STATE/runc"
CNI_NETWORK="edgemq-pods"
KUBECTL() { "$CACHE/bin/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

# The pid recorded for a component, if that process is alive and is ours (its
# command line names the binary and this state dir: a recycled pid is not).
live_pid() {
  local pid
  pid="$(cat "$STATE/pids/$1.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && alive "$pid" || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" || return 1
  [[ "$cmdline" == *"$1"* && "$cmdline" == *"$STATE"* ]] || return 1
  echo "$pid"
}

# Alive and not a zombie (a killed component whose parent is gone waits for init).
alive() { local st; st="$(awk '{ print $3 }' 2>/dev/null < "/proc/$1/stat")" && [ -n "$st" ] && [ "$st" != Z ]; }

# Stops pids: TERM, then KILL after a deadline.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + 10)) pid any
  while [ $SECONDS -lt $deadline ]; do
    any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    [ $any -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

# Stops components (named as in COMPONENTS) together, by their recorded pids.
stop_components() {
  local c pid pids=() names=() t0=$SECONDS
  for c in "$@"; do
    if pid="$(live_pid "$c")"; then pids+=("$pid"); names+=("$c"); fi
    rm -f "$STATE/pids/$c.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  stop_pids "${pids[@]}"
  log "stop: ${names[*]} (pids ${pids[*]}) in $((SECONDS - t0)) s"
}

# Processes whose command line mentions our containerd (the shims get -address SOCK).
shim_pids() {
  local d
  for d in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$d/cmdline" | grep -q "^containerd-shim.*$SOCK\|/containerd-shim[^ ]* .*$SOCK" && echo "${d#/proc/}"
  done
  return 0
}

# Everything a running or killed cluster leaves behind, in order: node agents, pod
# processes (runc knows them: its root is ours), shims, containerd, control plane;
# then mounts under the state dir (overlay rootfs, shm, netns, kubelet volumes),
# iptables chains, the CNI bridge and the veth pair.
teardown() {
  local r id
  stop_components kubelet kube-proxy
  for r in "$RUNC_ROOT"/*; do
    [ -d "$r" ] || continue
    for id in $(runc --root "$r" list -q 2>/dev/null); do
      runc --root "$r" delete --force "$id" >/dev/null 2>&1 || true
    done
  done
  local shims
  shims="$(shim_pids)"
  if [ -n "$shims" ]; then
    log "stop: containerd shims $(echo $shims)"
    # shellcheck disable=SC2086
    stop_pids $shims
  fi
  stop_components containerd kube-scheduler kube-controller-manager kube-apiserver
  stop_components etcd
  unmount_state
  if [ -x "$CACHE/bin/kube-proxy" ]; then
    "$CACHE/bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  python3 "$HERE/cluster/iptables_cleanup.py" "$CNI_NETWORK" --kube
  ip link del "$BRIDGE" >/dev/null 2>&1 || true
  ip link del "$VETH" >/dev/null 2>&1 || true
}

unmount_state() {
  local i mounts m
  for i in 1 2 3 4 5; do
    # mountinfo field 5 is the mount point (spaces escaped as \040); deepest first
    mounts="$(awk -v s="$STATE/" '$5 == substr(s, 1, length(s) - 1) || index($5, s) == 1 { print $5 }' /proc/self/mountinfo | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)"
    [ -n "$mounts" ] || return 0
    while IFS= read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<< "$mounts"
  done
  log "warning: mounts left under $STATE"
}

# The state dir is wiped on a fresh start: only when it is ours (marker) or new.
prepare_state() {
  if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -e "$STATE/.edgemq-cluster" ]; then
    die "$STATE exists and is not a cluster state dir; set EDGEMQ_CLUSTER_DIR elsewhere"
  fi
  mkdir -p "$STATE"
  touch "$STATE/.edgemq-cluster"
  local d
  for d in pki etc logs pids etcd containerd runc kubelet cni images ports.env kubeconfig; do rm -rf "${STATE:?}/$d"; done
  mkdir -p "$STATE"/{pki,etc/cni,logs,pids,etcd,containerd,runc,kubelet,cni/ipam,images}
  chmod 700 "$STATE/pki" "$STATE/etcd"
}

# Starts a component in the background: log and pid in the state dir.
launch() {
  local name="$1"; shift
  setsid "$@" >> "$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name.pid"
}

# Polls until "$@" succeeds or the deadline (seconds) passes.
wait_until() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${timeout}s waiting for $what; logs in $STATE/logs"
      return 1
    fi
    sleep 0.5
  done
}

# ----------------------------------------------------------------------- certificates
make_pki() {
  local pki="$STATE/pki"
  cat > "$pki/openssl.cnf" <<EOC
[req]
distinguished_name = dn
prompt = no
[dn]
CN = edgemq test cluster CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, IP:$NODE_IP, IP:$SERVICE_IP, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, DNS:localhost
EOC
  (
    cd "$pki"
    openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 3650 \
      -config openssl.cnf -extensions v3_ca 2>/dev/null
    openssl req -new -nodes -newkey rsa:2048 -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -extfile openssl.cnf -extensions v3_server -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # token,user,uid,"groups": the admin, and one identity per component so that
    # RBAC's bootstrap bindings (and the Node authorizer) apply as in a real cluster
    {
      echo "$(openssl rand -hex 24),admin,admin,\"system:masters\""
      echo "$(openssl rand -hex 24),system:kube-controller-manager,system:kube-controller-manager"
      echo "$(openssl rand -hex 24),system:kube-scheduler,system:kube-scheduler"
      echo "$(openssl rand -hex 24),system:kube-proxy,system:kube-proxy"
      echo "$(openssl rand -hex 24),system:node:$NODE_NAME,system:node:$NODE_NAME,\"system:nodes\""
    } > tokens.csv
    chmod 600 ./*.key tokens.csv
  )
}

# kubeconfig FILE USER: a kubeconfig for USER's token in tokens.csv
kubeconfig() {
  local token
  token="$(awk -F, -v u="$2" '$2 == u { print $1 }' "$STATE/pki/tokens.csv")"
  cat > "$1" <<EOC
apiVersion: v1
kind: Config
clusters:
- name: edgemq
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$STATE/pki/ca.crt")
users:
- name: $2
  user:
    token: $token
contexts:
- name: edgemq
  context: {cluster: edgemq, user: "$2", namespace: default}
current-context: edgemq
EOC
  chmod 600 "$1"
}

# ----------------------------------------------------------------------------- configs
write_configs() {
  local etc="$STATE/etc"
  kubeconfig "$STATE/kubeconfig" admin
  kubeconfig "$etc/controller-manager.kubeconfig" system:kube-controller-manager
  kubeconfig "$etc/scheduler.kubeconfig" system:kube-scheduler
  kubeconfig "$etc/kube-proxy.kubeconfig" system:kube-proxy
  kubeconfig "$etc/kubelet.kubeconfig" "system:node:$NODE_NAME"

  # restrict_oom_score_adj: runc may not lower oom_score_adj here (no
  # CAP_SYS_RESOURCE); it then clamps pods' values instead of failing.
  # netns_mounts_under_state_dir: pod network namespaces live under our state dir,
  # so a killed run's are found and unmounted with the rest.
  # registry.config_path: one hosts.toml per registry (mirrors, plain-HTTP loopback
  # registries) under etc/containerd/certs.d/HOST/, read at each pull, so a test can
  # add a mirror to a running cluster.
  mkdir -p "$etc/containerd/certs.d"
  cat > "$etc/containerd.toml" <<EOC
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$RUNC_ROOT"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$etc/containerd/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$etc/cni"
    max_conf_num = 1
EOC

  # One network: a bridge with host-local addresses and masquerade, portmap for
  # hostPorts. containerd sets up each pod's loopback itself (with the loopback
  # plugin from bin_dir), so it is not part of this chain.
  cat > "$etc/cni/10-edgemq.conflist" <<EOC
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOC

  # oomScoreAdj 0: lowering it is not permitted here (see restrict_oom_score_adj).
  # Eviction and image GC thresholds are set so that a full CI disk does not evict
  # the test's pods or delete the imported images.
  cat > "$etc/kubelet.yaml" <<EOC
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
oomScoreAdj: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: []
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# report the node's status changes (Ready) within 2 s instead of 10 s
nodeStatusUpdateFrequency: 2s
volumePluginDir: $STATE/kubelet/volume-plugins
EOC

  cat > "$etc/kube-proxy.yaml" <<EOC
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $etc/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOC
}

# ------------------------------------------------------------------------------- start
node_ready() {
  [ "$(KUBECTL get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

running() {
  local c
  for c in "${COMPONENTS[@]}"; do live_pid "$c" >/dev/null || return 1; done
  [ -f "$STATE/kubeconfig" ] && KUBECTL get --raw /readyz >/dev/null 2>&1 && node_ready
}

setup_network() {
  if ! ip link show "$VETH" >/dev/null 2>&1; then
    ip link add "$VETH" type veth peer name "$VETH_PEER"
  fi
  ip addr replace "$NODE_IP/32" dev "$VETH"
  ip link set "$VETH" up
  ip link set "$VETH_PEER" up
  sysctl -qw net.ipv4.ip_forward=1
  # pods' traffic crosses the bridge: let iptables (kube-proxy's rules) see it
  modprobe br_netfilter >/dev/null 2>&1 || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  return 0
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (network links, iptables, containers)"
  local t0=$SECONDS
  if running; then
    log "start: already running in $STATE"
    storage
    echo "export KUBECONFIG=$STATE/kubeconfig"
    return
  fi
  cached || cmd_build
  for c in etcd containerd runc ip iptables openssl; do command -v "$c" >/dev/null || die "$c missing: run '$0 install'"; done
  log "start: cleaning up what an earlier run left"
  teardown
  prepare_state
  local ports
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KUBELET_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT \
    <<< "$(python3 "$HERE/cluster/free_ports.py" 6)"
  declare -p ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KUBELET_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT \
    | sed 's/^declare -- //' > "$STATE/ports.env"
  make_pki
  write_configs
  setup_network
  local bin="$CACHE/bin" etc="$STATE/etc" pki="$STATE/pki"
  # The kubelet's in-tree AWS credential provider would ask the EC2 metadata
  # address for credentials at startup: never leave the machine.
  export AWS_EC2_METADATA_DISABLED=true

  launch etcd etcd --name edgemq --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "edgemq=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
    --log-outputs stderr
  launch containerd containerd --config "$etc/containerd.toml"
  launch kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --insecure-port 0 \
    --advertise-address "$NODE_IP" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-signing-key-file "$pki/sa.key" --service-account-key-file "$pki/sa.pub" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true \
    --cert-dir "$pki/apiserver-generated"
  wait_until "etcd" 30 etcdctl_health || die "etcd did not come up (see $STATE/logs/etcd.log)"
  wait_until "the apiserver" 90 KUBECTL get --raw /readyz || { tail -20 "$STATE/logs/kube-apiserver.log" >&2; die "kube-apiserver not ready"; }
  log "start: apiserver ready after $((SECONDS - t0)) s"

  launch kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$etc/controller-manager.kubeconfig" \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --leader-elect=false \
    --port 0 --secure-port 0
  launch kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$etc/scheduler.kubeconfig" --leader-elect=false --port 0 --secure-port 0

  wait_until "containerd" 30 ctr -a "$SOCK" version || die "containerd did not come up (see $STATE/logs/containerd.log)"
  import_pause
  launch kubelet "$bin/kubelet" \
    --config "$etc/kubelet.yaml" --kubeconfig "$etc/kubelet.kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$SOCK" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki"
  launch kube-proxy "$bin/kube-proxy" --config "$etc/kube-proxy.yaml"

  wait_until "the Node to be Ready" 120 node_ready || { tail -20 "$STATE/logs/kubelet.log" >&2; die "node not Ready"; }
  wait_until "the default ServiceAccount" 60 KUBECTL get serviceaccount default -n default \
    || die "no default ServiceAccount (see $STATE/logs/kube-controller-manager.log)"
  for c in "${COMPONENTS[@]}"; do live_pid "$c" >/dev/null || die "$c exited (see $STATE/logs/$c.log)"; done
  storage
  log "start: Node Ready in $((SECONDS - t0)) s; state in $STATE"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

# Volumes like k3s' local-path offers, without a provisioner: a default StorageClass
# binding on first use, and hostPath PersistentVolumes under the state dir, writable by
# pods' non-root users (hostPath ignores fsGroup), tied to the node as local-path ties
# them (a required node affinity on the node's host name).
STORAGE_VOLUMES=40
storage() {
  local dir="$STATE/volumes" i pvs="" pv existing
  # A volume whose claim is gone (Released) is wiped and offered again, so a cluster
  # that stays up across test runs does not run out of volumes; so is an unused one
  # from before volumes had their node affinity (it cannot be added to a volume).
  for pv in $(KUBECTL get pv -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}{range .items[?(@.status.phase=="Available")]}{.metadata.name}{" "}{.spec.nodeAffinity}{"\n"}{end}' 2>/dev/null | awk 'NF == 1'); do
    case "$pv" in local-pv*) ;; *) continue ;; esac
    KUBECTL delete pv "$pv" >/dev/null 2>&1 || true
    rm -rf "${dir:?}/${pv#local-}"
  done
  # A bound volume stays as it is (a node affinity cannot be added to it).
  existing=" $(KUBECTL get pv -o jsonpath='{.items[*].metadata.name}' 2>/dev/null) "
  for i in $(seq 1 "$STORAGE_VOLUMES"); do
    case "$existing" in *" local-pv$i "*) continue ;; esac
    mkdir -p "$dir/pv$i"
    chmod 0777 "$dir/pv$i"
    pvs+="
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv$i}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath: {path: $dir/pv$i, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}"
  done
  KUBECTL apply -f - >/dev/null <<EOY || die "could not create the StorageClass and volumes"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
$pvs
EOY
}

etcdctl_health() {
  python3 - "$ETCD_PORT" <<'EOP'
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if b'"true"' in r.read() else 1)
EOP
}

import_pause() {
  local tar="$STATE/images/pause.tar"
  python3 "$HERE/cluster/image.py" "$tar" "$PAUSE_IMAGE" "$CACHE/bin/pause:/pause" --entrypoint /pause --user 65535:65535
  ctr -a "$SOCK" -n k8s.io images import "$tar" >/dev/null
}

# -------------------------------------------------------------------------------- stop
cmd_stop() {
  [ "$(id -u)" -eq 0 ] || die "stop needs root"
  teardown
  log "stop: done (logs stay in $STATE/logs)"
}

# ------------------------------------------------------------------------------- image
cmd_image() {
  local binary="${1:-}" tag="${2:-edgemq:dev}"
  [ -n "$binary" ] && [ -f "$binary" ] || die "usage: $0 image BINARY [TAG]"
  [ -S "$SOCK" ] || die "the cluster's containerd is not running ($SOCK); run '$0 start'"
  mkdir -p "$STATE/images"
  local work
  work="$(mktemp -d "$STATE/images/.build.XXXXXX")"
  cp "$binary" "$work/edgemq"
  # strip a copy (a debug build is hundreds of MB)
  strip "$work/edgemq" 2>/dev/null || true
  local file="$STATE/images/$(echo "$tag" | tr '/:' '__').tar"
  python3 "$HERE/cluster/image.py" "$file" "$tag" \
    "$work/edgemq:/usr/local/bin/edgemq" \
    /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --entrypoint /usr/local/bin/edgemq --user 65532:65532 --passwd edgemq:65532:65532 --dir /tmp
  rm -rf "$work"
  ctr -a "$SOCK" -n k8s.io images import "$file" >/dev/null
  log "image: $tag ($(du -h "$file" | cut -f1), $file) imported"
}

# A second name for an imported image (a pod-template change without a second import).
cmd_tag() {
  local src="${1:-}" dst="${2:-}"
  [ -n "$src" ] && [ -n "$dst" ] || die "usage: $0 tag IMAGE NEW_NAME"
  [ -S "$SOCK" ] || die "the cluster's containerd is not running ($SOCK); run '$0 start'"
  # containerd keeps names in their normalized form: find the one `src` stands for.
  local full
  full="$(ctr -a "$SOCK" -n k8s.io images ls -q | awk -v s="$src" '$0 == s || substr($0, length($0) - length(s)) == "/" s { print; exit }')"
  [ -n "$full" ] || die "image $src not found in the cluster's containerd"
  local prefix="${full%"$src"}"
  ctr -a "$SOCK" -n k8s.io images tag --force "$full" "$prefix$dst" >/dev/null
  log "image: $dst is $src"
}

cmd_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  # a kubectl of the cluster's version
  echo "export EDGEMQ_KUBECTL=$CACHE/bin/kubectl"
}

# Exit status 0 when the cluster of this state dir is up (Node Ready).
cmd_status() {
  if running; then log "status: running in $STATE"; else log "status: not running"; return 1; fi
}

main() {
  case "${1:-}" in
    install) cmd_install ;;
    build) cmd_build ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    image) shift; cmd_image "$@" ;;
    tag) shift; cmd_tag "$@" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *) awk '/^# Why/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 2 ;;
  esac
}

main "$@"; exit $?
