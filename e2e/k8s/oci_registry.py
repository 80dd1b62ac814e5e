"""A real OCI registry for the release tests: Debian's `docker-registry` (the CNCF
distribution registry) on 127.0.0.1 and a free port, with its own storage, stopped by
pid; and scripts/release.sh pushing edgemq's image and chart to it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent
sys.path.insert(0, str(K8S_DIR.parent))

import support  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def helm_path() -> str:
    r = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        support._missing(f"scripts/install-helm.sh failed (pip needed):\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


def binary() -> str:
    """The binary the image holds: $EDGEMQ_RELEASE_BIN (a release build), else the one
    the other tests run ($EDGEMQ_BIN or target/debug/edgemq): the image's layout and
    config do not depend on the build profile, and CI builds no release binary."""
    return os.environ.get("EDGEMQ_RELEASE_BIN") or support.edgemq_bin()


class Registry:
    def __init__(self, tmp: Path):
        self.exe = support.require("docker-registry", "docker-registry")
        support.require("umoci", "umoci")
        support.require("skopeo", "skopeo")
        self.tmp = tmp
        self.port = support.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = tmp / "registry.yml"
        # No debug or metrics listener: only the API on loopback.
        self.config.write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage:\n  filesystem: {{rootdirectory: {tmp / 'storage'}}}\n"
            f"http:\n  addr: {self.host}\n")
        self.log_path = tmp / "registry.log"

    def start(self) -> "Registry":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.exe, "serve", str(self.config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        support._LIVE.append(self.proc)
        support.poll(lambda: self.get("/v2/")[0] == 200, 20, 0.1, f"the registry on {self.host}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            support._stop_proc(self.proc)
            self._log.close()

    def get(self, path: str, accept: Optional[str] = None) -> tuple:
        """(status, headers, body) of GET http://HOST/path."""
        req = urllib.request.Request(f"http://{self.host}{path}")
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()
        except OSError:
            return 0, {}, b""

    def manifest(self, repo: str, ref: str) -> tuple:
        """(digest the registry reports, manifest) of repo:ref."""
        status, headers, body = self.get(f"/v2/{repo}/manifests/{ref}", OCI_MANIFEST)
        assert status == 200, f"{repo}:{ref}: HTTP {status} {body[:300]!r}"
        digest = headers.get("Docker-Content-Digest")
        assert digest == "sha256:" + hashlib.sha256(body).hexdigest(), (digest, body[:200])
        return digest, json.loads(body)

    def blob(self, repo: str, digest: str) -> bytes:
        status, _, body = self.get(f"/v2/{repo}/blobs/{digest}")
        assert status == 200, f"{repo}@{digest}: HTTP {status}"
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        return body

    def release(self, version: str, out: Path, helm: str) -> dict:
        """scripts/release.sh all: image and chart of `version`, pushed here."""
        env = dict(os.environ, EDGEMQ_RELEASE_BIN=binary(), HELM=helm)
        r = subprocess.run(["bash", str(REPO / "scripts" / "release.sh"), "all",
                            "--registry", f"{self.host}/edgemq", "--version", version,
                            "--plain-http", "--out", str(out)],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, f"scripts/release.sh failed:\n{r.stdout}{r.stderr}"
        record = json.loads((out / "release.json").read_text())
        assert record == json.loads(r.stdout), (record, r.stdout)
        return record


def rootfs_entries(root: Path) -> dict:
    """{path: (type, mode, sha256 of content)} of a directory tree, the same shape as
    `layer_entries`, so an image rootfs and a layer compare directly."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def layer_entries(layer_gz: bytes) -> dict:
    """{path: (type, mode, sha256 of content)} of a gzip'd layer tar."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_gz))) as t:
        for m in t.getmembers():
            name = m.name.strip("/").removeprefix("./")
            if not name:
                continue
            assert m.uid == 0 and m.gid == 0, f"{name} owned by {m.uid}:{m.gid}"
            if m.isdir():
                out[name] = ("dir", m.mode, None)
            else:
                out[name] = ("file", m.mode, hashlib.sha256(t.extractfile(m).read()).hexdigest())
    return out
