"""A certificate-authenticated Broker in edgemq and, rendered with `edgemq render
--format mosquitto`, in a real Mosquitto 2.0: both admit and refuse the same devices
(known and unknown CN, another CA, expired, revoked) and give each the same topics."""

from __future__ import annotations

import subprocess
import support
from helpers_b import tls_secret_yaml
from helpers_devices import Ca, secret_yaml
from support import docs, free_port, poll, require, run, wait_port
from test_client_certs import BROKER, broker_yaml, cert_user

CLIENT_AUTH = "{caSecretRef: {name: devices-ca, key: ca.crt}, crlSecretRef: {name: devices-crl, key: ca.crl}}"


def folder_yaml(port: int, ca: Ca, server) -> str:
    return docs(broker_yaml(port, CLIENT_AUTH, "  allowAnonymous: false\n"),
                tls_secret_yaml("broker-tls", server[0], server[1]),
                secret_yaml("devices-ca", {"ca.crt": ca.pem}),
                secret_yaml("devices-crl", {"ca.crl": ca.crl_pem()}),
                cert_user("sensor-1", "sensors/sensor-1/#"))


def args(port: int, ca: Ca, cert) -> list:
    return ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(ca.path),
            "--cert", str(cert[0]), "--key", str(cert[1])]


def outcome(port: int, ca: Ca, cert, topic: str) -> str:
    """`refused` when the device cannot connect, else `delivered` or `denied` for a
    message it publishes on `topic` and subscribes to itself."""
    msub, mpub = require("mosquitto_sub"), require("mosquitto_pub")
    r = run([mpub, *args(port, ca, cert), "-t", "probe/none", "-m", "x", "-q", "1",
             "-i", support.unique_id("p")])
    if r.returncode != 0:
        return "refused"
    sub = subprocess.Popen([msub, *args(port, ca, cert), "-t", topic, "-C", "1", "-W", "4",
                            "-q", "1", "-i", support.unique_id("s")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def got():
            run([mpub, *args(port, ca, cert), "-t", topic, "-m", "m", "-q", "1",
                 "-i", support.unique_id("p")])
            try:
                sub.wait(timeout=0.3)
            except subprocess.TimeoutExpired:
                return False
            return sub.returncode == 0

        try:
            poll(got, 3, 0.1)
        except AssertionError:
            return "denied"
        # A denied subscription also ends mosquitto_sub (edgemq refuses it in the
        # SUBACK): only the message printed counts.
        return "delivered" if sub.stdout.read().strip() == "m" else "denied"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_rendered_mosquitto_admits_and_refuses_the_same_devices(edgemq, tmp_path):
    ca = Ca(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    devices = {
        "sensor-1": ca.issue("sensor-1"),
        "stranger": ca.issue("stranger"),
        "other-ca": Ca(tmp_path / "other", cn="other CA").issue("sensor-1"),
        "expired": ca.issue("sensor-1", expired=True, file="expired"),
        "revoked": ca.issue("sensor-1", file="revoked"),
    }
    ca.revoke(devices["revoked"][2])
    eport, mport = free_port(), free_port()
    e = edgemq()
    e.write("broker.yaml", folder_yaml(eport, ca, server))
    e.start()
    wait_port(eport)

    src, out = tmp_path / "render-src", tmp_path / "render-out"
    src.mkdir()
    (src / "broker.yaml").write_text(folder_yaml(mport, ca, server))
    r = run([support.edgemq_bin(), "render", "--config", src, "--broker", BROKER,
             "--format", "mosquitto", "--out", out])
    assert r.returncode == 0, f"edgemq render failed:\n{r.stdout}{r.stderr}"
    conf = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 f"cafile {out}/tls/client-ca-devices/ca.crt",
                 f"crlfile {out}/tls/client-ca-devices/ca.crl"):
        assert line in conf.splitlines(), f"{line!r} not in\n{conf}"
    # The rendered configuration as it is (its own listener line included).
    lines = [ln for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    m = support.Mosquitto(tmp_path, lines, name="rendered", port=mport, listener=False).start()
    try:
        cases = [("sensor-1", "sensors/sensor-1/t"), ("sensor-1", "devices/sensor-1/t"),
                 ("sensor-1", "other/t"), ("stranger", "devices/stranger/t"),
                 ("stranger", "sensors/sensor-1/t"), ("other-ca", "sensors/sensor-1/t"),
                 ("expired", "sensors/sensor-1/t"), ("revoked", "sensors/sensor-1/t")]
        got = {(d, t): (outcome(eport, ca, devices[d], t), outcome(mport, ca, devices[d], t))
               for d, t in cases}
    finally:
        m.stop()
    expected = {
        ("sensor-1", "sensors/sensor-1/t"): "delivered",
        ("sensor-1", "devices/sensor-1/t"): "delivered",
        ("sensor-1", "other/t"): "denied",
        ("stranger", "devices/stranger/t"): "delivered",
        ("stranger", "sensors/sensor-1/t"): "denied",
        ("other-ca", "sensors/sensor-1/t"): "refused",
        ("expired", "sensors/sensor-1/t"): "refused",
        ("revoked", "sensors/sensor-1/t"): "refused",
    }
    for k, (edge, mosq) in got.items():
        assert (edge, mosq) == (expected[k], expected[k]), f"{k}: edgemq {edge}, mosquitto {mosq}"
