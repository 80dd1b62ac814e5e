#!/usr/bin/env python3
"""Broker memory and disk under two floods, at the default limits (issue 17, item 9).

    python3 bench/floods.py --edgemq target/debug/edgemq [--retained 300] [--connects 55]

Starts `edgemq run` on a temporary folder with one Broker (default limits, persistence
on) and one MqttUser, on free loopback ports, and measures:

- retained flood: the user publishes N retained messages of 1 MiB to distinct topics
  (QoS 1, each acknowledged before the next). Reported: broker RSS before and after,
  bytes in the state directory, retained messages kept, refusals counted.
- CONNECT flood (a fresh broker): M sockets from one address each send a CONNECT header
  announcing 1,000,000 bytes, then 999,000 bytes of it, and wait. Reported: RSS before
  and after, sockets the broker still holds open, refusals counted.

Prints one JSON object. The broker is stopped by process id at the end. Say which build
(debug or release) the figures come from: a debug build holds more per message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# The raw MQTT layer of the black-box tests (standard library only).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from mqtt_raw import _varint, mqtt_str, packet, read_packet  # noqa: E402

# alice / secret1, Mosquitto's PBKDF2 format (the known answer in the README).
ALICE_HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjN"
              "C+TE2hwhkAwJuKCX/NjaVU4kw==")
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Broker:
    def __init__(self, binary: str, root: Path):
        self.root = root
        self.port, self.http = free_port(), free_port()
        config, self.state = root / "config", root / "state"
        config.mkdir(parents=True)
        (config / "home.yaml").write_text(
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {name: home}\nspec:\n"
            f"  listeners: [{{name: mqtt, port: {self.port}, bindAddress: 127.0.0.1}}]\n"
            "  persistence: {enabled: true}\n---\n"
            "apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: alice}\nspec:\n"
            f"  brokerRef: home\n  passwordHash: '{ALICE_HASH}'\n"
            "  acl: [{topic: '#', access: readwrite}]\n")
        self.log = open(root / "edgemq.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(config), "--state", str(self.state),
             "--http", f"127.0.0.1:{self.http}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"edgemq did not become ready; see {root / 'edgemq.log'}")
        time.sleep(1)  # let start-up allocations settle before the baseline

    def metrics(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def refusals(self) -> dict:
        return {k.split('limit="')[1].split('"')[0]: v for k, v in self.metrics().items()
                if k.startswith("edgemq_limit_refusals_total{") and v}

    def retained(self) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith("edgemq_retained_messages{"))

    def login(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        var = mqtt_str(b"MQTT") + bytes([4, 0xC2]) + (0).to_bytes(2, "big")
        s.sendall(packet(0x10, var + mqtt_str(b"flooder") + mqtt_str(b"alice") + mqtt_str(b"secret1")))
        first, body = read_packet(s)
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"login refused: {body.hex()}")
        return s

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def retained_flood(binary: str, root: Path, n: int) -> dict:
    b = Broker(binary, root)
    try:
        before = rss_kb(b.proc.pid)
        s = b.login()
        for i in range(n):
            pkid = i % 65535 + 1
            body = mqtt_str(f"flood/{i}".encode()) + pkid.to_bytes(2, "big") + bytes([i % 256]) * MIB
            s.sendall(packet(0x33, body))
            while read_packet(s)[0] >> 4 != 4:
                pass
        time.sleep(1)
        after = rss_kb(b.proc.pid)
        result = {"messages": n, "payload_bytes": MIB, "rss_before_kb": before,
                  "rss_after_kb": after, "retained_kept": b.retained(),
                  "refusals": b.refusals()}
        s.close()
    finally:
        b.stop()
    result["state_dir_bytes"] = dir_bytes(b.state)
    return result


def connect_flood(binary: str, root: Path, n: int) -> dict:
    b = Broker(binary, root)
    socks = []
    try:
        before = rss_kb(b.proc.pid)
        header = b"\x10" + _varint(1_000_000)
        chunk = b"\x00" * 999_000
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
            socks.append(s)
            try:
                s.sendall(header + chunk)
            except OSError:
                pass  # closed by the broker while sending
        time.sleep(2)
        after = rss_kb(b.proc.pid)
        still_open = 0
        for s in socks:
            s.setblocking(False)
            try:
                still_open += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        return {"sockets": n, "announced_bytes": 1_000_000, "sent_bytes": 999_000,
                "rss_before_kb": before, "rss_after_kb": after,
                "sockets_still_open": still_open, "refusals": b.refusals()}
    finally:
        for s in socks:
            s.close()
        b.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgemq", default="target/debug/edgemq", help="the edgemq binary")
    ap.add_argument("--retained", type=int, default=300, help="retained 1 MiB messages")
    ap.add_argument("--connects", type=int, default=55, help="half-sent CONNECTs")
    args = ap.parse_args()
    binary = os.path.abspath(args.edgemq)
    with tempfile.TemporaryDirectory(prefix="edgemq-floods-") as tmp:
        out = {"edgemq": binary,
               "retained_flood": retained_flood(binary, Path(tmp) / "retained", args.retained),
               "connect_flood": connect_flood(binary, Path(tmp) / "connect", args.connects)}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
