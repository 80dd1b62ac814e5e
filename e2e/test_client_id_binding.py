"""Client ids bound to users with the Broker's `clientIdPattern` (issue 17, item 11).

Without it, as in Mosquitto, a client of another user that connects with a client id
in use takes the session over: the holder is disconnected and its persistent session is
gone. With `clientIdPattern: "%u-*"` such a CONNECT is refused with "client identifier
not valid" (3.1.1 return code 2, MQTT 5 0x85) and the holder's session is untouched.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

import support

BROKER = "ids"
USERS = {
    "alice": [("alice/#", "readwrite")],
    "bob": [("alice/#", "write")],
}


_HASHES: dict = {}


def config(port, tmp_path, pattern=None, anonymous=False):
    extra = []
    if pattern is not None:
        extra.append(f'  clientIdPattern: "{pattern}"')
    if anonymous:
        extra += ["  allowAnonymous: true", '  anonymousAcl: [{topic: "public/#", access: read}]']
    parts = [support.broker_yaml(BROKER, port, "\n".join(extra))]
    for name, acl in USERS.items():
        key = (str(tmp_path), name)  # the same hash on every rewrite: no password change
        if key not in _HASHES:
            _HASHES[key] = support.edgemq_hash(tmp_path, name, f"{name}-pw")
        parts.append(support.user_yaml(name, BROKER, password_hash=_HASHES[key], acl=acl))
    return support.docs(*parts)


def start(edgemq, tmp_path, **kw):
    port = support.free_port()
    e = edgemq()
    e.write("broker.yaml", config(port, tmp_path, **kw))
    e.start()
    support.wait_port(port)
    return e, port


def persistent_alice(port, clients, **kw):
    """alice on `alice-phone`, persistent session subscribed to alice/# at QoS 1."""
    a = clients(port, username="alice", password="alice-pw", client_id="alice-phone",
                clean=False, **kw)
    assert a.subscribe_wait("alice/#", qos=1) == [1]
    return a


def raw_connack(port, client_id, username=None, v5=False):
    """The whole CONNACK packet of a persistent session's CONNECT (the user's password
    is `<user>-pw`), and whether the broker closed the connection after it."""
    return support.raw_connack(port, client_id, username, f"{username}-pw" if username else None,
                               v5=v5, clean=False, close_timeout=3)


def test_by_default_another_user_takes_the_client_id_over_as_in_mosquitto(edgemq, tmp_path, clients):
    _, port = start(edgemq, tmp_path)
    alice = persistent_alice(port, clients)
    ack, _ = raw_connack(port, "alice-phone", username="bob")
    assert ack == (2, 0, b"\x00\x00"), "accepted, no session present (another user's session is not resumed)"
    support.poll(lambda: not alice.is_connected(), 5, message="alice is disconnected by the takeover")


@pytest.mark.parametrize("v5,expected", [
    (False, (2, 0, b"\x00\x02")),          # 3.1.1: return code 2, identifier rejected
    (True, (2, 0, b"\x00\x85\x00")),       # MQTT 5: 0x85 Client Identifier not valid
], ids=["v311", "v5"])
def test_a_client_id_of_another_user_is_refused_and_the_owner_keeps_its_session(
        edgemq, tmp_path, clients, v5, expected):
    e, port = start(edgemq, tmp_path, pattern="%u-*")
    alice = persistent_alice(port, clients)

    # while alice is connected
    assert raw_connack(port, "alice-phone", username="bob", v5=v5) == (expected, True)
    assert alice.is_connected(), "the refused CONNECT did not kick alice"

    # while alice is away, her session holds what is published for her
    alice.disconnect_wait()
    assert raw_connack(port, "alice-phone", username="bob", v5=v5) == (expected, True)
    bob = clients(port, username="bob", password="bob-pw", client_id="bob-1")
    bob.publish_wait("alice/mail", b"kept", qos=1)
    back = clients(port, username="alice", password="alice-pw", client_id="alice-phone", clean=False)
    assert back.session_present, "alice's persistent session survived bob's attempts"
    m = back.get(timeout=5)
    assert (m.topic, m.payload) == ("alice/mail", b"kept")
    assert "the client id belongs to another user (clientIdPattern)" in e.log_text()
    assert e.metrics()["edgemq_auth_failures_total"] >= 2


