#!/usr/bin/env bash
# Builds edgemq's image and chart and pushes both to an OCI registry, the way users
# receive them; records what was pushed, digests included.
#
#   scripts/release.sh [all|image|chart] --registry HOST[:PORT][/PATH] [options]
#
#   image  scripts/build-release.sh (cargo build --release, the image's root
#          filesystem) -> an OCI image made by umoci -> pushed by skopeo as
#          REGISTRY/edgemq:VERSION
#   chart  charts/edgemq with version = appVersion = VERSION and image.repository =
#          REGISTRY/edgemq -> `helm package` -> `helm push` to oci://REGISTRY/charts,
#          so `helm install edgemq oci://REGISTRY/charts/edgemq --version VERSION`
#          installs it and pulls the image by that tag
#   all    both (the default)
#
# Options:
#   --registry R      where to push (required), e.g. 127.0.0.1:5000/edgemq
#   --version V       the version (image tag, chart version and appVersion); default:
#                     the workspace's version in Cargo.toml. SemVer: 0.2.0, 0.2.0-rc.1
#   --platform P      the image's platform (default linux/amd64); see build-release.sh
#   --out DIR         where the OCI layout, the chart package and release.json go
#                     (default target/release-out/VERSION)
#   --plain-http      the registry speaks plain HTTP (a registry on loopback)
#
# Prints, and writes to OUT/release.json: version, image, imageDigest, chart,
# chartVersion, chartDigest. OUT/image.digest and OUT/chart.digest hold the digests
# alone.
#
# The release workflow (.github/workflows/release.yml) builds its multi-architecture
# image with the Dockerfile (whose build stage runs the same build-release.sh) and
# pushes the chart with `scripts/release.sh chart`. Tools: umoci and skopeo (Debian
# packages), helm (scripts/install-helm.sh or $HELM).
#
# Environment:
#   EDGEMQ_RELEASE_BIN  an edgemq binary to package instead of building one
#   HELM                the helm binary (default: the one scripts/install-helm.sh gives)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CALLER_PWD="$PWD"
cd "$HERE/.."

die() { printf '[release] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[release] %s\n' "$*" >&2; }

what=all
case "${1:-}" in all | image | chart) what="$1"; shift ;; esac
registry="" version="" platform=linux/amd64 out="" plain_http=0
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="${2:?--registry needs a value}"; shift 2 ;;
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --platform) platform="${2:?--platform needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}" out_given=1; shift 2 ;;
    --plain-http) plain_http=1; shift ;;
    *) die "unknown argument '$1' (see the comment at the top of $0)" ;;
  esac
done
[ -n "$registry" ] || die "--registry is required, e.g. --registry 127.0.0.1:5000/edgemq"
registry="${registry%/}"
[[ "$registry" =~ ^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] || die "--registry '$registry': expected HOST[:PORT][/PATH] in lower case"
if [ -z "$version" ]; then
  version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)"
