#!/usr/bin/env python3
"""Builds a docker-archive image tar without Docker (python3 stdlib only).

    image.py OUT.tar TAG FILE:/path/in/image [FILE:/path ...] [--entrypoint /path]
             [--user UID:GID] [--passwd NAME:UID:GID] [--dir /path] [--no-deps]

One layer holding the given files (each executable's shared libraries, as `ldd`
lists them, come along at their paths, the dynamic loader included, unless
--no-deps), directories made with --dir (mode 1777 for /tmp), and with --passwd an
/etc/passwd and /etc/group holding root and that user. `ctr images import` and
`docker load` take the result.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("tag")
p.add_argument("files", nargs="+", help="SOURCE:/dest")
p.add_argument("--entrypoint", action="append", default=[])
p.add_argument("--cmd", action="append", default=None)
p.add_argument("--user")
p.add_argument("--passwd", help="NAME:UID:GID")
p.add_argument("--dir", action="append", default=[])
p.add_argument("--no-deps", action="store_true")
a = p.parse_args()


def shared_libraries(path):
    """Paths of the libraries the dynamic loader maps for `path` ([] when static)."""
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    if r.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in r.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
            elif target == "not":
                raise SystemExit(f"{path}: {line.strip()}")
        elif words and words[0].startswith("/"):
            libs.append(words[0])  # the dynamic loader
    return libs


entries = {}  # dest path -> source path (or None for a directory)
for spec in a.files:
    src, _, dest = spec.partition(":")
    entries[dest] = src
    if not a.no_deps and os.access(src, os.X_OK):
        for lib in shared_libraries(src):
            entries.setdefault(lib, os.path.realpath(lib))

mtime = int(time.time())
layer_buf = io.BytesIO()
with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
    made = set()

    def add_dir(path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in made:
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = mode if i == len(parts) else 0o755
                info.mtime = mtime
                layer.addfile(info)
                made.add(d)

    def add_bytes(path, data, mode=0o644):
        add_dir(os.path.dirname(path))
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = len(data)
        info.mode = mode
        info.mtime = mtime
        layer.addfile(info, io.BytesIO(data))

    for d in a.dir:
        add_dir(d, 0o1777 if d.rstrip("/") == "/tmp" else 0o755)
    for dest, src in sorted(entries.items()):
        with open(src, "rb") as f:
            data = f.read()
        add_bytes(dest, data, os.stat(src).st_mode & 0o777)
    if a.passwd:
        name, uid, gid = a.passwd.split(":")
        add_bytes("/etc/passwd", (f"root:x:0:0:root:/root:/sbin/nologin\n"
                                  f"{name}:x:{uid}:{gid}:{name}:/:/sbin/nologin\n").encode())
        add_bytes("/etc/group", f"root:x:0:\n{name}:x:{gid}:\n".encode())
layer_bytes = layer_buf.getvalue()
diff_id = hashlib.sha256(layer_bytes).hexdigest()

config = {
    "architecture": "amd64",
    "os": "linux",
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    },
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    "history": [{"created_by": "scripts/cluster/image.py"}],
}
if a.entrypoint:
    config["config"]["Entrypoint"] = a.entrypoint
if a.cmd is not None:
    config["config"]["Cmd"] = a.cmd
if a.user:
    config["config"]["User"] = a.user
config_bytes = json.dumps(config, sort_keys=True).encode()
config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [f"{diff_id}/layer.tar"]}]

tmp = a.out + ".tmp"
with tarfile.open(tmp, mode="w") as out:
    def put(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        out.addfile(info, io.BytesIO(data))
    put(config_name, config_bytes)
    put(f"{diff_id}/layer.tar", layer_bytes)
    put("manifest.json", json.dumps(manifest).encode())
    put("repositories", json.dumps({a.tag.rsplit(":", 1)[0]: {a.tag.rsplit(":", 1)[1]: diff_id}}).encode())
os.replace(tmp, a.out)
