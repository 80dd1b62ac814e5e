"""Live reload of the config folder with 50 Paho clients connected: what changes takes
effect, nobody is disconnected who should not be, a bad edit changes nothing of the
object it breaks, and never holds back another object's change or deletion."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from helpers_b import (fingerprint_of_file, make_cert, served_fingerprint, served_serial,
                       tls_secret_yaml)
from support import (broker_yaml, can_login, connect, free_port, metric, MQTTv5, poll, port_open,
                     raw_connack, timed_poll, try_connect, unique_id, user_yaml)

NOT_AUTHORIZED = 0x87  # CONNACK "not authorized" as paho reports it (3.1.1 code 5)

USERS = [f"u{i}" for i in range(10)]
CLIENTS_PER_USER = 5  # the last one of each user connects over TLS


def broker_doc(port: int, tls_port: int, extra_listeners: str = "") -> str:
    return f"""apiVersion: edgemq.io/v1alpha1
kind: Broker
metadata: {{name: home}}
spec:
  listeners:
    - {{name: mqtt, port: {port}, bindAddress: 127.0.0.1}}
    - {{name: tls, port: {tls_port}, bindAddress: 127.0.0.1, tls: {{secretRef: srv-tls}}}}
{extra_listeners}  allowAnonymous: false
  aclEnabled: true
"""


def users_doc(passwords: dict, acls: dict, broker_refs: dict = None) -> str:
    """Every MqttUser and the Secret with their passwords, in one file (one write)."""
    broker_refs = broker_refs or {}
    out = []
    for name in passwords:
        rules = ", ".join(f'{{topic: "{t}", access: {a}}}' for t, a in acls[name])
        out.append(f"""apiVersion: edgemq.io/v1alpha1
kind: MqttUser
metadata: {{name: {name}}}
spec:
  brokerRef: {broker_refs.get(name, "home")}
  passwordSecretRef: {{name: pw, key: {name}}}
  acl: [{rules}]
""")
    pw = "\n".join(f"  {k}: {v}" for k, v in passwords.items())
    out.append(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: pw}}\nstringData:\n{pw}\n")
    return "---\n".join(out)


class Fleet:
    """A broker with 10 users x 5 clients connected, plus an admin observer on '#'."""

    def __init__(self, edgemq, tmp_path: Path):
        self.port, self.tls_port = free_port(), free_port()
        self.pki = tmp_path / "pki"
        self.crt, self.key = make_cert(self.pki, "server-1", 1001)
        self.passwords = {u: f"pw-{u}" for u in USERS}
        self.passwords["admin"] = "pw-admin"
        self.acls = {u: [("shared/#", "readwrite"), (f"{u}/#", "readwrite")] for u in USERS}
        self.acls["admin"] = [("#", "readwrite")]
        self.e = edgemq()
        self.e.write("broker.yaml", broker_doc(self.port, self.tls_port))
        self.e.write("users.yaml", users_doc(self.passwords, self.acls))
        self.e.write("tls.yaml", tls_secret_yaml("srv-tls", self.crt, self.key))
        self.e.start()
        self.clients = {}
        for u in USERS:
            for j in range(CLIENTS_PER_USER):
                tls = j == CLIENTS_PER_USER - 1
                c = connect(self.tls_port if tls else self.port, username=u,
                            password=self.passwords[u], client_id=f"{u}-{j}",
                            tls={"ca_certs": str(self.crt)} if tls else None)
                c.user = u
                assert c.subscribe_wait(f"{u}/#", qos=1) == [1]
                self.clients[f"{u}-{j}"] = c
        self.admin = connect(self.port, username="admin", password="pw-admin", client_id="admin")
        assert self.admin.subscribe_wait("#", qos=1) == [1]

    def write_users(self) -> float:
        t0 = time.monotonic()
        self.e.write("users.yaml", users_doc(self.passwords, self.acls))
        return t0

    def disconnected(self) -> list:
        out = [cid for cid, c in self.clients.items() if c.disconnected.is_set()]
        if self.admin.disconnected.is_set():
            out.append("admin")
        return sorted(out)

    def ping_all(self, users=USERS) -> None:
        """admin publishes to each user's topic; every client of that user gets it."""
        tag = unique_id("ping")
        for u in users:
            self.admin.publish_wait(f"{u}/ping", tag.encode(), qos=1)
        for u in users:
            for j in range(CLIENTS_PER_USER):
                c = self.clients[f"{u}-{j}"]
                while True:
                    m = c.get(timeout=10)
                    if m.payload == tag.encode():
                        assert m.topic == f"{u}/ping"
                        break

    def observe(self, client, topic: str) -> bool:
        """client publishes a unique payload to topic; True if admin sees it (denied
        publishes are acknowledged and dropped, so absence is waited for briefly)."""
        tag = unique_id("probe").encode()
        client.publish_wait(topic, tag, qos=1)
        while True:
            m = self.admin.get_or_none(0.3)
            if m is None:
                return False
            if m.payload == tag:
                return True

    def close(self):
        for c in [*self.clients.values(), self.admin]:
            try:
                c.disconnect_wait(timeout=2)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def fleet(edgemq, tmp_path):
    f = Fleet(edgemq, tmp_path)
    yield f
    f.close()


