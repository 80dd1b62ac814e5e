"""Bridges against real Mosquitto remotes: topic mapping in each direction, no loops,
mutual TLS as AWS IoT Core does it, credentials, outages with 10,000 QoS 1 messages
(also across a restart of edgemq), the queue bound, and live per-bridge changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

import support
from support import (broker_yaml, connect, docs, free_port, metric, mosquitto_hash, poll, pub,
                     require, run, sub)
from helpers_b import rss_kb, tls_secret_yaml

OPEN_BROKER = "  allowAnonymous: true\n  aclEnabled: false\n"


def bridge_yaml(name: str, remote: str, topics: list, broker: str = "home", extra: str = "",
                remote_extra: str = "", queue: str = "") -> str:
    """A Bridge; topics: list of dicts (pattern, direction, qos, prefixes)."""
    lines = ["apiVersion: edgemq.io/v1alpha1", "kind: Bridge", f"metadata: {{name: {name}}}",
             "spec:", f"  brokerRef: {broker}", "  remote:", f"    address: {json.dumps(remote)}"]
    if remote_extra:
        lines += ["    " + line for line in remote_extra.strip("\n").splitlines()]
    lines.append("  topics:")
    for t in topics:
        lines.append("    - " + json.dumps(t))
    if queue:
        lines.append(f"  queue: {queue}")
    text = "\n".join(lines) + "\n"
    return text + extra


def bridge_status(e, name: str) -> dict:
    for r in e.status()["resources"]:
        if r["kind"] == "Bridge" and r["name"] == name:
            return r
    raise AssertionError(f"Bridge {name} not in status")


def wait_connected(e, name: str, timeout: float = 20.0) -> dict:
    return e.wait_applied(lambda s: next((r for r in s["resources"] if r["kind"] == "Bridge"
                                          and r["name"] == name
                                          and (r.get("details") or {}).get("connected")), None),
                          timeout, f"bridge {name} connected")


def collect(client, n: int, timeout: float = 60.0) -> list:
    """Up to n messages, waiting at most `timeout` in total (and 5 s of silence)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = client.get_or_none(min(5.0, max(0.1, deadline - time.monotonic())))
        if m is None:
            break
        out.append(m)
    return out


# ---------------------------------------------------------------- directions

@pytest.mark.parametrize("version,proto", [("3.1.1", MQTTv311), ("5", MQTTv5)])
def test_out_in_and_both_map_prefixes_and_deliver_each_message_exactly_once(
        edgemq, mosquitto, version, proto):
    remote = mosquitto(["allow_anonymous true"])
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("up", f"127.0.0.1:{remote.port}", [
            {"pattern": "sensors/#", "direction": "out", "qos": 1, "remotePrefix": "home/"},
            {"pattern": "cmd/#", "direction": "in", "qos": 1, "remotePrefix": "cloud/",
             "localPrefix": "device/"},
            {"pattern": "sync/#", "direction": "both", "qos": 1},
        ], remote_extra=f"protocolVersion: {json.dumps(version)}")))
    e.start()
    wait_connected(e, "up")

    remote_sink = sub(remote.port, [("home/#", 1), ("sync/#", 1), ("sensors/#", 1)], protocol=proto)
    local_sink = sub(port, [("device/#", 1), ("sync/#", 1), ("cmd/#", 1)], protocol=proto)

    # out: sensors/# arrives remotely under home/, at QoS 1.
    pub(port, "sensors/kitchen/temp", b"21.5", qos=1)
    m = remote_sink.get(10)
    assert (m.topic, m.payload, m.qos) == ("home/sensors/kitchen/temp", b"21.5", 1)

    # in: cloud/cmd/# arrives locally under device/cmd/.
    pub(remote.port, "cloud/cmd/light", b"on", qos=1)
    m = local_sink.get(10)
    assert (m.topic, m.payload) == ("device/cmd/light", b"on")

    # both: each side gets each message exactly once; nothing loops back.
    for i in range(20):
        pub(port, "sync/a", f"local-{i}".encode(), qos=1)
        pub(remote.port, "sync/b", f"remote-{i}".encode(), qos=1)
    got_remote = collect(remote_sink, 40, 20)
    got_local = collect(local_sink, 40, 20)
    time.sleep(1.0)
    got_remote += remote_sink.drain()
    got_local += local_sink.drain()
    remote_payloads = sorted(m.payload.decode() for m in got_remote)
    local_payloads = sorted(m.payload.decode() for m in got_local)
    expected = sorted([f"local-{i}" for i in range(20)] + [f"remote-{i}" for i in range(20)])
    assert remote_payloads == expected, "remote side: each message exactly once"
    assert local_payloads == expected, "local side: each message exactly once"
    assert all(m.topic in ("sync/a", "sync/b") for m in got_remote + got_local)

    st = bridge_status(e, "up")["details"]
    assert st["forwardedOut"] == 21 and st["forwardedIn"] == 21, st
    assert st["dropped"] == 0 and st["queueDepth"] == 0


