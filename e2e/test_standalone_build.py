"""The standalone-only build (`cargo build -p edgemq --no-default-features`): the
binary for devices short of flash, without the Kubernetes controller. It must run the
bundled example as the default build does, and say why when asked for what it lacks.

The test command builds it as target/debug/edgemq-standalone (scripts/test.sh);
$EDGEMQ_STANDALONE_BIN names another."""

from __future__ import annotations

import os
import re
import shutil

import pytest

import support
from support import Edgemq, free_port, mosquitto_round_trip, run


def standalone_bin() -> str:
    path = os.environ.get("EDGEMQ_STANDALONE_BIN") or str(
        support.REPO / "target" / "debug" / "edgemq-standalone")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"standalone-only edgemq not found at {path}: run scripts/test.sh, or "
                    "`cargo build -p edgemq --no-default-features` and set "
                    "EDGEMQ_STANDALONE_BIN", pytrace=False)
    return path


def test_the_standalone_build_says_what_it_is():
    r = run([standalone_bin(), "version"], timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[3] == "kubernetes: no (a standalone-only build)", r.stdout


@pytest.mark.parametrize("command", ["controller", "broker"])
def test_the_standalone_build_refuses_the_kubernetes_commands_and_says_why(command):
    r = run([standalone_bin(), command, "--namespace", "default"], timeout=30)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.strip() == (
        "error: this edgemq was built without Kubernetes (cargo feature `kubernetes`): "
        "`edgemq controller` and `edgemq broker` need a build with it, such as the "
        "release image; `edgemq run` is the standalone broker"), r.stderr


def test_the_standalone_build_runs_the_bundled_example(tmp_path, monkeypatch):
    """The README's first command, with this build: the bundled example on free ports;
    a user with a password hash and one with a password from a Secret exchange a
    message over plain MQTT and over TLS with the self-signed certificate."""
    monkeypatch.setenv("EDGEMQ_BIN", standalone_bin())
    e = Edgemq(tmp_path)
    plain, tls, ws = free_port(), free_port(), free_port()
    for f in sorted((support.REPO / "examples" / "standalone").glob("*.yaml")):
        text = f.read_text()
        text = re.sub(r"port: 1883\b", f"port: {plain}", text)
        text = re.sub(r"port: 8883\b", f"port: {tls}", text)
        text = re.sub(r"port: 8083\b", f"port: {ws}", text)
        e.write(f.name, text)
    e.start()
    try:
        resources = e.wait_applied(
            lambda s: s["resources"] if len(s["resources"]) == 4 and all(
                r["conditions"][0]["status"] == "True" for r in s["resources"]) else None,
            20, "the Broker, two MqttUsers and the Certificate Ready")
        assert sorted((r["kind"], r["name"]) for r in resources) == [
            ("Broker", "home"), ("Certificate", "home-tls"), ("MqttUser", "homeassistant"),
            ("MqttUser", "zigbee2mqtt")], resources
        got = mosquitto_round_trip(
            ["-h", "127.0.0.1", "-p", plain, "-u", "homeassistant", "-P", "change-me-please",
             "-t", "zigbee2mqtt/lamp"],
            ["-h", "127.0.0.1", "-p", str(plain), "-u", "zigbee2mqtt", "-P", "secret1",
             "-t", "zigbee2mqtt/lamp"],
            "on", timeout=15)
        assert got == "on"
        ca = tmp_path / "ca.crt"
        shutil.copy(e.cert_path("home-tls"), ca)
        got = mosquitto_round_trip(
            ["-h", "localhost", "-p", tls, "--cafile", ca, "-u", "homeassistant",
             "-P", "change-me-please", "-t", "zigbee2mqtt/door"],
            ["-h", "localhost", "-p", str(tls), "--cafile", str(ca), "-u", "zigbee2mqtt",
             "-P", "secret1", "-t", "zigbee2mqtt/door"],
            "closed", timeout=15)
        assert got == "closed"
    finally:
        e.stop()