def test_adding_a_user_changing_an_acl_and_replacing_the_certificate_disconnect_nobody(fleet):
    f, e = fleet, fleet.e
    assert len(f.clients) == 50
    f.ping_all()
    reloads = metric(e.metrics(), "edgemq_config_reloads_total")

    # (a) a new user can log in.
    f.passwords["newbie"] = "pw-newbie"
    f.acls["newbie"] = [("newbie/#", "readwrite")]
    assert try_connect(f.port, username="newbie", password="pw-newbie") == (False, NOT_AUTHORIZED)
    t0 = f.write_users()
    took = timed_poll(lambda: can_login(f.port, "newbie", "pw-newbie"),
                      15, since=t0, message="new user can log in")
    print(f"reload latency (add a user, write -> login accepted): {took * 1000:.0f} ms")

    # (b) an ACL change: a topic becomes allowed for u0, and shared/# denied for u1.
    u0, u1 = f.clients["u0-0"], f.clients["u1-0"]
    assert not f.observe(u0, "extra/probe"), "u0 may publish to extra/ before it is allowed"
    assert f.observe(u1, "shared/probe")
    watcher = connect(f.port, username="admin", password="pw-admin")
    assert watcher.subscribe_wait("extra/#", qos=0) == [0]
    f.acls["u0"] = f.acls["u0"] + [("extra/#", "write")]
    f.acls["u1"] = [("u1/#", "readwrite")]
    probing = threading.Event()
    probing.set()

    def probe():  # u0 keeps trying to publish to extra/ every 10 ms
        while probing.is_set():
            u0.c.publish("extra/probe", b"probe", qos=0)
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        t0 = f.write_users()
        watcher.get(timeout=15)
        took = time.monotonic() - t0
    finally:
        probing.clear()
        prober.join()
        watcher.disconnect_wait()
    print(f"reload latency (ACL allows a topic, write -> publish delivered): {took * 1000:.0f} ms")
    denials = metric(e.metrics(), "edgemq_acl_denials_total")
    assert not f.observe(u1, "shared/probe"), "u1's publish to shared/ still delivered after it was denied"
    assert metric(e.metrics(), "edgemq_acl_denials_total") > denials

    # (c) replace the server certificate of the secretRef TLS listener.
    assert served_fingerprint(f.tls_port) == fingerprint_of_file(f.crt)
    crt2, key2 = make_cert(f.pki, "server-2", 1002)
    t0 = time.monotonic()
    e.write("tls.yaml", tls_secret_yaml("srv-tls", crt2, key2))
    took = timed_poll(lambda: served_fingerprint(f.tls_port) == fingerprint_of_file(crt2), 15,
                      since=t0, message="new TLS connections see the new certificate")
    print(f"reload latency (certificate replaced, write -> served): {took * 1000:.0f} ms")
    assert served_serial(f.tls_port, crt2) == 1002
    c = connect(f.tls_port, username="u9", password="pw-u9", tls={"ca_certs": str(crt2)})
    c.disconnect_wait()

    # Zero disconnects, and everyone (the TLS clients on the old certificate too) is served.
    f.ping_all()
    assert f.disconnected() == [], f"clients disconnected by live reloads: {f.disconnected()}"
    assert metric(e.metrics(), "edgemq_config_reloads_total") >= reloads + 3
    assert e.status()["config"]["valid"] is True