# ---------------------------------------------------------------- TLS and credentials

def _openssl(*args):
    r = run([require("openssl"), *map(str, args)])
    assert r.returncode == 0, r.stderr


def make_ca(d: Path, name: str) -> tuple:
    d.mkdir(parents=True, exist_ok=True)
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return crt, key


def make_leaf(d: Path, name: str, ca: tuple, cn: str, server: bool, ips=()) -> tuple:
    """A leaf signed by `ca`; a server's names are localhost, 127.0.0.1 and `ips`."""
    crt, key, csr, ext = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    sans = ",".join(["DNS:localhost", "IP:127.0.0.1", *(f"IP:{ip}" for ip in ips)])
    ext.write_text((f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
                    if server else "extendedKeyUsage=clientAuth\n"))
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


def mutual_tls_remote(mosquitto, d: Path, ca_name: str, identity: str = "home-bridge",
                      topics=("home/#",)) -> tuple:
    """A CA and a Mosquitto that, as AWS IoT Core, requires a client certificate signed
    by it, takes the certificate's CN as the username, and lets only that identity use
    `topics` (as a least-privilege policy would). Returns (ca pair, started Mosquitto)."""
    ca = make_ca(d, ca_name)
    server = make_leaf(d, "server", ca, "localhost", server=True)
    acl = d / "acl"
    acl.write_text(f"user {identity}\n" + "".join(f"topic readwrite {t}\n" for t in topics))
    remote = mosquitto([
        f"cafile {ca[0]}", f"certfile {server[0]}", f"keyfile {server[1]}",
        "require_certificate true", "use_identity_as_username true",
        "allow_anonymous false", f"acl_file {acl}",
    ], name=f"{ca_name}-remote")
    return ca, remote


def ca_secret_yaml(name: str, crt: Path) -> str:
    body = "\n".join("    " + line for line in crt.read_text().strip().splitlines())
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n  ca.crt: |\n{body}\n"


def test_mutual_tls_like_aws_iot_core_and_a_wrong_certificate_is_reported(
        edgemq, mosquitto, tmp_path):
    d = tmp_path / "pki"
    ca, remote = mutual_tls_remote(mosquitto, d, "remote-ca")
    client = make_leaf(d, "client", ca, "home-bridge", server=False)
    other_ca = make_ca(d, "other-ca")
    wrong = make_leaf(d, "wrong", other_ca, "home-bridge", server=False)
    port = free_port()
    e = edgemq(secrets=True)
    e.write_secret("pki.yaml", docs(tls_secret_yaml("bridge-cert", *client),
                                    tls_secret_yaml("wrong-cert", *wrong),
                                    ca_secret_yaml("remote-ca", ca[0])))
    tls = ("tls:\n  caSecretRef: {name: remote-ca, key: ca.crt}\n"
           "  clientSecretRef: bridge-cert\n  serverName: localhost\n")
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("aws", f"127.0.0.1:{remote.port}",
                    [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                      "remotePrefix": "home/"}],
                    remote_extra="clientId: home-bridge\n" + tls)))
    e.start()
    wait_connected(e, "aws")
    # The remote accepted the certificate as user home-bridge: the ACL lets it publish.
    sink = connect(remote.port, client_id="sink", tls={
        "ca_certs": str(ca[0]), "certfile": str(client[0]), "keyfile": str(client[1])})
    assert sink.subscribe_wait("home/#", 1) == [1]
    pub(port, "sensors/door", b"open", qos=1)
    m = sink.get(10)
    assert (m.topic, m.payload) == ("home/sensors/door", b"open")
    sink.disconnect_wait()

    # The wrong certificate: a clear TLS reason in status, and the broker runs on.
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("aws", f"127.0.0.1:{remote.port}",
                    [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                      "remotePrefix": "home/"}],
                    remote_extra="clientId: home-bridge\n" + tls.replace("bridge-cert", "wrong-cert"))))
    r = e.wait_applied(lambda s: next((r for r in s["resources"] if r["kind"] == "Bridge"
                                       and "TLS" in ((r.get("details") or {}).get("lastError") or "")),
                                      None), 30, "TLS failure in status")
    cond = r["conditions"][0]
    assert cond["status"] == "False" and cond["reason"] == "Disconnected"
    assert "TLS" in cond["message"]
    assert "certificate" in r["details"]["lastError"], r["details"]["lastError"]
    pub(port, "sensors/door", b"queued", qos=1)
    assert e.wait_applied(lambda s: bridge_status(e, "aws")["details"]["queueDepth"] == 1)
    code, _ = e.http_get("/healthz")
    assert code == 200


