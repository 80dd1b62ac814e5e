"""The Dockerfile's image and the test cluster's Docker-free image hold the same files.

The Dockerfile's runtime stage is `FROM scratch` plus the directory
scripts/image-rootfs.sh lays out; scripts/cluster.sh image builds its image with
scripts/cluster/image.py. Both are built here from the same binary and compared
entry by entry: path, type, mode and content. No cluster and no Docker needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR.parent))

from oci_registry import rootfs_entries  # noqa: E402


def _binary() -> str:
    binary = os.environ.get("EDGEMQ_BIN") or str(REPO / "target" / "debug" / "edgemq")
    if not os.path.isfile(binary):
        message = f"edgemq binary not found at {binary}: run `cargo build` or set EDGEMQ_BIN"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_entries(tar_path: Path) -> tuple:
    with tarfile.open(tar_path) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())[0]
        config = json.loads(outer.extractfile(manifest["Config"]).read())
        layer = outer.extractfile(manifest["Layers"][0]).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        for m in t.getmembers():
            name = m.name.rstrip("/")
            if m.isdir():
                out[name] = ("dir", m.mode, None)
            else:
                out[name] = ("file", m.mode, _digest(t.extractfile(m).read()))
            assert m.uid == 0 and m.gid == 0, f"{name} owned by {m.uid}:{m.gid}"
    return out, config["config"]


def test_the_dockerfile_rootfs_and_the_clusters_image_hold_the_same_files(tmp_path):
    binary = _binary()
    rootfs = tmp_path / "rootfs"
    r = subprocess.run(["bash", str(REPO / "scripts" / "image-rootfs.sh"), binary, str(rootfs)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    # What `scripts/cluster.sh image` does, without importing the result.
    stripped = tmp_path / "edgemq"
    stripped.write_bytes(Path(binary).read_bytes())
    subprocess.run(["strip", str(stripped)], check=True)
    os.chmod(stripped, 0o755)
    tar_path = tmp_path / "image.tar"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "cluster" / "image.py"),
                        str(tar_path), "edgemq:compare", f"{stripped}:/usr/local/bin/edgemq",
                        "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt",
                        "--entrypoint", "/usr/local/bin/edgemq", "--user", "65532:65532",
                        "--passwd", "edgemq:65532:65532", "--dir", "/tmp"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    docker_side = rootfs_entries(rootfs)
    cluster_side, config = _image_entries(tar_path)
    files = lambda entries: {k: v for k, v in entries.items() if v[0] == "file"}  # noqa: E731
    assert files(docker_side) == files(cluster_side), (
        f"only in the Dockerfile's: {sorted(set(docker_side) - set(cluster_side))}; "
        f"only in the cluster's: {sorted(set(cluster_side) - set(docker_side))}; "
        f"different: {sorted(k for k in files(docker_side) if files(cluster_side).get(k) not in (None, docker_side[k]))}")
    # Directories: the same ones; /tmp world-writable and sticky in both.
    dirs = lambda entries: {k for k, v in entries.items() if v[0] == "dir"}  # noqa: E731
    assert dirs(docker_side) == dirs(cluster_side)
    assert docker_side["tmp"][1] == cluster_side["tmp"][1] == 0o1777
    # The Dockerfile's USER and ENTRYPOINT match the cluster image's config.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert config["User"] == "65532:65532" and "USER 65532:65532" in dockerfile
    assert config["Entrypoint"] == ["/usr/local/bin/edgemq"]
    assert 'ENTRYPOINT ["/usr/local/bin/edgemq"]' in dockerfile
    assert f"ENV {config['Env'][0]}" in dockerfile
    size = sum(p.stat().st_size for p in rootfs.rglob("*") if p.is_file())
    sys.stderr.write(f"\n[measured] image filesystem: {size / 1e6:.1f} MB "
                     f"(binary {(rootfs / 'usr/local/bin/edgemq').stat().st_size / 1e6:.1f} MB)\n")
