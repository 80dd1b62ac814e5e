"""One ACL rule set, run in edgemq and (rendered with `edgemq render`) in a real
Mosquitto 2.0: every (client x topic x publish/subscribe) cell must get the same
outcome from both.

An outcome is whether a message crosses the broker:
  read  cell (client C, topic T): the privileged observer publishes to T; does C,
        subscribed to T, receive it? Checked for retained and live messages.
  write cell (client C, topic T): C publishes to T; does the observer (readwrite on
        '#' and '$ctrl/#') receive it?
A client the broker refuses gets "refused" in every cell.

SUBSCRIBE is where the two differ on purpose: Mosquitto 2.0's acl_file grants every
filter (its default ACL check returns success for subscriptions, "FIXME - implement ACL
subscription strings"); edgemq refuses a filter none of whose topics the client may
read. The SUBACK cells check exactly that: Mosquitto grants all, and edgemq refuses
(0x80) exactly the filters for which Mosquitto delivers none of the topics here.

%u and %c are used only as whole topic levels: Mosquitto 2.0.11 differs from newer
versions inside a level.
"""

from __future__ import annotations

import queue
import re
from pathlib import Path

import pytest

import support

BROKER = "parity"

TOPICS = [
    "alice/data", "alice/inbox",
    "shared/news", "shared/private",
    "cmd/light", "cmd/alice",
    "devices/alice/temp", "devices/bob/temp", "devices/alice/secret", "devices/dave/temp",
    "clients/alice-phone/status", "clients/bob-pc/status", "clients/anon-1/status",
    # so that every filter of WILDCARD_FILTERS a client may read has a topic here
    "clients/dave-1/status", "clients/carol-tab/status", "cmd/dave", "cmd/bob",
    "public/info", "anonw/log",
    "$ctrl/reboot",
    "other/x",
]

USERS = {
    # name: (password, client id, acl rules)
    "alice": ("alice-pw", "alice-phone", [
        ("alice/#", "readwrite"), ("shared/private", "deny"), ("shared/#", "read"),
        ("cmd/#", "write")]),
    "bob": ("bob-pw", "bob-pc", [
        ("shared/#", "readwrite"), ("alice/inbox", "write"), ("devices/alice/#", "read")]),
    "carol": ("carol-pw", "carol-tab", [("#", "read")]),
    "dave": ("dave-pw", "dave-1", []),               # patterns only
    "observer": ("observer-pw", "observer", [("#", "readwrite"), ("$ctrl/#", "readwrite")]),
}

PATTERNS = [
    ("devices/%u/secret", "deny"),
    ("devices/%u/#", "readwrite"),
    ("clients/%c/#", "readwrite"),
    ("cmd/%u", "read"),
]

ANON_ACL = [("public/#", "read"), ("anonw/#", "write"), ("clients/+/status", "deny")]

# Filters whose SUBACK is compared (besides every topic above, subscribed one by one).
WILDCARD_FILTERS = ["#", "+/+", "devices/+/temp", "cmd/+", "$ctrl/#", "alice/#",
                    "clients/+/status", "shared/+"]

# (label, username or None, client id)
CLIENTS = [
    ("alice", "alice", "alice-phone"),
    ("bob", "bob", "bob-pc"),
    ("carol", "carol", "carol-tab"),
    ("dave", "dave", "dave-1"),
    ("anon", None, "anon-1"),
    # a client id with '+' while patterns exist: refused
    ("alice+id", "alice", "alice+x"),
]


def _rules(rules, indent="    "):
    out = []
    for topic, access in rules:
        out.append(f'{indent}- {{topic: "{topic}", access: {access}}}')
    return "\n".join(out)


def config_yaml(port: int, hashes: dict, anonymous: bool, acl_enabled: bool) -> str:
    broker = support.broker_yaml(BROKER, port, "\n".join([
        f"  allowAnonymous: {'true' if anonymous else 'false'}",
        f"  aclEnabled: {'true' if acl_enabled else 'false'}",
        "  anonymousAcl:", _rules(ANON_ACL),
        "  aclPatterns:", _rules(PATTERNS),
    ]))
    parts = [broker]
    for name, (_, _, acl) in USERS.items():
        parts.append(support.user_yaml(name, BROKER, password_hash=hashes[name], acl=acl or None))
    return support.docs(*parts)


# --------------------------------------------------------------------------- measuring