def test_password_remote_and_refusals_are_explained(edgemq, mosquitto, tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text(f"bridge:{mosquitto_hash(tmp_path, 'bridge', 's3cret')}\n")
    remote = mosquitto(["allow_anonymous false", f"password_file {pw}"])
    port = free_port()
    e = edgemq(secrets=True)
    e.write_secret("creds.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: remote-creds}\n"
                                 "stringData: {username: bridge, password: s3cret, bad: nope}\n")
    creds = ("usernameSecretRef: {name: remote-creds, key: username}\n"
             "passwordSecretRef: {name: remote-creds, key: %s}\n")
    topics = [{"pattern": "t/#", "direction": "out", "qos": 1}]
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("up", f"127.0.0.1:{remote.port}", topics, remote_extra=creds % "password"),
        bridge_yaml("badpass", f"127.0.0.1:{remote.port}", topics, remote_extra=creds % "bad"),
        bridge_yaml("nodns", "no-such-host.invalid:1883", topics),
        bridge_yaml("refused", f"127.0.0.1:{free_port()}", topics)))
    e.start()
    wait_connected(e, "up")

    def error_of(name):
        return lambda s: next(((r.get("details") or {}).get("lastError") for r in s["resources"]
                               if r["kind"] == "Bridge" and r["name"] == name
                               and (r.get("details") or {}).get("lastError")), None)

    assert "not authorized" in e.wait_applied(error_of("badpass"), 20) or \
        "bad username or password" in e.wait_applied(error_of("badpass"), 20)
    assert "DNS lookup of no-such-host.invalid failed" in e.wait_applied(error_of("nodns"), 20)
    assert "refused" in e.wait_applied(error_of("refused"), 20).lower()
    m = e.metrics()
    assert metric(m, 'edgemq_bridge_connected{bridge="default/up"}') == 1
    assert metric(m, 'edgemq_bridge_connected{bridge="default/nodns"}') == 0
    assert metric(m, 'edgemq_bridge_disconnects_total{bridge="default/refused"}') >= 1


# ---------------------------------------------------------------- outages

def persistent_remote(mosquitto, tmp_path, name="remote"):
    """A Mosquitto that keeps sessions across its own restart, with a persistent
    subscriber `sink` on home/# whose messages it queues without limit."""
    db = tmp_path / f"{name}-db"
    db.mkdir()
    return mosquitto(["allow_anonymous true", "persistence true",
                      f"persistence_location {db}/", "max_queued_messages 0",
                      "max_inflight_messages 100"], name=name)


def restart_mosquitto(m):
    m.stop()
    m.start()


def sink_session(port, collect_now=False):
    c = connect(port, client_id="sink", clean=False)
    if not collect_now:
        c.subscribe_wait("home/#", 1)
    return c


