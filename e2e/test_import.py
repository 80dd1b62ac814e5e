"""`edgemq import mosquitto`: a real Mosquitto installation (split with include_dir, a
password file from the real `mosquitto_passwd`, an ACL file, TLS and WebSocket
listeners, a bridge with a password) imported, then Mosquitto running the original and
edgemq running the import are asked the same questions: who may log in, which topics
each client may read and write, and what the bridge forwards to a real remote
Mosquitto. Both must answer alike.

The fixtures under fixtures/import/ are written as they would be on a server
(/etc/mosquitto/..., ports 1883/8883/8083/1884); the test copies them, points the
paths at the copy and moves the ports to free loopback ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import support
from helpers_b import make_cert

FIXTURES = support.FIXTURES / "import"

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "dave": "dave-pw", "carol": "carol-pw",
             "observer": "observer-pw"}

# (label, username, password, client id)
CLIENTS = [
    ("alice", "alice", "alice-pw", "alice-c"),
    ("bob", "bob", "bob-pw", "bob-c"),
    ("dave", "dave", "dave-pw", "dave-c"),        # no ACL block: patterns only
    ("anon", None, None, "anon-c"),
    ("carol-wrong-pw", "carol", "not-carols", "carol-c"),
    ("mallory", "mallory", "whatever", "mallory-c"),  # not in the password file
]

TOPICS = ["alice/data", "alice/secret", "shared/news", "cmd/light", "public/info",
          "public/secret", "devices/alice/t", "devices/dave/t", "clients/alice-c/status",
          "clients/dave-c/status", "other/x"]


def prepare(tmp_path: Path, fixture: str, ports: dict, passwords: dict = PASSWORDS,
            addresses: dict = {}) -> Path:
    """Copy a fixture to tmp_path/etc with real certificates and password file; return
    the path of its mosquitto.conf. `addresses` rewrites remote host:port strings."""
    etc = tmp_path / "etc"
    shutil.copytree(FIXTURES / fixture, etc)
    make_cert(etc / "certs", "server", 1)
    (etc / "data").mkdir()
    mp = support.require("mosquitto_passwd")
    for i, (user, pw) in enumerate(passwords.items()):
        r = support.run([mp] + (["-c"] if i == 0 else []) + ["-b", etc / "passwd", user, pw])
        assert r.returncode == 0, r.stderr
    for conf in [etc / "mosquitto.conf", *sorted(etc.glob("conf.d/*.conf"))]:
        text = conf.read_text().replace("/etc/mosquitto", str(etc))
        text = text.replace("persistence_location /data/", f"persistence_location {etc}/data/")
        for old, new in addresses.items():
            text = text.replace(old, new)
        for old, new in ports.items():
            text = re.sub(rf"^listener {old}$", f"listener {new} 127.0.0.1", text, flags=re.M)
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        conf.write_text(text)
    return etc / "mosquitto.conf"


def import_cmd(conf: Path, out: Path, secrets: Path, *extra) -> subprocess.CompletedProcess:
    return support.run([support.edgemq_bin(), "import", "mosquitto", conf, "--out", out,
                        "--secrets", secrets, *extra])


class OriginalMosquitto:
    """Mosquitto on the fixture's own configuration (plus `user root` to run in the
    test, in a wrapper file beside it)."""

    def __init__(self, conf: Path, ports: list):
        self.dir = conf.parent
        self.run_conf = self.dir / "run.conf"
        self.run_conf.write_text(f"user root\nlog_dest file {self.dir / 'mosquitto.log'}\n"
                                 "log_type all\n" + conf.read_text())
        self.out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([support.require("mosquitto"), "-c", str(self.run_conf)],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        support._LIVE.append(self.proc)
        for p in ports:
            support.wait_port(p)

    def stop(self):
        support._stop_proc(self.proc)
        self.out.close()


def render_import(e, tmp_path: Path) -> Path:
    """`edgemq render --format mosquitto` of an imported folder; the rendered
    mosquitto.conf."""
    out = tmp_path / "rendered"
    r = support.run([support.edgemq_bin(), "render", "--config", e.config_dir, "--secrets",
                     e.secrets_dir, "--format", "mosquitto", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr, r.stderr  # everything expressed
    (out / "data").mkdir(exist_ok=True)
    return out / "mosquitto.conf"


def three_ways(tmp_path: Path, conf: Path, e, listen: list, ask) -> tuple:
    """The answers of `ask()` from Mosquitto on the original configuration, edgemq on
    its import, and Mosquitto on `edgemq render` of the import, in turn on the same
    ports."""
    orig = OriginalMosquitto(conf, listen)
    try:
        want = ask()
    finally:
        orig.stop()
    e.start()
    for p in listen:
        support.wait_port(p)
    got = ask()
    e.stop()
    rendered = render_import(e, tmp_path)
    back_m = OriginalMosquitto(rendered, listen)
    try:
        back = ask()
    finally:
        back_m.stop()
    return want, got, back


def hashes(passwd: Path) -> set:
    return {line.strip() for line in passwd.read_text().splitlines() if ":" in line}


def assert_same(want: dict, got: dict, who: str) -> None:
    for part in want:
        if part == "acl":
            diff = sorted(k for k in want["acl"] if got["acl"].get(k) != want["acl"][k])
            assert not diff, f"{len(diff)} ACL cells differ ({who}, mosquitto): " + ", ".join(
                f"{k}={got['acl'].get(k)}/{want['acl'][k]}" for k in diff[:10])
        else:
            assert got[part] == want[part], f"{part}: {who} {got[part]} != mosquitto {want[part]}"


# --------------------------------------------------------------------------- questions

def admissions(port: int, clients=CLIENTS, **kw) -> dict:
    return {label: support.try_connect(port, username=u, password=pw, client_id=cid, **kw)
            for label, u, pw, cid in clients}


def acl_matrix(port: int, clients=CLIENTS, topics=TOPICS,
               observer=("observer", "observer-pw")) -> dict:
    """{(label, topic, 'read'|'write'): delivered?} for the clients that log in;
    `observer` is a user that may read and write everything."""
    out = {}
    CLIENTS, TOPICS = clients, topics  # noqa: N806 (the matrix of this case)
    obs_sub = support.connect(port, username=observer[0], password=observer[1],
                              client_id="obs-sub")
    obs_pub = support.connect(port, username=observer[0], password=observer[1],
                              client_id="obs-pub")
    readers = {}
    try:
        obs_sub.subscribe_wait([("#", 1)])
        for label, u, pw, cid in CLIENTS:
            try:
                readers[label] = support.connect(port, username=u, password=pw, client_id=cid)
            except support.ConnectRefused:
                continue
            readers[label].subscribe_wait([(t, 1) for t in TOPICS])
        for t in TOPICS:
            obs_pub.publish_wait(t, f"r|{t}".encode(), qos=1)
        support.settle(list(readers.values()) + [obs_sub])
        for label, cl in readers.items():
            got = {m.payload for m in cl.drain()}
            for t in TOPICS:
                out[(label, t, "read")] = f"r|{t}".encode() in got
            cl.disconnect_wait()
        obs_sub.drain()
        for label in readers:
            _, u, pw, cid = next(c for c in CLIENTS if c[0] == label)
            cl = support.connect(port, username=u, password=pw, client_id=cid)
            for t in TOPICS:
                try:
                    cl.publish_wait(t, f"w|{label}|{t}".encode(), qos=1, timeout=5)
                except AssertionError:
                    pass
            cl.disconnect_wait()
        support.settle([obs_sub], quiet=1.0)
        seen = {m.payload for m in obs_sub.drain()}
        for label in readers:
            for t in TOPICS:
                out[(label, t, "write")] = f"w|{label}|{t}".encode() in seen
    finally:
        obs_sub.disconnect_wait()
        obs_pub.disconnect_wait()
    return out


def tls_and_ws(ports: dict, ca: Path) -> dict:
    return {
        "tls": support.try_connect(ports["8883"], username="alice", password="alice-pw",
                                   tls={"ca_certs": str(ca)}),
        "tls-wrong-pw": support.try_connect(ports["8883"], username="alice", password="x",
                                            tls={"ca_certs": str(ca)}),
        "ws": support.try_connect(ports["8083"], username="alice", password="alice-pw",
                                  transport="websockets"),
    }


def bridge_forwarding(port: int, remote_port: int) -> dict:
    """What crosses the bridge: sensors/# out as site-a/sensors/#, site-a/commands/#
    in as commands/#, and nothing else."""
    remote = support.connect(remote_port, username="watcher", password="watch-pw",
                             client_id="watcher")
    local = support.connect(port, username="observer", password="observer-pw",
                            client_id="obs-bridge")
    try:
        remote.subscribe_wait([("#", 1)])
        local.subscribe_wait([("commands/#", 1), ("other/#", 1)])
        # Wait until the bridge is up: a probe crosses.
        def probe():
            local.publish_wait("sensors/probe", b"probe", qos=1)
            return any(m.topic == "site-a/sensors/probe" for m in remote.drain())
        support.poll(probe, 20, interval=0.5, message="the bridge forwards sensors/probe")
        local.publish_wait("sensors/temp", b"21.5", qos=1)
        local.publish_wait("other/x", b"stays", qos=1)
        remote_pub = support.connect(remote_port, username="watcher", password="watch-pw",
                                     client_id="watcher-pub")
        def command():
            remote_pub.publish_wait("site-a/commands/light", b"on", qos=1)
            return any(m.topic == "commands/light" for m in local.drain())
        support.poll(command, 20, interval=0.5, message="the bridge brings commands in")
        remote_pub.publish_wait("site-a/other/y", b"stays-remote", qos=1)
        remote_pub.disconnect_wait()
        support.settle([remote, local], quiet=1.0)
        got_remote = sorted({(m.topic, m.payload) for m in remote.drain()
                             if m.topic != "site-a/sensors/probe"
                             and not m.topic.startswith("site-a/commands/")
                             and m.topic != "site-a/other/y"})
        got_local = sorted({(m.topic, m.payload) for m in local.drain()
                            if m.topic != "commands/light" and m.topic != "other/x"})
        return {"remote": got_remote, "local": got_local}
    finally:
        remote.disconnect_wait()
        local.disconnect_wait()


