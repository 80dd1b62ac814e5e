"""DNS peers for the DNS-01 tests: BIND 9 (`named`) authoritative for a test zone and
taking RFC 2136 updates signed with a TSIG key, and `dig` to see what it serves."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import support
from support import _missing, free_port, wait_port


def _sbin(cmd: str, package: str) -> str:
    found = shutil.which(cmd) or next(
        (p for p in (f"/usr/sbin/{cmd}", f"/usr/local/sbin/{cmd}") if os.access(p, os.X_OK)), None)
    if not found:
        _missing(f"peer `{cmd}` not found: install package {package}")
    return found


class Bind:
    """`named` on a free loopback port, primary for `zone`, granting TXT updates
    anywhere in it to the TSIG key `key_name` (hmac-sha256, `secret` in base64)."""

    def __init__(self, root: Path, zone: str):
        self.named = _sbin("named", "bind9")
        self.root = Path(root) / "bind"
        self.root.mkdir(parents=True, exist_ok=True)
        self.zone = zone
        self.port = free_port()
        self.key_name = "edgemq-acme"
        self.secret = base64.b64encode(os.urandom(32)).decode()
        d = self.root
        (d / "zone.db").write_text(
            f"$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n"
            f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n")
        (d / "named.conf").write_text(f"""
key "{self.key_name}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  listen-on port {self.port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
zone "{zone}" {{
  type primary;
  file "{d}/zone.db";
  update-policy {{ grant {self.key_name} zonesub TXT; }};
}};
""")
        self.log_path = d / "named.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Bind":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.named, "-g", "-n", "1", "-c", str(self.root / "named.conf")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        support._LIVE.append(self.proc)
        wait_port(self.port, 20)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def txt(self, name: str) -> list:
        return dig_txt(self.port, name)

    def log_tail(self, lines: int = 40) -> str:
        return support._tail(self.log_path, lines)


def dig_txt(port: int, name: str) -> list:
    """TXT values of `name` at 127.0.0.1:`port`, as `dig` sees them."""
    dig = support.require("dig", "bind9-dnsutils")
    r = subprocess.run([dig, "+short", "+tries=2", "+time=5", "-p", str(port), "@127.0.0.1",
                        "TXT", name], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    return sorted(l.strip().strip('"') for l in r.stdout.splitlines() if l.strip())