@pytest.mark.parametrize("restart_edgemq", [False, True], ids=["remote-outage", "edgemq-restarted-too"])
def test_an_outage_loses_nothing_and_keeps_order(edgemq, mosquitto, tmp_path,
                                                 restart_edgemq):
    n = 10_000
    remote = persistent_remote(mosquitto, tmp_path)
    sink = sink_session(remote.port)
    sink.disconnect_wait()
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("up", f"127.0.0.1:{remote.port}",
                    [{"pattern": "sensors/#", "direction": "out", "qos": 1, "remotePrefix": "home/"}])))
    e.start()
    wait_connected(e, "up")

    remote.stop()
    e.wait_applied(lambda s: not bridge_status(e, "up")["details"]["connected"], 20, "link down")
    # `edgemq status` (the status file) follows the link within seconds.
    poll(lambda: "Disconnected" in e.cli("status", "--state", str(e.state_dir)).stdout, 15,
         message="edgemq status shows the bridge down")
    support.publish_many(port, n)
    st = e.wait_applied(lambda s: (d := bridge_status(e, "up")["details"])["queueDepth"] == n and d,
                        30, f"{n} messages queued")
    assert st["dropped"] == 0
    if restart_edgemq:
        e.stop()
        e.start()
        assert bridge_status(e, "up")["details"]["queueDepth"] == n, "the queue survived the restart"

    remote.start()
    e.wait_applied(lambda s: bridge_status(e, "up")["details"]["queueDepth"] == 0, 120, "queue drained")
    sink = sink_session(remote.port, collect_now=True)
    got = collect(sink, n, 120)
    time.sleep(0.5)
    got += sink.drain()
    sink.disconnect_wait()
    assert all(m.topic == "home/sensors/x" and m.qos == 1 for m in got)
    losses, dups = support.check_in_order([m.payload for m in got], n)
    print(f"\noutage{' + edgemq restart' if restart_edgemq else ''}: {n} sent, "
          f"{len(got)} received, {losses} lost, {dups} duplicates")
    assert losses == 0


def test_at_the_queue_bound_the_oldest_are_dropped_and_counted(edgemq, mosquitto,
                                                                tmp_path):
    bound, n = 1000, 5000
    remote = persistent_remote(mosquitto, tmp_path)
    sink = sink_session(remote.port)
    sink.disconnect_wait()
    remote.stop()
    port = free_port()
    e = edgemq()
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER),
        bridge_yaml("up", f"127.0.0.1:{remote.port}",
                    [{"pattern": "sensors/#", "direction": "out", "qos": 1, "remotePrefix": "home/"}],
                    queue=f"{{maxMessages: {bound}, maxBytes: 1048576}}")))
    e.start()
    rss_before = rss_kb(e.proc.pid)
    support.publish_many(port, n)
    st = e.wait_applied(lambda s: (d := bridge_status(e, "up")["details"])["dropped"] == n - bound and d,
                        30, "drops counted")
    assert st["queueDepth"] == bound
    m = e.metrics()
    assert metric(m, 'edgemq_bridge_dropped_total{bridge="default/up",reason="queue_full"}') == n - bound
    assert metric(m, 'edgemq_bridge_queue_messages{bridge="default/up"}') == bound
    assert "bridge queue full: dropping the oldest messages" in e.log_text()
    code, _ = e.http_get("/healthz")
    assert code == 200
    assert rss_kb(e.proc.pid) - rss_before < 64 * 1024, "memory stays bounded"

    remote.start()
    e.wait_applied(lambda s: bridge_status(e, "up")["details"]["queueDepth"] == 0, 60, "drained")
    sink = sink_session(remote.port, collect_now=True)
    got = collect(sink, bound, 60)
    sink.disconnect_wait()
    # Drop-oldest: the newest `bound` messages are the ones delivered, in order.
    assert [int(m.payload) for m in got] == list(range(n - bound, n))


# ---------------------------------------------------------------- live changes