def test_each_user_has_its_own_client_ids_and_anonymous_clients_the_rest(edgemq, tmp_path, clients):
    _, port = start(edgemq, tmp_path, pattern="%u-*", anonymous=True)
    ok = lambda cid, user=None: raw_connack(port, cid, username=user)[0]  # noqa: E731
    assert ok("alice-", "alice") == (2, 0, b"\x00\x00")
    assert ok("alice-tablet", "alice") == (2, 0, b"\x00\x00")
    assert ok("alice", "alice") == (2, 0, b"\x00\x02"), "`%u-*` needs the dash"
    assert ok("bob-1", "alice") == (2, 0, b"\x00\x02")
    assert ok("sensor-1", "alice") == (2, 0, b"\x00\x02"), "a user keeps to its own ids"
    assert ok("alice-phone") == (2, 0, b"\x00\x02"), "an anonymous client may not use a user's id"
    assert ok("sensor-1") == (2, 0, b"\x00\x00"), "ids no user owns are for anonymous clients"


def test_an_empty_client_id_is_assigned_from_the_pattern(edgemq, tmp_path, clients):
    _, port = start(edgemq, tmp_path, pattern="%u-*")
    got = {}
    cl = support.make_client("", protocol=mqtt.MQTTv5, username="alice", password="alice-pw")
    cl.c.on_connect = lambda c, u, f, rc, props: got.update(rc=rc, props=props)
    cl.c.connect("127.0.0.1", port, clean_start=True)
    cl.c.loop_start()
    try:
        support.poll(lambda: "rc" in got, 5, message="CONNACK")
        assert not got["rc"].is_failure
        assigned = got["props"].AssignedClientIdentifier
        assert assigned.startswith("alice-") and len(assigned) == len("alice-") + 16, assigned
    finally:
        cl.c.disconnect()
        cl.c.loop_stop()


def test_turning_the_pattern_on_closes_connections_on_another_users_ids(edgemq, tmp_path, clients):
    e, port = start(edgemq, tmp_path)
    squatter = clients(port, username="bob", password="bob-pw", client_id="alice-phone")
    own = clients(port, username="bob", password="bob-pw", client_id="bob-pc")
    e.write("broker.yaml", config(port, tmp_path, pattern="%u-*"))
    support.poll(lambda: not squatter.is_connected(), 15, message="bob on alice-phone is closed")
    assert own.is_connected()


def test_a_malformed_pattern_is_refused_with_the_object_and_field(edgemq, tmp_path):
    e = edgemq()
    e.write("broker.yaml", config(support.free_port(), tmp_path, pattern="*-%u"))
    r = e.cli("validate", str(e.config_dir))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert ('broker.yaml:7: Broker/ids: clientIdPattern "*-%u" is not valid: '
            '`*` may only be the last character') in out, out


def test_render_for_mosquitto_binds_ids_with_use_username_as_clientid(edgemq, mosquitto, tmp_path, clients):
    """`%u` renders as Mosquitto's `use_username_as_clientid true`; in both brokers bob
    cannot end alice's session by sending her client id (Mosquitto gives bob his own
    name as id, edgemq refuses him)."""
    support.require("mosquitto")
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    mport = support.free_port()
    (src / "broker.yaml").write_text(config(mport, tmp_path, pattern="%u"))
    r = support.run([support.edgemq_bin(), "render", "--config", src, "--broker", BROKER,
                     "--format", "mosquitto", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    conf = (out / "mosquitto.conf").read_text()
    assert "\nuse_username_as_clientid true\n" in conf, conf
    lines = [l for l in conf.splitlines()
             if l.strip() and not l.startswith("#") and l.split()[0] not in ("listener", "persistence", "persistence_location", "max_connections")]
    m = mosquitto(lines, port=mport)

    e, eport = start(edgemq, tmp_path, pattern="%u")
    for port in (m.port, eport):
        alice = clients(port, username="alice", password="alice-pw", client_id="alice")
        try:
            support.connect(port, username="bob", password="bob-pw", client_id="alice").disconnect_wait()
        except support.ConnectRefused:
            pass
        alice.expect_none(timeout=0.5)
        assert alice.is_connected(), f"alice still connected on port {port}"

    # a pattern Mosquitto cannot express is reported
    (src / "broker.yaml").write_text(config(mport, tmp_path, pattern="%u-*"))
    r = support.run([support.edgemq_bin(), "render", "--config", src, "--broker", BROKER,
                     "--format", "mosquitto", "--out", out])
    assert r.returncode == 0
    assert 'warning: clientIdPattern "%u-*" cannot be expressed' in r.stderr, r.stderr
