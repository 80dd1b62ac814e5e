"""Password authentication, interchangeable with Mosquitto's in both directions:
hashes made by the real mosquitto_passwd log in to edgemq, hashes made by
`edgemq passwd` log in to a real Mosquitto 2.0, and both refuse the same clients the
same way."""

from __future__ import annotations

import pytest

import support
from support import MQTTv311, MQTTv5

NOT_AUTHORIZED_311 = 5      # CONNACK return code "not authorized"
NOT_AUTHORIZED_5 = 0x87     # MQTT 5 reason code "Not authorized"


def mosquitto_pub(port, topic, message, username=None, password=None, retain=False, qos=1):
    args = [support.require("mosquitto_pub"), "-h", "127.0.0.1", "-p", port, "-t", topic,
            "-m", message, "-q", qos, "-i", support.unique_id("mpub")]
    if username is not None:
        args += ["-u", username]
    if password is not None:
        args += ["-P", password]
    if retain:
        args.append("-r")
    return support.run(args, timeout=20)


def mosquitto_sub_one(port, topic, username=None, password=None):
    """Subscribe, wait for one message (e.g. a retained one) for at most 5 s."""
    args = [support.require("mosquitto_sub"), "-h", "127.0.0.1", "-p", port, "-t", topic,
            "-C", "1", "-W", "5", "-q", "1", "-i", support.unique_id("msub")]
    if username is not None:
        args += ["-u", username]
    if password is not None:
        args += ["-P", password]
    return support.run(args, timeout=20)


def start_edgemq(edgemq, users: "list[tuple]", broker_extra: str = "", secrets_docs=(),
                 secrets_dir_docs=()):
    """edgemq with one Broker 'auth' and MqttUsers from (name, hash) pairs (or full YAML
    strings), each with readwrite on auth/#."""
    port = support.free_port()
    e = edgemq(secrets=bool(secrets_dir_docs))
    parts = [support.broker_yaml("auth", port, broker_extra)]
    for u in users:
        if isinstance(u, str):
            parts.append(u)
        else:
            name, h = u
            parts.append(support.user_yaml(name, "auth", password_hash=h,
                                           acl=[("auth/#", "readwrite")]))
    parts += list(secrets_docs)
    e.write("auth.yaml", support.docs(*parts))
    for i, d in enumerate(secrets_dir_docs):
        e.write_secret(f"secret{i}.yaml", d)
    e.start()
    support.wait_port(port)
    return port


# --------------------------------------------------------------------------- hashes from the peer

def test_users_hashed_by_mosquitto_passwd_log_in_to_edgemq(edgemq, tmp_path):
    mp = support.require("mosquitto_passwd")
    pwfile = tmp_path / "passwd"
    assert support.run([mp, "-c", "-b", pwfile, "alice", "secret1"]).returncode == 0
    assert support.run([mp, "-b", pwfile, "bob", "hunter2 with spaces"]).returncode == 0
    hashes = dict(line.split(":", 1) for line in pwfile.read_text().splitlines() if ":" in line)
    assert set(hashes) == {"alice", "bob"}

    port = start_edgemq(edgemq, list(hashes.items()))

    r = mosquitto_pub(port, "auth/lamp", "on", "alice", "secret1", retain=True)
    assert r.returncode == 0, f"alice refused by edgemq: {r.stdout}{r.stderr}"
    r = mosquitto_sub_one(port, "auth/lamp", "bob", "hunter2 with spaces")
    assert r.returncode == 0, f"bob refused by edgemq: {r.stdout}{r.stderr}"
    assert r.stdout.strip() == "on"
    mosquitto_pub(port, "auth/lamp", "", "alice", "secret1", retain=True)


def test_the_known_answer_hash_logs_in(edgemq):
    port = start_edgemq(edgemq, [("alice", support.ALICE_HASH)])
    c = support.connect(port, "alice", "secret1")
    c.disconnect_wait()


