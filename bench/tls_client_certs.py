#!/usr/bin/env python3
"""Handshake cost of client-certificate logins: TLS connections per second with a
device certificate, edgemq against Mosquitto 2.0 in the same run (issue 19).

    python3 bench/tls_client_certs.py --edgemq target/release/edgemq --pin-core 1

Both brokers get the same material (an ECDSA P-256 device CA, a server certificate it
signs, a CRL) and require client certificates with the CN as the username (edgemq:
`clientAuth`; Mosquitto: `require_certificate true`, `use_identity_as_username true`,
`cafile`, `crlfile`). With `--pin-core N` each broker runs under `taskset -c N` and the
load generator on the other cores. The load: `--workers` processes, each opening
`--connections` full TLS 1.3 handshakes in turn (no session resumption) with a device
certificate, sending CONNECT, reading CONNACK, sending DISCONNECT. Brokers alternate
over `--repeat` rounds; the medians and their ratio (edgemq / Mosquitto) are printed
as JSON. Both are started on free loopback ports and stopped by process id.

The Python client's own handshake work is included; when the load generator has
fewer free cores than the broker needs, both figures are bounded by it, so read the
ratio together with the load side's CPU (printed as `client_cpu_seconds`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from helpers_devices import Ca, secret_yaml  # noqa: E402

CONNECT = bytes([0x10, 14]) + b"\x00\x04MQTT\x04\x02\x00\x1e" + b"\x00\x02id"
DISCONNECT = b"\xe0\x00"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no broker listening on {port}")


def worker(port: int, ca: str, cert: str, key: str, n: int, out) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ok = 0
    start = time.process_time()
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(CONNECT)
                ack = s.recv(4)
                if ack[:1] == b"\x20" and ack[3:4] == b"\x00":
                    ok += 1
                s.sendall(DISCONNECT)
    out.put((ok, time.process_time() - start))


def run_load(port: int, files: tuple, workers: int, n: int) -> dict:
    q = mp.Queue()
    procs = [mp.Process(target=worker, args=(port, *files, n, q)) for _ in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    ok = sum(r[0] for r in results)
    assert ok == workers * n, f"{workers * n - ok} logins failed"
    return {"per_second": ok / elapsed, "client_cpu_seconds": sum(r[1] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edgemq", default="target/release/edgemq")
    ap.add_argument("--pin-core", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=300, help="handshakes per worker per round")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    mosquitto = shutil.which("mosquitto")
    if not mosquitto:
        raise SystemExit("mosquitto not found: install package mosquitto")
    edgemq = str(Path(a.edgemq).resolve())
    cores = os.sched_getaffinity(0)
    pin = []
    if a.pin_core is not None:
        pin = [shutil.which("taskset") or "taskset", "-c", str(a.pin_core)]
        rest = cores - {a.pin_core}
        if rest:
            os.sched_setaffinity(0, rest)

    tmp = Path(tempfile.mkdtemp(prefix="tls-bench-"))
    procs = []
    try:
        ca = Ca(tmp / "pki")
        server = ca.issue("broker", server=True)
        device = ca.issue("device-1")
        crl = tmp / "pki" / "ca.crl"
        crl.write_text(ca.crl_pem())

        mport, eport = free_port(), free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text("\n".join([
            "user root", "persistence false", "log_type none", "allow_anonymous false",
            "max_connections -1", f"listener {mport} 127.0.0.1",
            f"certfile {server[0]}", f"keyfile {server[1]}", f"cafile {ca.path}",
            f"crlfile {crl}", "require_certificate true", "use_identity_as_username true",
        ]) + "\n")
        cfg = tmp / "edgemq" / "config"
        cfg.mkdir(parents=True)
        tls_secret = secret_yaml("broker-tls", {
            "tls.crt": Path(server[0]).read_text(), "tls.key": Path(server[1]).read_text(),
        }).replace("stringData:", "type: kubernetes.io/tls\nstringData:", 1)
        (cfg / "broker.yaml").write_text("---\n".join([
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {name: bench}\nspec:\n"
            f"  listeners:\n    - name: devices\n      port: {eport}\n      bindAddress: 127.0.0.1\n"
            "      tls:\n        secretRef: broker-tls\n        clientAuth:\n"
            "          caSecretRef: {name: devices-ca, key: ca.crt}\n"
            "          crlSecretRef: {name: devices-crl, key: ca.crl}\n"
            "  aclPatterns: [{topic: \"devices/%u/#\", access: readwrite}]\n"
            "  limits: {maxConnections: 100000, maxHandshakes: 10000, maxHandshakesPerAddress: 10000}\n",
            tls_secret,
            secret_yaml("devices-ca", {"ca.crt": ca.pem}),
            secret_yaml("devices-crl", {"ca.crl": ca.crl_pem()}),
        ]))
        http = free_port()
        log = open(tmp / "edgemq.log", "wb")
        procs.append(subprocess.Popen(pin + [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            pin + [edgemq, "run", "--config", str(cfg), "--state", str(tmp / "edgemq" / "state"),
                   "--http", f"127.0.0.1:{http}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}))
        wait_port(mport)
        wait_port(eport)
        files = (str(ca.path), str(device[0]), str(device[1]))
        rounds = {"edgemq": [], "mosquitto": []}
        cpu = {"edgemq": [], "mosquitto": []}
        for i in range(a.repeat):
            order = [("edgemq", eport), ("mosquitto", mport)]
            if i % 2:
                order.reverse()
            for name, port in order:
                r = run_load(port, files, a.workers, a.connections)
                rounds[name].append(r["per_second"])
                cpu[name].append(r["client_cpu_seconds"])
                print(f"round {i + 1} {name}: {r['per_second']:.0f} logins/s", file=sys.stderr)
        e, m = statistics.median(rounds["edgemq"]), statistics.median(rounds["mosquitto"])
        print(json.dumps({
            "scenario": "TLS 1.3 + client certificate (ECDSA P-256, CRL) + CONNECT/CONNACK/DISCONNECT",
            "pin_core": a.pin_core, "workers": a.workers, "connections_per_round": a.workers * a.connections,
            "edgemq_logins_per_second": round(e, 1), "mosquitto_logins_per_second": round(m, 1),
            "ratio_edgemq_to_mosquitto": round(e / m, 3), "rounds": rounds,
            "client_cpu_seconds": cpu,
        }, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