# --------------------------------------------------------------------------- tests

def test_a_split_mosquitto_install_imports_and_answers_like_the_original(tmp_path, mosquitto, edgemq):
    support.require("mosquitto")
    ports = {p: support.free_port() for p in ("1883", "8883", "8083", "1884")}
    # The remote the bridge logs in to: a real Mosquitto with its own password file.
    rpw = tmp_path / "remote.passwd"
    mp = support.require("mosquitto_passwd")
    support.run([mp, "-c", "-b", rpw, "site-a", "bridge-pw-1"], check=True)
    support.run([mp, "-b", rpw, "watcher", "watch-pw"], check=True)
    mosquitto(["allow_anonymous false", f"password_file {rpw}"], name="remote",
              port=ports["1884"])

    conf = prepare(tmp_path, "split", ports)
    e = edgemq(secrets=True)
    r = import_cmd(conf, e.config_dir, e.secrets_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    # Nothing lost (notes only say what is carried over differently).
    assert "not carried over" not in r.stdout, r.stdout
    # Secrets only in the secrets folder.
    for f in e.config_dir.iterdir():
        text = f.read_text()
        assert "bridge-pw-1" not in text and "PRIVATE KEY" not in text, f
    sec = e.secrets_dir / "secrets.yaml"
    assert oct(sec.stat().st_mode & 0o777) == "0o600"
    assert "bridge-pw-1" in sec.read_text() and "PRIVATE KEY" in sec.read_text()
    v = support.run([support.edgemq_bin(), "validate", e.config_dir, "--secrets", e.secrets_dir])
    assert v.returncode == 0, v.stdout + v.stderr
    assert "valid (1 broker(s)" in v.stdout

    listen = [ports["1883"], ports["8883"], ports["8083"]]
    ca = conf.parent / "certs" / "server.crt"

    def ask():
        return {"admit": admissions(ports["1883"]), "acl": acl_matrix(ports["1883"]),
                "tls-ws": tls_and_ws(ports, ca),
                "bridge": bridge_forwarding(ports["1883"], ports["1884"])}

    want, got, back = three_ways(tmp_path, conf, e, listen, ask)

    # The oracle shows the rules doing something.
    assert want["admit"]["alice"] == (True, 0) and want["admit"]["mallory"][0] is False
    assert want["admit"]["anon"] == (True, 0)
    assert want["acl"][("alice", "alice/data", "write")] is True
    assert want["acl"][("alice", "alice/secret", "write")] is False
    assert want["acl"][("anon", "public/info", "read")] is True
    assert want["acl"][("anon", "public/secret", "read")] is False
    assert want["acl"][("dave", "devices/dave/t", "write")] is True
    assert want["tls-ws"]["tls"] == (True, 0) and want["tls-ws"]["ws"] == (True, 0)
    assert want["bridge"]["remote"] == [("site-a/sensors/temp", b"21.5")]

    assert_same(want, got, "edgemq")
    # The round trip: edgemq render of the import is the same configuration again.
    assert_same(want, back, "render of the import")
    assert hashes(tmp_path / "rendered" / "passwd") == hashes(conf.parent / "passwd")


def test_unsupported_options_are_listed_with_file_and_line_and_nothing_is_written(tmp_path):
    conf = prepare(tmp_path, "unsupported", {})
    out, sec = tmp_path / "out", tmp_path / "secrets"
    r = import_cmd(conf, out, sec)
    assert r.returncode != 0, r.stdout
    lines = [l for l in r.stdout.splitlines() if l.startswith("not carried over: ")]
    assert [l.split(": `")[0].removeprefix("not carried over: ") for l in lines] == [
        f"{conf}:4", f"{conf}:5", f"{conf}:9"], r.stdout
    assert "auth_plugin /usr/lib/mosquitto-go-auth.so`: plugins do not exist" in lines[0]
    assert "require_certificate true`: the import does not carry client certificate authentication yet" in lines[2]
    assert "3 setting(s) cannot be carried over; nothing written" in r.stdout
    assert not out.exists() and not sec.exists()

    r = import_cmd(conf, out, sec, "--allow-loss")
    assert r.returncode == 0, r.stdout + r.stderr
    broker = (out / "broker.yaml").read_text()
    assert f"#   {conf}:4: `auth_plugin" in broker  # the losses are kept as comments
    v = support.run([support.edgemq_bin(), "validate", out, "--secrets", sec])
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.parametrize("breakage,want", [
    ("missing-acl", "acl: No such file or directory (os error 2) (named at {conf}:7)"),
    ("bad-acl-line", "{etc}/acl:3: invalid access `rw` (read, write, readwrite or deny)"),
    ("bad-port", "{etc}/conf.d/10-listeners.conf:5: listener: expects a port number"),
])
def test_an_unreadable_or_malformed_file_is_named_and_nothing_is_written(tmp_path, breakage, want):
    ports = {p: support.free_port() for p in ("1883", "8883", "8083", "1884")}
    conf = prepare(tmp_path, "split", ports)
    etc = conf.parent
    if breakage == "missing-acl":
        (etc / "acl").unlink()
    elif breakage == "bad-acl-line":
        (etc / "acl").write_text("# x\nuser alice\ntopic rw alice/#\n")
    else:
        f = etc / "conf.d" / "10-listeners.conf"
        f.write_text(re.sub(r"^listener \d+ 127.0.0.1$", "listener 88x3", f.read_text(), count=2,
                            flags=re.M).replace("listener 88x3", f"listener {ports['1883']} 127.0.0.1", 1))
    out, sec = tmp_path / "out", tmp_path / "secrets"
    r = import_cmd(conf, out, sec, "--allow-loss")
    assert r.returncode != 0
    assert want.format(conf=conf, etc=etc) in r.stderr, r.stderr
    assert not out.exists() and not sec.exists()


def test_mosquittos_own_examples_import_and_validate(tmp_path):
    examples = Path("/usr/share/doc/mosquitto/examples")
    if not examples.is_dir():
        support._missing("Mosquitto's examples not found: install package mosquitto")
    conf = tmp_path / "mosquitto.conf"
    src = examples / "mosquitto.conf"
    if src.exists():
        shutil.copy(src, conf)
    else:
        import gzip
        conf.write_bytes(gzip.decompress((examples / "mosquitto.conf.gz").read_bytes()))
    r = import_cmd(conf, tmp_path / "out", tmp_path / "sec")
    assert r.returncode == 0, r.stdout + r.stderr  # every line of it is a comment
    assert "local only mode" in r.stdout

    # Its ACL example, with the user it names.
    support.run([support.require("mosquitto_passwd"), "-c", "-b", tmp_path / "pw", "roger",
                 "roger-pw"], check=True)
    conf2 = tmp_path / "acl.conf"
    conf2.write_text(f"listener 1883\nallow_anonymous true\npassword_file {tmp_path / 'pw'}\n"
                     f"acl_file {examples / 'aclfile.example'}\n")
    out = tmp_path / "out2"
    r = import_cmd(conf2, out, tmp_path / "sec2")
    assert r.returncode == 0, r.stdout + r.stderr
    broker, users = (out / "broker.yaml").read_text(), (out / "users.yaml").read_text()
    assert "topic: $SYS/#\n    access: read" in broker, broker
    assert "topic: $SYS/broker/connection/%c/state\n    access: write" in broker, broker
    assert "name: roger" in users and "topic: foo/bar" in users, users
    v = support.run([support.edgemq_bin(), "validate", out])
    assert v.returncode == 0, v.stdout + v.stderr


# ----------------------------------------------------------- configurations people run

def crossings(local: dict, remote: dict, out: list, inward: list, probe_out: tuple,
              probe_in: tuple = None) -> dict:
    """What a bridge carries. `local`/`remote`: connect() arguments of a client that may
    read and write everything on that side. Publishes `out` topics locally and `inward`
    topics remotely, and returns which (topic, payload) arrived on the other side.
    `probe_out`/`probe_in` (topic sent, topic expected across) wait for the link."""
    rw = support.connect(client_id="x-remote-watch", **remote)
    lw = support.connect(client_id="x-local-watch", **local)
    rp = support.connect(client_id="x-remote-pub", **remote)
    try:
        rw.subscribe_wait([("#", 1)])
        lw.subscribe_wait([("#", 1)])

        def across(pub, watch, sent, expect):
            def go():
                pub.publish_wait(sent, b"probe", qos=1)
                return any(m.topic == expect for m in watch.drain())
            return go
        support.poll(across(lw, rw, *probe_out), 30, interval=0.5,
                     message=f"the bridge carries {probe_out[0]} out")
        if probe_in:
            support.poll(across(rp, lw, *probe_in), 30, interval=0.5,
                         message=f"the bridge carries {probe_in[0]} in")
        support.settle([rw, lw], quiet=1.0)
        rw.drain(), lw.drain()
        for t in out:
            lw.publish_wait(t, f"L|{t}".encode(), qos=1)
        for t in inward:
            rp.publish_wait(t, f"R|{t}".encode(), qos=1)
        support.settle([rw, lw], quiet=1.5)
        return {"remote got": sorted({(m.topic, m.payload) for m in rw.drain()
                                      if m.payload.startswith(b"L|")}),
                "local got": sorted({(m.topic, m.payload) for m in lw.drain()
                                     if m.payload.startswith(b"R|")})}
    finally:
        for c in (rw, lw, rp):
            c.disconnect_wait()


def aws_iot_case(tmp_path, mosquitto, etc_certs):
    """A stand-in for AWS IoT Core: a Mosquitto whose TLS listener requires a client
    certificate from its CA and takes the certificate's CN as the username (AWS IoT's
    thing), plus a plain listener for the test's watcher."""
    from test_bridges import make_ca, make_leaf
    pki = tmp_path / "pki"
    ca = make_ca(pki, "amazon-root")
    server = make_leaf(pki, "server", ca, "localhost", server=True)
    client = make_leaf(pki, "thing", ca, "bridgeawsiot", server=False)
    acl = pki / "acl"
    acl.write_text("topic readwrite #\nuser bridgeawsiot\ntopic readwrite #\n")
    tls_port = support.free_port()
    remote = mosquitto(["allow_anonymous true", f"acl_file {acl}",
                        f"listener {tls_port} 127.0.0.1", f"cafile {ca[0]}",
                        f"certfile {server[0]}", f"keyfile {server[1]}",
                        "require_certificate true", "use_identity_as_username true"],
                       name="aws-iot")
    return {"addresses": {"a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883":
                          f"127.0.0.1:{tls_port}"},
            "files": {"rootCA.pem": ca[0], "cert.crt": client[0], "private.key": client[1]},
            "remote": {"port": remote.port}}


def second_broker_case(tmp_path, mosquitto, etc_certs):
    """A central Mosquitto with a TLS listener and a password file."""
    from test_bridges import make_ca, make_leaf
    pki = tmp_path / "pki"
    ca = make_ca(pki, "central-ca")
    server = make_leaf(pki, "server", ca, "localhost", server=True)
    pw = pki / "passwd"
    mp = support.require("mosquitto_passwd")
    support.run([mp, "-c", "-b", pw, "site-b", "central-pw-2"], check=True)
    support.run([mp, "-b", pw, "watcher", "watch-pw"], check=True)
    tls_port = support.free_port()
    remote = mosquitto(["allow_anonymous false", f"password_file {pw}",
                        f"listener {tls_port} 127.0.0.1", f"certfile {server[0]}",
                        f"keyfile {server[1]}"], name="central")
    return {"addresses": {"central.example.net:8883": f"127.0.0.1:{tls_port}"},
            "files": {"central-ca.crt": ca[0]},
            "remote": {"port": remote.port, "username": "watcher", "password": "watch-pw"}}


HA_PASSWORDS = {"homeassistant": "ha-pw", "zigbee2mqtt": "z2m-pw", "sensor": "sensor-pw"}
HA_CLIENTS = [
    ("homeassistant", "homeassistant", "ha-pw", "ha-c"),
    ("zigbee2mqtt", "zigbee2mqtt", "z2m-pw", "z2m-c"),
    ("sensor", "sensor", "sensor-pw", "sensor-c"),
    ("anon", None, None, "anon-c"),
    ("sensor-wrong-pw", "sensor", "nope", "s2-c"),
    ("stranger", "stranger", "x", "stranger-c"),
]
HA_TOPICS = ["homeassistant/status", "homeassistant/sensor/t/config", "zigbee2mqtt/bridge/state",
             "zigbee2mqtt/lamp/set", "sensors/temp", "clients/sensor/x", "clients/zigbee2mqtt/x",
             "other/x"]


@pytest.mark.parametrize("case", ["aws-iot", "second-broker", "home-assistant"])
def test_configurations_people_run_import_validate_and_round_trip(tmp_path, mosquitto, edgemq,
                                                                   case):
    support.require("mosquitto")
    ports = {"1883": support.free_port(), "1884": support.free_port()}
    passwords = HA_PASSWORDS if case == "home-assistant" else PASSWORDS
    extra = {"addresses": {}, "files": {}}
    if case == "aws-iot":
        extra = aws_iot_case(tmp_path, mosquitto, None)
    elif case == "second-broker":
        extra = second_broker_case(tmp_path, mosquitto, None)
    conf = prepare(tmp_path, case, ports, passwords, extra["addresses"])
    for name, src in extra["files"].items():
        shutil.copy(src, conf.parent / "certs" / name)

    e = edgemq(secrets=True)
    r = import_cmd(conf, e.config_dir, e.secrets_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not carried over" not in r.stdout, r.stdout
    for f in e.config_dir.iterdir():
        assert "central-pw-2" not in f.read_text() and "PRIVATE KEY" not in f.read_text(), f
    v = support.run([support.edgemq_bin(), "validate", e.config_dir, "--secrets", e.secrets_dir])
    assert v.returncode == 0, v.stdout + v.stderr
    assert "valid (1 broker(s)" in v.stdout

    p = ports["1883"]
    if case == "aws-iot":
        listen = [p]
        remote = extra["remote"]

        def ask():
            return {"admit": admissions(p, [("anon", None, None, "anon-c")]),
                    "bridge": crossings({"port": p}, remote,
                                        ["a/b", "sensors/kitchen/temp", "deep/er/topic"],
                                        ["cloud/cmd"], ("probe/x", "probe/x"))}
    elif case == "second-broker":
        listen = [p]
        remote = extra["remote"]
        local = {"port": p, "username": "observer", "password": "observer-pw"}

        def ask():
            return {"admit": admissions(p),
                    "bridge": crossings(local, remote,
                                        ["readings/power", "status/site", "cmd/local", "other/x"],
                                        ["site-b/cmd/reboot", "status/central", "site-b/readings/z",
                                         "cmd/unprefixed"],
                                        ("readings/probe", "site-b/readings/probe"),
                                        ("site-b/cmd/probe", "cmd/probe"))}
    else:
        listen = [p, ports["1884"]]

        def ask():
            return {"admit": admissions(p, HA_CLIENTS),
                    "admit-ws": admissions(ports["1884"], HA_CLIENTS, transport="websockets"),
                    "acl": acl_matrix(p, HA_CLIENTS, HA_TOPICS, ("homeassistant", "ha-pw"))}

    want, got, back = three_ways(tmp_path, conf, e, listen, ask)

    # The oracle shows the configuration doing something.
    if case == "aws-iot":
        assert want["bridge"]["remote got"] == [
            ("a/b", b"L|a/b"), ("deep/er/topic", b"L|deep/er/topic"),
            ("sensors/kitchen/temp", b"L|sensors/kitchen/temp")]
        assert want["bridge"]["local got"] == []
    elif case == "second-broker":
        assert want["admit"]["anon"][0] is False and want["admit"]["alice"] == (True, 0)
        assert want["bridge"]["remote got"] == [
            ("site-b/readings/power", b"L|readings/power"), ("status/site", b"L|status/site")]
        assert want["bridge"]["local got"] == [
            ("cmd/reboot", b"R|site-b/cmd/reboot"), ("status/central", b"R|status/central")]
    else:
        assert want["admit"]["homeassistant"] == (True, 0) and want["admit"]["anon"][0] is False
        assert want["admit-ws"]["sensor"] == (True, 0)
        assert want["admit-ws"]["sensor-wrong-pw"][0] is False
        assert want["acl"][("sensor", "sensors/temp", "write")] is True
        assert want["acl"][("sensor", "sensors/temp", "read")] is False
        assert want["acl"][("zigbee2mqtt", "homeassistant/sensor/t/config", "write")] is True
        assert want["acl"][("zigbee2mqtt", "homeassistant/sensor/t/config", "read")] is False
        assert want["acl"][("sensor", "clients/sensor/x", "read")] is True
        assert want["acl"][("homeassistant", "other/x", "write")] is True

    assert_same(want, got, "edgemq")
    assert_same(want, back, "render of the import")
    assert hashes(tmp_path / "rendered" / "passwd") == (
        hashes(conf.parent / "passwd") if case != "aws-iot" else set())


def test_certbot_certificates_are_proposed_as_acme_certificates_with_their_names(tmp_path):
    ports = {p: support.free_port() for p in ("1883", "8883", "8083")}
    le = tmp_path / "letsencrypt" / "live" / "mqtt.example.org"
    le.mkdir(parents=True)
    r = support.run([support.require("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", le / "privkey.pem",
                     "-out", le / "fullchain.pem", "-days", "2", "-subj", "/CN=mqtt.example.org",
                     "-addext", "subjectAltName=DNS:mqtt.example.org,DNS:broker.example.org,"
                     "IP:127.0.0.1"])
    assert r.returncode == 0, r.stderr
    conf = prepare(tmp_path, "certbot", ports,
                   addresses={"/etc/letsencrypt": str(tmp_path / "letsencrypt")})

    # Without the flag: a note, and no proposal.
    r = import_cmd(conf, tmp_path / "plain", tmp_path / "plain-sec")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("a certbot certificate: edgemq can issue and renew it itself with an `acme` "
            "Certificate (dnsNames: [mqtt.example.org, broker.example.org])") in r.stdout
    assert not (tmp_path / "plain" / "proposed-acme-certificates.yaml").exists()

    out, sec = tmp_path / "out", tmp_path / "sec"
    r = import_cmd(conf, out, sec, "--propose-acme", "ops@example.org")
    assert r.returncode == 0, r.stdout + r.stderr
    proposal = out / "proposed-acme-certificates.yaml"
    text = proposal.read_text()
    # Inactive: every line a comment, and the folder validates as imported.
    assert all(line.startswith("#") for line in text.splitlines()), text
    assert (f"secretRef tls-mqtt-example-org of listener(s) mqtts-{ports['8883']}, "
            f"wss-{ports['8083']}.") in text, text
    v = support.run([support.edgemq_bin(), "validate", out, "--secrets", sec])
    assert v.returncode == 0 and "valid (1 broker(s)" in v.stdout, v.stdout + v.stderr

    # Uncommented as the file says, it is an acme Certificate for the certificate's
    # names, and the listeners take it in place of the copied files.
    body = text.split("# ---\n", 1)[1]
    cert_yaml = "\n".join(line[2:] for line in body.splitlines())
    cert = yaml.safe_load(cert_yaml)
    assert cert["kind"] == "Certificate" and cert["metadata"]["name"] == "mqtt-example-org"
    assert cert["spec"]["dnsNames"] == ["mqtt.example.org", "broker.example.org"]
    assert cert["spec"]["issuer"]["acme"]["email"] == "ops@example.org"
    assert cert["spec"]["issuer"]["acme"]["server"] == \
        "https://acme-v02.api.letsencrypt.org/directory"
    proposal.write_text(cert_yaml + "\n")
    broker = out / "broker.yaml"
    switched = broker.read_text().replace("secretRef: tls-mqtt-example-org",
                                          "certificateRef: mqtt-example-org")
    assert switched.count("certificateRef: mqtt-example-org") == 2, switched
    broker.write_text(switched)
    v = support.run([support.edgemq_bin(), "validate", out, "--secrets", sec])
    assert v.returncode == 0 and "valid (1 broker(s)" in v.stdout, v.stdout + v.stderr