# The Home Assistant Mosquitto add-on's documentation: `pw -p "foo"` (mosquitto-go-auth).
HA_ADDON_HASH = ("PBKDF2$sha512$100000$qsU7xQ8YCV/9nRuBBJVTxA==$jqw94Ej3aEr97UofY6rClmVCRkTdD"
                 "iubQW0A6ZYmUI+pZjW9Hax+2w2FeYB3y5ut1SliB7+HAwIl2iONLKkohw==")


def test_a_mosquitto_go_auth_pbkdf2_hash_from_the_home_assistant_addon_logs_in(edgemq):
    port = start_edgemq(edgemq, [("ha", HA_ADDON_HASH)])
    # 100,000 PBKDF2 rounds take seconds in an unoptimised build: a generous CONNACK wait.
    c = support.connect(port, "ha", "foo", timeout=30)
    c.publish_wait("auth/x", b"1", qos=1)
    c.disconnect_wait()
    ok, code = support.try_connect(port, username="ha", password="bar", timeout=30)
    assert (ok, code) == (False, 135), code  # code 5 as Mosquitto; paho shows it as 0x87


def test_a_hash_made_by_edgemq_passwd_works_in_mosquitto(mosquitto, tmp_path):
    pwfile = tmp_path / "edgemq-passwd"
    r = support.run([support.edgemq_bin(), "passwd", "-c", "-b", pwfile, "carol", "pa:ss wörd"])
    assert r.returncode == 0, r.stderr
    r = support.run([support.edgemq_bin(), "passwd", "-b", pwfile, "dave", "dave-pw"])
    assert r.returncode == 0, r.stderr
    m = mosquitto(["allow_anonymous false", f"password_file {pwfile}"])

    r = mosquitto_pub(m.port, "x/y", "hi", "carol", "pa:ss wörd", retain=True)
    assert r.returncode == 0, f"Mosquitto refused carol's edgemq hash: {r.stderr}\n{m.log_tail()}"
    r = mosquitto_sub_one(m.port, "x/y", "dave", "dave-pw")
    assert r.returncode == 0 and r.stdout.strip() == "hi", f"{r.stderr}\n{m.log_tail()}"
    assert support.try_connect(m.port, username="carol", password="wrong") == (False, NOT_AUTHORIZED_5)


def test_edgemq_passwd_file_is_read_back_by_mosquitto_passwd_update(tmp_path):
    """`edgemq passwd -D` and the real tool agree on the file format."""
    mp = support.require("mosquitto_passwd")
    pwfile = tmp_path / "passwd"
    assert support.run([mp, "-c", "-b", pwfile, "one", "1"]).returncode == 0
    assert support.run([support.edgemq_bin(), "passwd", "-b", pwfile, "two", "2"]).returncode == 0
    assert support.run([support.edgemq_bin(), "passwd", "-D", pwfile, "one"]).returncode == 0
    users = [l.split(":", 1)[0] for l in pwfile.read_text().splitlines() if ":" in l]
    assert users == ["two"]


# --------------------------------------------------------------------------- refusals, both brokers

@pytest.fixture(params=["edgemq", "mosquitto"])
def auth_broker(request, edgemq, mosquitto, tmp_path):
    """A broker of either kind with user alice/secret1 and anonymous access off."""
    if request.param == "edgemq":
        return start_edgemq(edgemq, [("alice", support.ALICE_HASH)])
    pwfile = tmp_path / "mosq-passwd"
    pwfile.write_text(f"alice:{support.ALICE_HASH}\n")
    return mosquitto(["allow_anonymous false", f"password_file {pwfile}"]).port