class Outcomes(dict):
    """{(client label, topic, 'read-retained'|'read'|'write'): True|False|'refused'}"""


def _connect(port, username, client_id):
    pw = USERS[username][0] if username else None
    try:
        return support.connect(port, username=username, password=pw, client_id=client_id)
    except support.ConnectRefused:
        return None


def _payloads(cl) -> "set[bytes] | None":
    return None if cl is None else {m.payload for m in cl.drain()}


def measure(port: int) -> Outcomes:
    """Fill an Outcomes matrix for the broker on `port`.

    A client never publishes while it may be receiving (separate connections for the
    read and write sides, a publish-only observer and a receive-only observer): it keeps
    the measurement free of client-side timing effects.
    """
    out = Outcomes()
    subacks = out.subacks = {}
    obs_sub = _connect(port, "observer", "observer-sub")
    obs_pub = _connect(port, "observer", "observer-pub")
    assert obs_sub is not None and obs_pub is not None, "the observer must be able to log in"
    readers: dict = {}
    try:
        obs_sub.subscribe_wait([("#", 1), ("$ctrl/#", 1)])

        # retained messages first, so later subscribers get them
        for t in TOPICS:
            obs_pub.publish_wait(t, f"ret|{t}".encode(), qos=1, retain=True)
        support.poll(lambda: obs_sub.messages.qsize() >= len(TOPICS), 10,
                     message="observer receives its own retained messages")
        obs_sub.drain()

        # read side: each client subscribes to every topic
        for label, user, cid in CLIENTS:
            readers[label] = _connect(port, user, cid)
        for label, cl in readers.items():
            if cl is not None:
                codes = cl.subscribe_wait([(t, 1) for t in TOPICS])
                for t, code in zip(TOPICS, codes):
                    subacks[(label, t)] = code
        support.settle(readers.values())
        for label, cl in readers.items():
            got = _payloads(cl)
            for t in TOPICS:
                out[(label, t, "read-retained")] = ("refused" if got is None
                                                    else f"ret|{t}".encode() in got)

        for t in TOPICS:
            obs_pub.publish_wait(t, f"live|{t}".encode(), qos=1)
        support.poll(lambda: obs_sub.messages.qsize() >= len(TOPICS), 10,
                     message="observer receives its own live messages")
        support.settle(readers.values())
        for label, cl in readers.items():
            got = _payloads(cl)
            for t in TOPICS:
                out[(label, t, "read")] = ("refused" if got is None
                                           else f"live|{t}".encode() in got)
        for cl in readers.values():
            if cl is not None:
                cl.disconnect_wait()
        readers.clear()
        obs_sub.drain()

        # write side: fresh connections without subscriptions
        for label, user, cid in CLIENTS:
            cl = _connect(port, user, cid)
            if cl is None:
                for t in TOPICS:
                    out[(label, t, "write")] = "refused"
                continue
            for t in TOPICS:
                try:
                    cl.publish_wait(t, f"w|{label}|{t}".encode(), qos=1, timeout=5)
                except AssertionError:
                    pass  # not acknowledged: counts as not delivered
            cl.disconnect_wait()
        support.settle([obs_sub], quiet=1.0)
        seen = _payloads(obs_sub)
        for label, _, _ in CLIENTS:
            for t in TOPICS:
                out.setdefault((label, t, "write"), f"w|{label}|{t}".encode() in seen)

        for t in TOPICS:  # clear the retained messages
            obs_pub.publish_wait(t, b"", qos=1, retain=True)

        # SUBACK of wildcard filters, on fresh connections that read nothing
        for label, user, cid in CLIENTS:
            cl = _connect(port, user, cid)
            if cl is None:
                continue
            codes = cl.subscribe_wait([(f, 1) for f in WILDCARD_FILTERS])
            for f, code in zip(WILDCARD_FILTERS, codes):
                subacks[(label, f)] = code
            cl.disconnect_wait()
    finally:
        for cl in readers.values():
            if cl is not None:
                cl.disconnect_wait()
        obs_sub.disconnect_wait()
        obs_pub.disconnect_wait()
    return out


