"""`edgemq validate DIR`: a good folder passes; every mistake in a bad folder is
reported as `file:line: Kind/name: message` and the command exits non-zero.

The fixtures mark each seeded mistake with a trailing `# expect-error: Kind/name`
comment (`yaml` or `-` for malformed YAML); the reported line must fall inside that
object's YAML document (for malformed YAML: within one line of the marked line)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import support

FIX = support.FIXTURES
ERROR_LINE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:\d+:)?\s*(?P<rest>.*)$")


def validate(*args):
    return support.run([support.edgemq_bin(), "validate", *args], timeout=60)


def reported(result) -> list:
    """[(file basename, line, rest of the message)] from validate's output."""
    out = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        m = ERROR_LINE.match(line.strip())
        if m:
            out.append((Path(m["file"]).name, int(m["line"]), m["rest"]))
    return out


def expected(folder: Path) -> list:
    """[(file name, marked line, object 'Kind/name', (doc first line, doc last line))]"""
    exp = []
    for f in sorted(folder.glob("*.yaml")):
        lines = f.read_text().splitlines()
        starts = [0] + [i + 1 for i, l in enumerate(lines) if l.strip() == "---"]
        for i, l in enumerate(lines):
            m = re.search(r"#\s*expect-error:\s*(\S+)", l)
            if not m:
                continue
            n = i + 1
            first = max(s for s in starts if s <= i) + 1
            nxt = [s for s in starts if s > i]
            last = nxt[0] - 1 if nxt else len(lines)
            exp.append((f.name, n, m.group(1), (first, last)))
    return exp


def show(result) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


# --------------------------------------------------------------------------- good folders

def test_the_standalone_example_is_valid():
    folder = support.REPO / "examples" / "standalone"
    if not any(folder.glob("*.y*ml")):
        pytest.fail(f"{folder} holds no YAML: the standalone example is missing", pytrace=False)
    r = validate(folder)
    assert r.returncode == 0, show(r)


def test_the_bridge_examples_are_valid_with_their_secrets_folder():
    folder = support.REPO / "examples" / "bridges"
    r = validate(folder, "--secrets", support.REPO / "examples" / "bridges-secrets")
    assert r.returncode == 0, show(r)


def test_the_fleet_example_is_valid_with_its_secrets_folder():
    folder = support.REPO / "examples" / "fleet"
    r = validate(folder, "--secrets", support.REPO / "examples" / "fleet-secrets")
    assert r.returncode == 0, show(r)


def test_a_complete_valid_folder_passes_silently_of_errors():
    r = validate(FIX / "good")
    assert r.returncode == 0, show(r)
    assert not reported(r), show(r)


def test_a_secret_from_the_separate_secrets_folder_satisfies_a_reference(tmp_path):
    cfg = tmp_path / "cfg"
    sec = tmp_path / "secrets"
    cfg.mkdir()
    sec.mkdir()
    shutil.copy(FIX / "good" / "home.yaml", cfg / "home.yaml")
    users = (FIX / "good" / "users.yaml").read_text()
    user_docs, secret_doc = users.rsplit("---\n", 1)
    (cfg / "users.yaml").write_text(user_docs)
    (sec / "z2m.yaml").write_text(secret_doc)

    r = validate(cfg)
    assert r.returncode != 0, "a dangling passwordSecretRef must be an error\n" + show(r)
    assert any(f == "users.yaml" and "MqttUser/zigbee2mqtt" in rest for f, _, rest in reported(r)), show(r)

    r = validate(cfg, "--secrets", sec)
    assert r.returncode == 0, show(r)


# --------------------------------------------------------------------------- bad folders

def check_every_mistake_reported(folder: Path):
    r = validate(folder)
    assert r.returncode != 0, "validate must exit non-zero\n" + show(r)
    got = reported(r)
    missing = []
    for fname, line, obj, (first, last) in expected(folder):
        if obj in ("yaml", "-"):  # malformed YAML: no object to name
            ok = any(f == fname and abs(l - line) <= 1 for f, l, _ in got)
        else:
            ok = any(f == fname and first <= l <= last and obj in rest for f, l, rest in got)
        if not ok:
            missing.append(f"{fname}:{line}: {obj} (object spans lines {first}-{last})")
    assert not missing, ("not reported (as file:line: Kind/name: message):\n  "
                         + "\n  ".join(missing) + "\n" + show(r))
    return r, got


def test_every_seeded_mistake_is_reported_with_file_and_line():
    r, got = check_every_mistake_reported(FIX / "bad")
    # every file with a mistake is named
    assert {f for f, _, _ in got} >= {"brokers.yaml", "users.yaml", "more.yaml"}, show(r)


def test_two_mistakes_in_one_file_are_both_reported():
    r = validate(FIX / "bad")
    users = [(l, rest) for f, l, rest in reported(r) if f == "users.yaml"]
    names = {o for o in ("MqttUser/bob", "MqttUser/carol", "MqttUser/dave", "MqttUser/erin")
             if any(o in rest for _, rest in users)}
    assert len(names) == 4, show(r)