@pytest.mark.parametrize("username,password", [
    ("alice", "secret2"), ("alice", ""), ("alice", None), ("mallory", "secret1"), ("", "secret1"),
], ids=["wrong-password", "empty-password", "no-password", "unknown-user", "empty-username"])
def test_wrong_credentials_are_refused(auth_broker, username, password):
    ok, _ = support.try_connect(auth_broker, username="alice", password="secret1")
    assert ok, "the right password must work"

    assert support.connack_code(auth_broker, username, password) == NOT_AUTHORIZED_311
    assert support.connack_code(auth_broker, username, password, v5=True) == NOT_AUTHORIZED_5
    assert support.try_connect(auth_broker, username=username, password=password,
                               protocol=MQTTv5) == (False, NOT_AUTHORIZED_5)
    if not username:
        return  # mosquitto_pub itself refuses a password without a username
    r = mosquitto_pub(auth_broker, "auth/x", "m", username, password)
    assert r.returncode != 0, "mosquitto_pub must fail"
    assert "not authori" in (r.stdout + r.stderr).lower()


def test_anonymous_clients_are_refused(auth_broker):
    assert support.connack_code(auth_broker) == NOT_AUTHORIZED_311
    assert support.connack_code(auth_broker, v5=True) == NOT_AUTHORIZED_5
    assert support.try_connect(auth_broker, protocol=MQTTv5) == (False, NOT_AUTHORIZED_5)
    r = mosquitto_pub(auth_broker, "auth/x", "m")
    assert r.returncode != 0
    assert "not authori" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    # and the broker is still serving
    assert support.try_connect(auth_broker, username="alice", password="secret1")[0]


def test_anonymous_access_is_off_unless_the_broker_allows_it(edgemq):
    port = support.free_port()
    e = edgemq()
    e.write("b.yaml", support.broker_yaml("anon", port, "  allowAnonymous: true\n  aclEnabled: false\n"))
    e.start()
    support.wait_port(port)
    assert support.try_connect(port)[0], "allowAnonymous: true must let anonymous clients in"


def test_a_malformed_hash_is_named_by_file_and_line_and_never_opens_access(edgemq):
    # salt decodes to 11 bytes instead of 12: Mosquitto drops such an entry
    bad = "$7$101$qKSz0fyQacdTZ9H$" + support.ALICE_HASH.rsplit("$", 1)[1]
    port = support.free_port()
    e = edgemq()
    text = support.docs(
        support.broker_yaml("auth", port),
        support.user_yaml("alice", "auth", password_hash=support.ALICE_HASH, acl=[("#", "readwrite")]),
        support.user_yaml("eve", "auth", password_hash=bad, acl=[("#", "readwrite")]))
    e.write("auth.yaml", text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if bad in l)
    where = f"auth.yaml:{line}: MqttUser/eve: malformed password hash"
    # The folder has an error, so edgemq is not ready; it keeps running, names the
    # mistake, serves the valid objects and leaves eve out.
    e.start(wait_ready=False)
    support.poll(lambda: where in e.log_text() or not e.running(), 10,
                 message=f"{where!r} logged")
    assert e.running(), f"edgemq exited ({e.proc.returncode}) on a malformed hash:\n{e.log_tail()}"
    assert where in e.log_text(), e.log_tail()
    support.wait_port(port)
    assert e.http_get("/readyz")[0] == 503, "a folder with an error must not be reported ready"
    st = e.status()
    assert any(where in err for err in st["config"]["errors"]), st["config"]
    eve = [r for r in st["resources"] if (r["kind"], r["name"]) == ("MqttUser", "eve")]
    ready = [c for c in eve[0]["conditions"] if c["type"] == "Ready"] if eve else []
    assert ready and ready[0]["status"] == "False" and where in ready[0]["message"], eve

    assert support.connack_code(port, "alice", "secret1") == 0, "the valid user must log in"
    for pw in ("secret1", "", "x"):
        assert support.connack_code(port, "eve", pw) == NOT_AUTHORIZED_311, pw
        assert support.connack_code(port, "eve", pw, v5=True) == NOT_AUTHORIZED_5, pw


# --------------------------------------------------------------------------- secrets