def test_repasswording_or_removing_a_user_disconnects_that_users_sessions_and_nobody_elses(fleet):
    f = fleet
    f.ping_all()

    # Re-password u2.
    f.passwords["u2"] = "new-u2"
    t0 = f.write_users()
    u2 = [f"u2-{j}" for j in range(CLIENTS_PER_USER)]
    took = timed_poll(lambda: all(f.clients[c].disconnected.is_set() for c in u2), 15, since=t0,
                      message="u2's sessions disconnected after its password changed")
    print(f"reload latency (re-password, write -> sessions closed): {took * 1000:.0f} ms")
    others = [u for u in USERS if u != "u2"]
    f.ping_all(others)
    assert f.disconnected() == u2
    assert try_connect(f.port, username="u2", password="pw-u2") == (False, NOT_AUTHORIZED), \
        "old password still accepted"
    assert try_connect(f.port, username="u2", password="new-u2")[0], "new password refused"

    # Remove u3.
    del f.passwords["u3"]
    del f.acls["u3"]
    f.write_users()
    u3 = [f"u3-{j}" for j in range(CLIENTS_PER_USER)]
    poll(lambda: all(f.clients[c].disconnected.is_set() for c in u3), 15,
         message="u3's sessions disconnected after it was removed")
    others = [u for u in USERS if u not in ("u2", "u3")]
    f.ping_all(others)
    assert f.disconnected() == sorted(u2 + u3)
    assert try_connect(f.port, username="u3", password="pw-u3") == (False, NOT_AUTHORIZED), \
        "removed user still accepted"


def small_config(edgemq, clients, tmp_path):
    port, tls_port = free_port(), free_port()
    e = edgemq()
    e.tls_port = tls_port
    crt, key = make_cert(tmp_path / "pki", "server", 7)
    passwords = {"alice": "pw-alice", "bob": "pw-bob"}
    acls = {u: [("home/#", "readwrite")] for u in passwords}
    e.write("broker.yaml", broker_doc(port, tls_port))
    e.write("users.yaml", users_doc(passwords, acls))
    e.write("tls.yaml", tls_secret_yaml("srv-tls", crt, key))
    e.start()
    sub = clients(port, username="alice", password="pw-alice")
    sub.subscribe_wait("home/#", qos=1)
    pub = clients(port, username="bob", password="pw-bob")
    return e, port, passwords, acls, sub, pub


def exchange(sub, pub, payload: bytes) -> None:
    pub.publish_wait("home/x", payload, qos=1)
    m = sub.get(timeout=5)
    assert m.payload == payload