def test_changing_one_bridge_leaves_clients_and_other_bridges_alone(edgemq, mosquitto):
    remote = mosquitto(["allow_anonymous true"])
    port = free_port()
    e = edgemq()
    a = bridge_yaml("a", f"127.0.0.1:{remote.port}",
                    [{"pattern": "a/#", "direction": "out", "qos": 1, "remotePrefix": "home/"}])
    b = bridge_yaml("b", f"127.0.0.1:{remote.port}",
                    [{"pattern": "b/#", "direction": "out", "qos": 1, "remotePrefix": "home/"}])
    e.write("broker.yaml", broker_yaml("home", port, OPEN_BROKER))
    e.write("a.yaml", a)
    e.start()
    a_since = wait_connected(e, "a")["details"]["since"]
    local = sub(port, "x/#", 1)
    sink = sub(remote.port, "home/#", 1)

    # Add b: a keeps its connection, the local client stays connected.
    e.write("b.yaml", b)
    b_since = wait_connected(e, "b")["details"]["since"]
    assert bridge_status(e, "a")["details"]["since"] == a_since
    # Change b's topics: only b restarts.
    e.write("b.yaml", b.replace('"b/#"', '"b2/#"'))
    e.wait_applied(lambda s: (d := bridge_status(e, "b")["details"]) and d["connected"]
                   and d["since"] != b_since, 15, "b restarted")
    pub(port, "b2/x", b"1", qos=1)
    m = sink.get(10)
    assert m.topic == "home/b2/x"
    assert bridge_status(e, "a")["details"]["since"] == a_since
    pub(port, "a/x", b"2", qos=1)
    assert sink.get(10).topic == "home/a/x"
    # Remove b: a and the local client are untouched; b's status and queue are gone.
    e.remove("b.yaml")
    e.wait_applied(lambda s: not any(r["kind"] == "Bridge" and r["name"] == "b"
                                     for r in s["resources"]))
    assert not (e.state_dir / "bridges" / "default_b.redb").exists()
    assert bridge_status(e, "a")["details"]["since"] == a_since
    assert local.is_connected()
    pub(port, "x/y", b"3", qos=1)
    assert local.get(5).payload == b"3"


def test_a_client_certificate_from_the_ca_issuer_is_used_and_renewal_reconnects_the_bridge(
        edgemq, mosquitto, tmp_path):
    d = tmp_path / "pki"
    ca, remote = mutual_tls_remote(mosquitto, d, "site-ca")
    port = free_port()
    e = edgemq(secrets=True)
    e.write_secret("ca.yaml", tls_secret_yaml("site-ca", *ca))
    # Renewed 10 s after issue: the bridge must reconnect with the new pair.
    cert = ("apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: bridge-client}\n"
            "spec:\n  commonName: home-bridge\n  duration: 90s\n  renewBefore: 80s\n"
            "  issuer: {ca: {secretRef: site-ca}}\n")
    tls = ("clientId: home-bridge\ntls:\n  caCertificateRef: bridge-client\n"
           "  clientCertificateRef: bridge-client\n  serverName: localhost\n")
    e.write("home.yaml", docs(
        broker_yaml("home", port, OPEN_BROKER), cert,
        bridge_yaml("aws", f"127.0.0.1:{remote.port}",
                    [{"pattern": "sensors/#", "direction": "out", "qos": 1, "remotePrefix": "home/"}],
                    remote_extra=tls)))
    e.start()
    first = wait_connected(e, "aws")["details"]["since"]

    def serial():
        return next(r["details"]["serial"] for r in e.status()["resources"]
                    if r["kind"] == "Certificate" and r["name"] == "bridge-client")

    old_serial = serial()
    time.sleep(11)
    # Any folder event makes edgemq look again (it also does so every minute).
    e.write("touch.yaml", "# nothing\n")
    e.wait_applied(lambda s: serial() != old_serial, 30, "certificate renewed")
    e.wait_applied(lambda s: (d := bridge_status(e, "aws")["details"])["connected"]
                   and d["since"] != first, 30, "bridge reconnected with the renewed pair")
    pub(port, "sensors/after-renewal", b"1", qos=1)
    e.wait_applied(lambda s: bridge_status(e, "aws")["details"]["forwardedOut"] >= 1, 15)
    log = (remote.root / "mosquitto.log").read_text()
    assert log.count("as home-bridge") >= 2, "the remote saw the bridge connect again"
