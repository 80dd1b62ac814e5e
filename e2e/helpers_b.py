"""Helpers for the TLS/WebSocket, reload, persistence and limits tests: certificates
made with openssl, TLS peer inspection, status and /proc readers. Raw MQTT and polling
live in support.py, with everything shared by every test module.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Optional

from support import broker_yaml, docs, require, run, user_yaml


# --------------------------------------------------------------------------- certificates

def make_cert(directory: Path, name: str, serial: int, cn: str = "localhost") -> tuple:
    """A self-signed EC certificate for localhost / 127.0.0.1 made by openssl:
    (cert path, key path)."""
    openssl = require("openssl")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    r = run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={cn}",
             "-set_serial", str(serial),
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-addext", "basicConstraints=critical,CA:TRUE"])
    assert r.returncode == 0, f"openssl failed: {r.stderr}"
    return crt, key


def tls_secret_yaml(name: str, crt: Path, key: Path) -> str:
    """A core/v1 Secret of type kubernetes.io/tls holding the key pair."""
    def block(text):
        return "\n".join("    " + line for line in text.strip().splitlines())
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\n"
            f"stringData:\n  tls.crt: |\n{block(Path(crt).read_text())}\n"
            f"  tls.key: |\n{block(Path(key).read_text())}\n")


def fingerprint_of_file(crt: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(crt).read_text())
    return hashlib.sha256(der).hexdigest()


def served_fingerprint(port: int, timeout: float = 3.0) -> str:
    """SHA-256 of the certificate a new TLS connection to the port is served."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def served_serial(port: int, cafile: Path, timeout: float = 3.0) -> int:
    """Serial number of the served certificate, verified against cafile."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


# --------------------------------------------------------------------------- status & process

def broker_resource(status: dict, name: str) -> Optional[dict]:
    for r in status.get("resources", []):
        if r.get("kind") == "Broker" and r.get("name") == name:
            return r
    return None


def router(status: dict, name: str) -> dict:
    r = broker_resource(status, name)
    return ((r or {}).get("details") or {}).get("router") or {}


def ready(status: dict, kind: str, name: str) -> Optional[str]:
    """The Ready condition's status ("True"/"False") of a resource, or None."""
    for r in status.get("resources", []):
        if r.get("kind") == kind and r.get("name") == name:
            for c in r.get("conditions") or []:
                if c.get("type") == "Ready":
                    return c.get("status")
    return None


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FILE_LINE = re.compile(r"[\w.-]+\.ya?ml:\d+")


def json_of(proc: subprocess.CompletedProcess) -> dict:
    lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
    assert lines, f"no JSON output (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1])


def revision(port: int, users: list) -> dict:
    """The files of one config revision: Broker `home` on `port` and `users`, each
    with read/write on `<user>/#` and password `pw-<user>` in Secret `pw`."""
    pw = "\n".join(f"  {u}: pw-{u}" for u in users)
    return {
        "broker.yaml": broker_yaml("home", port, "  allowAnonymous: false"),
        "users.yaml": docs(*[user_yaml(u, "home", acl=[(f"{u}/#", "readwrite")],
                                        secret_ref=("pw", u)) for u in users],
                           f"apiVersion: v1\nkind: Secret\nmetadata: {{name: pw}}\nstringData:\n{pw}\n"),
    }