@pytest.mark.parametrize("breakage", ["yaml-syntax", "dangling-broker-ref"])
def test_an_invalid_edit_keeps_the_broker_serving_and_fixing_it_applies(edgemq, clients, tmp_path, breakage):
    e, port, passwords, acls, sub, pub = small_config(edgemq, clients, tmp_path)
    errors_before = metric(e.metrics(), "edgemq_config_reload_errors_total")

    passwords["carol"] = "pw-carol"
    acls["carol"] = [("home/#", "readwrite")]
    if breakage == "yaml-syntax":
        bad = users_doc(passwords, acls).replace("acl: [{topic: \"home/#\", access: readwrite}]\n---\napiVersion: v1",
                                                 "acl: [{topic: \"home/#\", access: readwrite}\n---\napiVersion: v1")
        assert bad != users_doc(passwords, acls)
    else:
        bad = users_doc(passwords, acls, broker_refs={"carol": "nowhere"})
    e.write("users.yaml", bad)

    st = e.wait_applied(lambda st: st if st["config"]["valid"] is False else None,
                        message="status reports the invalid config")
    errors = st["config"]["errors"]
    text = " ".join(map(str, errors))
    print(f"config errors reported for {breakage}: {errors}")
    found = re.search(r"users\.yaml:(\d+)", text)
    assert found, f"errors lack file:line: {errors}"
    # The line points into carol's document (between its first line and the Secret's).
    lines = bad.splitlines()
    first = lines.index("metadata: {name: carol}")  # 1-based line of its apiVersion
    last = lines.index("kind: Secret") + 1
    assert first <= int(found.group(1)) <= last, f"line {found.group(1)} is outside carol's document: {errors}"
    if breakage == "dangling-broker-ref":
        assert "nowhere" in text, errors
    poll(lambda: metric(e.metrics(), "edgemq_config_reload_errors_total") > errors_before, 5,
         message="reload error counted")

    # The running config is untouched: clients exchange messages, logins work as before,
    # the half-added user does not exist.
    exchange(sub, pub, b"during bad config")
    assert try_connect(port, username="alice", password="pw-alice")[0]
    assert try_connect(port, username="carol", password="pw-carol") == (False, NOT_AUTHORIZED)
    assert e.http_get("/healthz")[0] == 200

    e.write("users.yaml", users_doc(passwords, acls))
    e.wait_applied(lambda st: st["config"]["valid"] is True and not st["config"]["errors"],
                   message="fixed config applied")
    poll(lambda: try_connect(port, username="carol", password="pw-carol")[0], 10,
         message="carol can log in once the fix is applied")
    exchange(sub, pub, b"after the fix")
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()


def test_a_listener_can_be_added_and_removed_live(edgemq, clients, tmp_path):
    e, port, passwords, acls, sub, pub = small_config(edgemq, clients, tmp_path)
    tls_port, extra = e.tls_port, free_port()
    assert not port_open(extra)

    t0 = time.monotonic()
    e.write("broker.yaml", broker_doc(port, tls_port, f"    - {{name: extra, port: {extra}, "
                                                        "bindAddress: 127.0.0.1}\n"))
    took = timed_poll(lambda: can_login(extra, "bob", "pw-bob"), 10, since=t0, edgemq=e,
                      message="added listener accepts clients")
    print(f"reload latency (add a listener, write -> login on it): {took * 1000:.0f} ms")
    on_extra = clients(extra, username="alice", password="pw-alice")
    on_extra.subscribe_wait("home/#", qos=1)
    exchange(on_extra, pub, b"via extra")
    sub.get(timeout=5)

    e.write("broker.yaml", broker_doc(port, tls_port))
    timed_poll(lambda: not port_open(extra), 10, edgemq=e, message="removed listener stops accepting")
    exchange(sub, pub, b"after removal")
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
    assert e.status()["config"]["valid"] is True


def _revoke_folder(e, port: int, acls: dict, carol_ref: str = "carol") -> None:
    """broker.yaml, one file per user (alice, bob, carol), and secrets.yaml."""
    e.write("broker.yaml", broker_yaml("home", port, "  aclEnabled: true"))
    for name, rules in acls.items():
        ref = carol_ref if name == "carol" else name
        e.write(f"{name}.yaml", user_yaml(name, "home", acl=rules, secret_ref=("pw", ref)))
    e.write("secrets.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: pw}\nstringData:\n"
            "  alice: pw-alice\n  bob: pw-bob\n  carol: pw-carol\n")