def test_the_other_engineers_bad_fixture_is_fully_reported():
    folder = support.REPO / "controller" / "tests" / "fixtures" / "bad"
    assert folder.is_dir(), folder
    r = validate(folder)
    assert r.returncode != 0, show(r)
    files = {p.name for p in folder.glob("*.y*ml")}
    named = {f for f, _, _ in reported(r)}
    assert named, "no file:line errors printed\n" + show(r)
    assert named <= files, show(r)
    if list(expected(folder)):
        check_every_mistake_reported(folder)


def test_malformed_yaml_is_reported_with_its_line_and_does_not_hide_other_files():
    r, got = check_every_mistake_reported(FIX / "malformed")


def test_an_empty_folder_is_not_an_error_or_says_so_clearly(tmp_path):
    r = validate(tmp_path)
    # either valid (nothing to run) or a clear message; never a crash
    assert r.returncode in (0, 1), show(r)
    assert "panicked" not in r.stderr, show(r)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    r = validate(tmp_path / "nope")
    assert r.returncode != 0
    assert "nope" in r.stdout + r.stderr, show(r)
    assert "panicked" not in r.stderr, show(r)


def test_run_refuses_to_start_on_a_bad_folder_and_names_the_mistake(edgemq):
    e = edgemq()
    for f in (FIX / "malformed").glob("*.yaml"):
        e.write(f.name, f.read_text())
    e.start(wait_ready=False)
    # It stays up, not ready, and names each mistake by file:line in its log and /status.
    mistakes = ["broken.yaml:5: invalid YAML", "fine.yaml:6: MqttUser/orphan: Broker `gone` not found"]
    support.poll(lambda: all(m in e.log_text() for m in mistakes) or not e.running(), 10, 0.1,
                 "the mistakes logged")
    assert e.running(), f"edgemq exited ({e.proc.returncode}) on a bad folder:\n{e.log_tail()}"
    assert all(m in e.log_text() for m in mistakes), e.log_tail()
    assert e.http_get("/readyz")[0] == 503, "a folder with errors must not be reported ready"
    errors = e.status()["config"]["errors"]
    assert all(any(m in err for err in errors) for m in mistakes), errors


# --------------------------------------------------------------------------- warnings

def test_anonymous_access_that_can_do_nothing_is_a_warning_not_an_error(tmp_path):
    (tmp_path / "broker.yaml").write_text(support.broker_yaml(
        "open", 1883, "  allowAnonymous: true\n"))
    r = validate(tmp_path)
    assert r.returncode == 0, show(r)
    warning = [l for l in r.stdout.splitlines() if l.startswith("warning: ")]
    assert len(warning) == 1, show(r)
    assert "broker.yaml:" in warning[0] and "Broker/open" in warning[0], show(r)
    assert "can neither publish nor receive anything" in warning[0], show(r)
    assert "valid (1 broker(s), 1 warning(s))" in r.stdout, show(r)
    # With a rule for anonymous clients the warning goes away.
    (tmp_path / "broker.yaml").write_text(support.broker_yaml(
        "open", 1883, "  allowAnonymous: true\n  anonymousAcl: [{topic: 'public/#'}]\n"))
    r = validate(tmp_path)
    assert r.returncode == 0 and "warning" not in r.stdout.replace("0 warning(s)", ""), show(r)


# --------------------------------------------------------------------------- credentials

PLAINTEXT_BRIDGE = """\
apiVersion: edgemq.io/v1alpha1
kind: Broker
metadata: {name: home}
spec:
  listeners: [{name: lan, port: 1883}]
---
apiVersion: v1
kind: Secret
metadata: {name: server-login}
stringData: {username: site-a, password: s3cret}
---
apiVersion: edgemq.io/v1alpha1
kind: Bridge
metadata: {name: to-server}
spec:
  brokerRef: home
  remote:
    address: %s
    usernameSecretRef: {name: server-login, key: username}
    passwordSecretRef: {name: server-login, key: password}
%s  topics:
    - {pattern: "devices/#", direction: out, qos: 1}
"""


def test_credentials_in_plain_text_to_a_remote_that_is_not_loopback_need_insecure(tmp_path):
    (tmp_path / "bridge.yaml").write_text(PLAINTEXT_BRIDGE % ("mqtt.example.net:1883", ""))
    r = validate(tmp_path)
    assert r.returncode != 0, show(r)
    errors = [(f, n, rest) for f, n, rest in reported(r) if "Bridge/to-server" in rest]
    assert [(f, n) for f, n, _ in errors] == [("bridge.yaml", 20)], show(r)
    rest = errors[0][2]
    assert "passwordSecretRef would go in plain text to mqtt.example.net:1883" in rest, rest
    assert "insecurePlaintextCredentials: true" in rest, rest

    # TLS, a loopback remote, or the insecure setting spelled out: valid.
    for address, extra in [("mqtt.example.net:8883", "    tls: {}\n"),
                           ("127.0.0.1:1883", ""), ("localhost:1883", ""),
                           ("mqtt.example.net:1883", "    insecurePlaintextCredentials: true\n")]:
        (tmp_path / "bridge.yaml").write_text(PLAINTEXT_BRIDGE % (address, extra))
        r = validate(tmp_path)
        assert r.returncode == 0, f"{address} {extra!r}\n" + show(r)