def format_matrix(a: Outcomes, b: Outcomes, names=("edgemq", "mosquitto")) -> str:
    def sym(v):
        return {True: "Y", False: ".", "refused": "R"}.get(v, "?")
    kinds = ["read-retained", "read", "write"]
    labels = [c[0] for c in CLIENTS]
    head = f"{'topic':28} {'kind':14} " + " ".join(f"{l:>9}" for l in labels)
    lines = [f"cells: {names[0]}/{names[1]}  (Y delivered, . not, R refused; * = differs)", head]
    for t in TOPICS:
        for k in kinds:
            cells = []
            for l in labels:
                va, vb = a.get((l, t, k)), b.get((l, t, k))
                mark = "*" if va != vb else " "
                cells.append(f"{mark}{sym(va)}/{sym(vb):>1}".rjust(9))
            lines.append(f"{t:28} {k:14} " + " ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the test

def render_for_mosquitto(config_dir: Path, out_dir: Path, port: int) -> list:
    """`edgemq render` the broker and return the conf lines to run it on `port`
    (our own listener, `user root`, absolute file paths)."""
    r = support.run([support.edgemq_bin(), "render", "--config", config_dir, "--broker", BROKER,
                     "--format", "mosquitto", "--out", out_dir])
    assert r.returncode == 0, f"edgemq render failed:\n{r.stdout}{r.stderr}"
    conf = (out_dir / "mosquitto.conf").read_text()
    lines = []
    for line in conf.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key = s.split()[0]
        if key in ("listener", "port", "bind_address", "user", "log_dest", "pid_file",
                   "persistence", "persistence_location", "persistence_file",
                   "certfile", "keyfile", "cafile", "protocol"):
            continue  # our own listener and process settings below
        m = re.match(r"^(password_file|acl_file)\s+(.+)$", s)
        if m and not Path(m.group(2)).is_absolute():
            s = f"{m.group(1)} {out_dir / m.group(2)}"
        lines.append(s)
    return lines  # the Mosquitto helper puts `listener PORT 127.0.0.1` first


@pytest.mark.parametrize("anonymous,acl_enabled", [
    (True, True), (False, True), (True, False),
], ids=["anonymous-on", "anonymous-off", "acl-disabled"])
def test_edgemq_and_mosquitto_agree_on_every_acl_cell(edgemq, mosquitto, tmp_path, anonymous, acl_enabled):
    support.require("mosquitto")
    hashes = {name: support.mosquitto_hash(tmp_path, name, pw) for name, (pw, _, _) in USERS.items()}

    # the same YAML, rendered for Mosquitto on its own port
    mport = support.free_port()
    render_src = tmp_path / "render-src"
    render_src.mkdir()
    (render_src / "parity.yaml").write_text(config_yaml(mport, hashes, anonymous, acl_enabled))
    render_out = tmp_path / "render-out"
    render_out.mkdir()
    mosq = mosquitto(render_for_mosquitto(render_src, render_out, mport), port=mport)

    eport = support.free_port()
    e = edgemq()
    e.write("parity.yaml", config_yaml(eport, hashes, anonymous, acl_enabled))
    e.start()
    support.wait_port(eport)

    got_edgemq = measure(eport)
    got_mosquitto = measure(mosq.port)

    # sanity: the oracle itself shows the rules doing something
    if acl_enabled:
        assert got_mosquitto[("alice", "alice/data", "write")] is True
        assert got_mosquitto[("dave", "alice/data", "write")] is False

    diff = sorted(k for k in got_mosquitto if got_edgemq.get(k) != got_mosquitto[k])
    assert not diff, (f"{len(diff)} cells differ, e.g. {diff[:5]}\n"
                      + format_matrix(got_edgemq, got_mosquitto))

    # SUBACK: Mosquitto grants everything; edgemq refuses what Mosquitto never delivers.
    assert set(got_mosquitto.subacks.values()) == {1}, got_mosquitto.subacks
    assert got_edgemq.subacks.keys() == got_mosquitto.subacks.keys()
    from support import topic_matches_filter as matches
    wrong = {}
    for (label, f), code in got_edgemq.subacks.items():
        readable = any(got_mosquitto[(label, t, kind)] is True
                       for t in TOPICS if matches(f, t) for kind in ("read", "read-retained"))
        expected = 1 if readable else 0x80
        if code != expected:
            wrong[(label, f)] = (code, expected)
    assert not wrong, f"edgemq SUBACK (got, expected) where it should follow what Mosquitto delivers: {wrong}"
    if acl_enabled:
        assert got_edgemq.subacks[("dave", "alice/data")] == 0x80  # the oracle refuses something