def test_deleting_a_user_locks_it_out_while_another_user_is_invalid(edgemq, clients, tmp_path):
    port = free_port()
    e = edgemq()
    acls = {u: [("home/#", "readwrite")] for u in ("alice", "bob", "carol")}
    _revoke_folder(e, port, acls)
    e.start()
    sub = clients(port, username="alice", password="pw-alice")
    assert sub.subscribe_wait("home/#", qos=1) == [1]
    bob = clients(port, username="bob", password="pw-bob")
    exchange(sub, bob, b"before")

    # Break carol: her password reference now names a key the Secret does not have.
    e.write("carol.yaml", user_yaml("carol", "home", acl=acls["carol"], secret_ref=("pw", "carol-typo")))
    carol_line = next(i for i, l in enumerate((e.config_dir / "carol.yaml").read_text().splitlines(), 1)
                      if "passwordSecretRef" in l)

    def carol_status(st):
        for r in st["resources"]:
            if r["kind"] == "MqttUser" and r["name"] == "carol":
                c = r["conditions"][0]
                if c["reason"] == "InvalidSpec":
                    return r
        return None

    carol = e.wait_applied(carol_status, message="carol's status names her mistake")
    cond = carol["conditions"][0]
    assert cond["status"] == "False", cond
    where = f"carol.yaml:{carol_line}: MqttUser/carol: Secret `pw` has no key `carol-typo`"
    assert where in cond["message"], cond
    assert cond["message"].endswith("its last good version stays in effect"), cond
    st = e.status()
    assert st["config"]["valid"] is False and any(where in x for x in st["config"]["errors"]), st["config"]
    # carol keeps her last good version; nobody else is touched.
    assert try_connect(port, username="carol", password="pw-carol")[0]
    assert not bob.disconnected.is_set() and not sub.disconnected.is_set()

    # Delete bob while carol is broken: locked out at once, his session closed.
    e.remove("bob.yaml")
    poll(lambda: bob.disconnected.is_set(), 15, message="bob's connection closed after his deletion")
    assert raw_connack(port, username="bob", password="pw-bob", v5=False) == ((2, 0, b"\x00\x05"), True)
    (ptype, flags, body), closed = raw_connack(port, username="bob", password="pw-bob", v5=True)
    assert (ptype, flags, body, closed) == (2, 0, b"\x00\x87\x00", True), body
    assert try_connect(port, username="bob", password="pw-bob", protocol=MQTTv5) == (False, 0x87)
    # alice still works, and carol still logs in at her last good version.
    pub2 = clients(port, username="alice", password="pw-alice")
    exchange(sub, pub2, b"after bob's deletion")
    assert try_connect(port, username="carol", password="pw-carol")[0]

    # An edit of alice's rules applies while carol is broken.
    acls["alice"] = [("home/#", "readwrite"), ("extra/#", "readwrite")]
    e.write("alice.yaml", user_yaml("alice", "home", acl=acls["alice"], secret_ref=("pw", "alice")))

    def extra_delivered():
        s = clients(port, username="alice", password="pw-alice")
        s.subscribe_wait("extra/#", qos=1)
        s.publish_wait("extra/t", b"x", qos=1)
        return s.get_or_none(0.5) is not None

    poll(extra_delivered, 15, interval=0.3, message="alice's new rule applies while carol is broken")

    # `edgemq status` names carol's mistake with file:line.
    r = e.cli("status", "--state", str(e.state_dir))
    assert r.returncode == 3, r.stdout + r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("MqttUser") and " carol " in l)
    assert "InvalidSpec" in line and where in line, r.stdout

    # The fix applies.
    e.write("carol.yaml", user_yaml("carol", "home", acl=acls["carol"], secret_ref=("pw", "carol")))
    e.wait_applied(lambda st: st["config"]["valid"] is True and not carol_status(st), message="fixed")
    assert not sub.disconnected.is_set()