def test_password_secret_ref_in_the_config_folder(edgemq):
    user = """apiVersion: edgemq.io/v1alpha1
kind: MqttUser
metadata: {name: zigbee2mqtt}
spec:
  brokerRef: auth
  passwordSecretRef: {name: z2m-mqtt, key: password}
  acl: [{topic: "auth/#", access: readwrite}]
"""
    secret = """apiVersion: v1
kind: Secret
metadata: {name: z2m-mqtt}
stringData: {password: "z2m pass"}
"""
    port = start_edgemq(edgemq, [user], secrets_docs=[secret])
    assert support.try_connect(port, username="zigbee2mqtt", password="z2m pass")[0]
    assert support.connack_code(port, "zigbee2mqtt", "wrong") == NOT_AUTHORIZED_311
    r = mosquitto_pub(port, "auth/x", "m", "zigbee2mqtt", "z2m pass")
    assert r.returncode == 0, r.stderr


def test_password_secret_ref_from_the_separate_secrets_folder(edgemq):
    user = """apiVersion: edgemq.io/v1alpha1
kind: MqttUser
metadata: {name: nodered}
spec:
  brokerRef: auth
  username: node-red
  passwordSecretRef: {name: nr, key: pw}
"""
    secret = """apiVersion: v1
kind: Secret
metadata: {name: nr}
data: {pw: "bm9kZS1yZWQtcHc="}
"""  # base64 of node-red-pw
    port = start_edgemq(edgemq, [user], secrets_dir_docs=[secret])
    assert support.try_connect(port, username="node-red", password="node-red-pw")[0]
    assert support.connack_code(port, "nodered", "node-red-pw") == NOT_AUTHORIZED_311


def test_a_refused_publish_and_delivery_are_logged_once_per_client_with_the_reason(edgemq, clients):
    """allowAnonymous with an anonymousAcl that only lets it read t/a: the client
    connects, its publishes, its subscription to u/# and deliveries outside t/a get
    nothing, and the log says why, once per client."""
    p = support.free_port()
    e = edgemq()
    e.write("broker.yaml", support.docs(
        support.broker_yaml("anon", p, "  allowAnonymous: true\n"
                            '  anonymousAcl: [{topic: "t/a", access: read}]\n'),
        support.user_yaml("alice", "anon", support.ALICE_HASH, acl=[("t/#", "readwrite")])))
    e.start()
    support.wait_port(p)
    anon = clients(p, client_id="anon-1")
    assert anon.subscribe_wait("t/#", 1) == [1], "t/a may be read"
    for _ in range(2):
        assert anon.subscribe_wait("u/#", 1) == [0x80], "nothing under u/ may be read"
    for i in range(3):
        anon.publish_wait("t/x", f"{i}".encode(), qos=1)
    alice = clients(p, client_id="alice-1", username="alice", password="secret1")
    for i in range(2):
        alice.publish_wait("t/y", f"{i}".encode(), qos=1)
    anon.expect_none(0.5)

    def logged():
        text = e.log_text()
        return "publish refused by the ACL" in text and "message not delivered" in text and text
    text = support.poll(logged, timeout=10, message="the refusals logged")
    pubs = [l for l in text.splitlines() if "publish refused by the ACL" in l]
    assert len(pubs) == 1 and "client_id=anon-1" in pubs[0], pubs
    assert "anonymous client: no anonymousAcl rule" in pubs[0], pubs
    reads = [l for l in text.splitlines() if "message not delivered" in l]
    assert len(reads) == 1 and "client_id=anon-1" in reads[0], reads
    assert "anonymous client: no anonymousAcl rule" in reads[0] and "read" in reads[0], reads
    subs = [l for l in text.splitlines() if "subscription refused by the ACL" in l]
    assert len(subs) == 1 and "client_id=anon-1" in subs[0] and 'filter="u/#"' in subs[0], subs
    assert e.metrics()["edgemq_acl_denials_total"] >= 7  # every refusal is still counted