fi
# SemVer 2 (Helm's rule for chart versions), without build metadata: `+` is not
# allowed in an image tag.
[[ "$version" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] \
  || die "--version '$version': expected SemVer such as 0.2.0 or 0.2.0-rc.1"
out="${out:-target/release-out/$version}"
# a relative --out is relative to where the script was called from
case "$out" in /*) ;; *) [ -n "${out_given:-}" ] && out="$CALLER_PWD/$out" ;; esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# release.json reports what this run pushed
rm -f "$out/image.digest" "$out/chart.digest"
image="$registry/edgemq"
charts="$registry/charts"

tls_flag=() helm_flag=()
if [ "$plain_http" = 1 ]; then tls_flag=(--dest-tls-verify=false); helm_flag=(--plain-http); fi

# ----------------------------------------------------------------------------- image
# The Dockerfile's runtime stage, as umoci config: keep the two in step (e2e checks).
ENTRYPOINT=/usr/local/bin/edgemq
USER_ID=65532:65532
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

push_image() {
  command -v umoci >/dev/null || die "umoci missing: apt-get install umoci"
  command -v skopeo >/dev/null || die "skopeo missing: apt-get install skopeo"
  local arch="${platform#linux/}"
  arch="${arch%%/*}"
  rm -rf "$out/rootfs" "$out/oci"
  bash scripts/build-release.sh "$platform" "$out/rootfs"
  local commit epoch created
  commit="${EDGEMQ_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  # Timestamps from the commit: the same commit and version give the same image.
  epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
  # The layer by GNU tar (names sorted, owner 0, mtimes of the commit), added verbatim:
  # umoci 0.4's own `insert` wrote a layer whose last file lacked its tar padding.
  (cd "$out/rootfs" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -cf "$out/layer.tar" -- *)
  umoci init --layout "$out/oci"
  umoci new --image "$out/oci:$version"
  umoci raw add-layer --image "$out/oci:$version" --history.created "$created" \
    --history.created_by "scripts/image-rootfs.sh" "$out/layer.tar"
  umoci config --image "$out/oci:$version" --no-history --created "$created" \
    --os linux --architecture "$arch" \
    --config.user "$USER_ID" --config.entrypoint "$ENTRYPOINT" --config.env "$PATH_ENV" \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=edgemq" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$commit" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
  umoci gc --layout "$out/oci"
  rm -rf "$out/rootfs" "$out/layer.tar"
  log "image: pushing $image:$version"
  skopeo copy --quiet "${tls_flag[@]}" --digestfile "$out/image.digest" \
    "oci:$out/oci:$version" "docker://$image:$version"
  log "image: $image:$version@$(cat "$out/image.digest")"
}

# ----------------------------------------------------------------------------- chart
push_chart() {
  local helm="${HELM:-}"
  [ -n "$helm" ] || helm="$(bash scripts/install-helm.sh)"
  rm -rf "$out/chart" && mkdir -p "$out/chart"
  cp -r charts/edgemq "$out/chart/edgemq"
  # The packaged chart's default image is the one pushed with it (the repository's
  # chart names no registry: its default is the bare name `edgemq`).
  python3 - "$out/chart/edgemq/values.yaml" "$image" <<'EOP'
import re, sys
path, image = sys.argv[1], sys.argv[2]
text = open(path).read()
new, n = re.subn(r"(?m)^(image:\n(?:  #.*\n)*  repository: ).*$", lambda m: m.group(1) + image, text)
if n != 1:
    sys.exit(f"{path}: no image.repository to set")
open(path, "w").write(new)
EOP
  "$helm" package "$out/chart/edgemq" --version "$version" --app-version "$version" -d "$out" >/dev/null
  local pkg="$out/edgemq-$version.tgz" pushed
  log "chart: pushing $(basename "$pkg") to oci://$charts"
  pushed="$("$helm" push "$pkg" "oci://$charts" "${helm_flag[@]}" 2>&1)" || die "helm push failed: $pushed"
  # "Pushed: HOST/charts/edgemq:V" / "Digest: sha256:..."
  sed -n 's/^Digest: //p' <<< "$pushed" > "$out/chart.digest"
  [ -s "$out/chart.digest" ] || die "helm push printed no digest: $pushed"
  rm -rf "$out/chart"
  log "chart: oci://$charts/edgemq --version $version @$(cat "$out/chart.digest")"
}

case "$what" in
  image) push_image ;;
  chart) push_chart ;;
  all) push_image; push_chart ;;
esac

python3 - "$out" "$version" "$image" "$charts" <<'EOP'
import json, os, sys
out, version, image, charts = sys.argv[1:]
def digest(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else None
record = {"version": version, "image": f"{image}:{version}", "imageDigest": digest("image.digest"),
          "chart": f"oci://{charts}/edgemq", "chartVersion": version,
          "chartDigest": digest("chart.digest")}
with open(os.path.join(out, "release.json"), "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
print(json.dumps(record, indent=2))
EOP
