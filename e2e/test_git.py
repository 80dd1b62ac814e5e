"""`edgemq run --git`: a repository followed with the real `git` command, commits signed
with `ssh-keygen` keys through `git commit -S` (gpg.format=ssh), served from a bare
repository over file:// and over `git daemon` on a loopback port.

Only fast-forwards whose every new commit is signed by an allowed signer apply; what
is refused is named in status (commit and why); the broker keeps its last good
revision, also across a restart without the remote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers_b import revision
from support import (_LIVE, broker_yaml, can_login, connect, free_port, metric, poll, require, run,
                     timed_poll, wait_port)




class Repo:
    """A bare repository (the remote) and a working clone people commit in."""

    def __init__(self, root: Path):
        self.git = require("git")
        self.keygen = require("ssh-keygen", "openssh-client")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.bare = root / "fleet.git"
        self.work = root / "work"
        self.keys = {}
        for who in ("alice", "mallory"):
            key = root / who
            r = run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", key])
            assert r.returncode == 0, r.stderr
            self.keys[who] = key
        self.allowed = root / "allowed_signers"
        pub = (root / "alice.pub").read_text().split()
        self.allowed.write_text(f'alice@example.com namespaces="git" {pub[0]} {pub[1]}\n')
        self.g("init", "-q", "--bare", "-b", "main", self.bare, cwd=root)
        self.g("init", "-q", "-b", "main", self.work, cwd=root)
        self.g("remote", "add", "origin", self.bare)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def g(self, *args, cwd=None) -> str:
        r = run([self.git, *args], cwd=cwd or self.work)
        assert r.returncode == 0, f"git {args}: {r.stdout}{r.stderr}"
        return r.stdout.strip()

    def commit(self, files: dict, folder: str = "pi-01", signer="alice", msg="update",
               push: bool = True) -> str:
        """Write files into folder, commit (signed by signer's key, or unsigned), push."""
        d = self.work / folder
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
        self.g("add", "-A")
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keys[signer]}"] if signer else []
        self.g("-c", "user.name=Ops", "-c", "user.email=ops@example.com", *sign,
               "commit", "-q", *(["-S"] if signer else []), "-m", msg)
        if push:
            self.push()
        return self.g("rev-parse", "HEAD")

    def push(self, force: bool = False):
        self.g("push", "-q", *(["--force"] if force else []), "origin", "HEAD:main")


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path / "repo")


def start(edgemq, repo: Repo, url=None, name="edgemq", wait_ready=True, urls=None,
          interval="1s", extra=()):
    e = edgemq(name=name)
    remotes = [a for u in (urls or [url or repo.url]) for a in ("--git", u)]
    e.command = lambda: [os.environ.get("EDGEMQ_BIN") or e_bin(), "run", *remotes,
                         "--git-path", "pi-01", "--git-interval", interval,
                         "--git-allowed-signers", str(repo.allowed), *extra,
                         "--state", str(e.state_dir), "--http", f"127.0.0.1:{e.http_port}"]
    return e.start(wait_ready=wait_ready)


def e_bin():
    from support import edgemq_bin
    return edgemq_bin()


def applied(e, commit: str) -> None:
    """Wait until commit is the applied one and runs (readyz says so)."""
    e.wait_applied(lambda st: (st["git"].get("applied") or {}).get("commit") == commit,
                   message=f"commit {commit[:12]} applied")
    e.wait_ready()


def cli_status(e, text: str) -> str:
    """`edgemq status` once it shows text (the status file is rewritten every 5 s)."""
    out = {}

    def shows():
        out["s"] = e.cli("status", "--state", str(e.state_dir)).stdout
        return text in out["s"]
    try:
        poll(shows, 15, 0.5)
    except AssertionError:
        raise AssertionError(f"edgemq status does not show {text!r}:\n{out.get('s')}") from None
    return out["s"]


def git_status(e) -> dict:
    return e.status()["git"]


def test_signed_commits_apply_within_the_poll_and_nobody_is_disconnected(edgemq, repo):
    port = free_port()
    first = repo.commit(revision(port, ["u0", "u1"]))
    e = start(edgemq, repo)
    applied(e, first)
    others = [connect(port, username=u, password=f"pw-{u}", client_id=f"{u}-c") for u in ("u0", "u1")]
    assert not can_login(port, "newbie", "pw-newbie")

    t0 = time.monotonic()
    second = repo.commit(revision(port, ["u0", "u1", "newbie"]), msg="add newbie")
    took = timed_poll(lambda: can_login(port, "newbie", "pw-newbie"), 10, since=t0,
                      message="the user added by a signed commit logs in", edgemq=e)
    print(f"git push -> user logs in: {took * 1000:.0f} ms (poll 1 s)")
    g = git_status(e)
    assert g["applied"]["commit"] == second and g["applied"]["signer"] == "alice@example.com"
    assert g["remoteHead"] == second and "lastFetchError" not in g and "refused" not in g
    m = e.metrics()
    commit_time = int(repo.g("log", "-1", "--format=%ct"))
    assert metric(m, "edgemq_git_applied_commit_timestamp") == commit_time
    assert [c for c in others if c.disconnected.is_set()] == []
    cli_status(e, f"applied:     {second} signed by alice@example.com")
    # The tree comes from a bare mirror and a symlink inside the private state directory.
    gitdir = e.state_dir / "git"
    assert oct(gitdir.stat().st_mode & 0o777) == "0o700"
    assert (gitdir / "mirror.git" / "HEAD").is_file() and not (gitdir / "mirror.git" / "index").exists()
    assert os.readlink(gitdir / "current") == f"trees/{second}"
    for c in others:
        c.disconnect_wait()


@pytest.mark.parametrize("bad", ["unsigned", "unknown_signer", "signed_on_top_of_unsigned"])
def test_a_commit_not_signed_by_an_allowed_signer_is_refused_and_named(edgemq, repo, bad):
    port = free_port()
    good = repo.commit(revision(port, ["u0"]))
    e = start(edgemq, repo)
    applied(e, good)
    signer = {"unsigned": None, "unknown_signer": "mallory", "signed_on_top_of_unsigned": None}[bad]
    culprit = repo.commit(revision(port, ["u0", "intruder"]), signer=signer, msg="sneak in")
    head = culprit
    if bad == "signed_on_top_of_unsigned":
        head = repo.commit(revision(port, ["u0", "intruder", "other"]), signer="alice", msg="on top")
    reason = {"unsigned": "unsigned", "unknown_signer": "unknownSigner",
              "signed_on_top_of_unsigned": "unsigned"}[bad]
    refused = e.wait_applied(lambda st: st["git"].get("refused"), message="the refusal is reported")
    assert refused["commit"] == culprit and refused["reason"] == reason, refused
    why = {"unsigned": "not signed", "unknown_signer": "not an allowed signer",
           "signed_on_top_of_unsigned": "not signed"}[bad]
    assert why in refused["message"] and culprit[:12] in refused["message"], refused
    g = git_status(e)
    assert g["applied"]["commit"] == good and g["remoteHead"] == head
    assert not can_login(port, "intruder", "pw-intruder")
    assert can_login(port, "u0", "pw-u0")
    label = {"unsigned": "unsigned", "unknown_signer": "unknown_signer",
             "signed_on_top_of_unsigned": "unsigned"}[bad]
    assert metric(e.metrics(), f'edgemq_git_refusals_total{{reason="{label}"}}') == 1
    cli_status(e, f"commit {culprit[:12]} refused")


def test_an_unsigned_commit_stops_the_update_at_the_last_good_commit(edgemq, repo):
    port = free_port()
    first = repo.commit(revision(port, ["u0"]))
    e = start(edgemq, repo)
    applied(e, first)
    # Pushed together: a good commit, then an unsigned one, then a good one.
    ok = repo.commit(revision(port, ["u0", "u1"]), push=False)
    bad = repo.commit(revision(port, ["u0", "u1", "intruder"]), signer=None, push=False)
    repo.commit(revision(port, ["u0", "u1", "intruder", "u2"]), push=False)
    repo.push()
    e.wait_applied(lambda st: st["git"].get("refused", {}).get("commit") == bad)
    assert git_status(e)["applied"]["commit"] == ok
    timed_poll(lambda: can_login(port, "u1", "pw-u1"), 10, message="the good commit applied", edgemq=e)
    assert not can_login(port, "intruder", "pw-intruder") and not can_login(port, "u2", "pw-u2")


def test_a_force_push_to_an_older_commit_is_refused(edgemq, repo):
    port = free_port()
    old = repo.commit(revision(port, ["u0"]))
    new = repo.commit(revision(port, ["u0", "u1"]))
    e = start(edgemq, repo)
    applied(e, new)
    repo.g("reset", "-q", "--hard", old)
    repo.push(force=True)
    refused = e.wait_applied(lambda st: st["git"].get("refused"), message="the rewind is reported")
    assert refused["commit"] == old and refused["reason"] == "notFastForward", refused
    assert "does not descend" in refused["message"]
    assert git_status(e)["applied"]["commit"] == new
    assert can_login(port, "u1", "pw-u1")
    assert metric(e.metrics(), 'edgemq_git_refusals_total{reason="not_fast_forward"}') == 1


def test_an_invalid_revision_is_reported_with_file_and_line_and_the_last_good_runs(edgemq, repo):
    port = free_port()
    first = repo.commit(revision(port, ["u0"]))
    e = start(edgemq, repo)
    applied(e, first)
    files = revision(port, ["u0"])
    files["users.yaml"] += "---\napiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: bad}\nspec:\n  brokerRef: nowhere\n"
    broken = repo.commit(files)
    errors = e.wait_applied(lambda st: st["config"]["errors"], message="the mistake is reported")
    assert any("pi-01/users.yaml:20: MqttUser/bad" in x for x in errors), errors
    # Applied as a folder edit is: the valid objects of the revision run, the broken
    # one stays out, and status names the revision.
    assert git_status(e)["applied"]["commit"] == broken
    assert can_login(port, "u0", "pw-u0")


def test_the_remote_gone_the_broker_keeps_serving_and_restarts_offline(edgemq, repo):
    port = free_port()
    good = repo.commit(revision(port, ["u0"]))
    e = start(edgemq, repo)
    applied(e, good)
    shutil.rmtree(repo.bare)
    e.proc.send_signal(signal.SIGHUP)  # fetch now
    err = e.wait_applied(lambda st: st["git"].get("lastFetchError"), message="fetch failure reported")
    assert "fleet.git" in err, err
    assert metric(e.metrics(), "edgemq_git_fetch_failures_total") >= 1
    assert can_login(port, "u0", "pw-u0")
    e.stop()
    e.start()  # ready means: the applied revision runs, without the remote
    assert can_login(port, "u0", "pw-u0")
    g = git_status(e)
    assert g["applied"]["commit"] == good


def test_git_daemon_on_loopback(edgemq, repo, tmp_path):
    port, daemon_port = free_port(), free_port()
    good = repo.commit(revision(port, ["u0"]))
    d = subprocess.Popen([repo.git, "daemon", f"--base-path={repo.root}", "--export-all",
                          "--listen=127.0.0.1", f"--port={daemon_port}", "--reuseaddr", str(repo.root)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _LIVE.append(d)
    try:
        wait_port(daemon_port)
        e = start(edgemq, repo, url=f"git://127.0.0.1:{daemon_port}/fleet.git")
        applied(e, good)
        assert can_login(port, "u0", "pw-u0")
    finally:
        d.terminate()
        d.wait(timeout=10)


def http_call(e, method: str, path: str):
    """(status, headers, body) of a request to the operations endpoint."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(e.http + path, method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as x:
        return x.code, dict(x.headers), x.read().decode()


def test_post_sync_fetches_at_once(edgemq, repo):
    port = free_port()
    first = repo.commit(revision(port, ["u0"]))
    e = start(edgemq, repo, interval="1h")  # only the fetch at start, then /sync
    applied(e, first)
    second = repo.commit(revision(port, ["u0", "u1"]), msg="add u1")
    time.sleep(1.5)
    assert git_status(e)["applied"]["commit"] == first  # no poll within the hour
    fetches = metric(e.metrics(), "edgemq_git_fetches_total")
    code, headers, body = http_call(e, "POST", "/sync")
    assert code == 202, body
    assert headers.get("content-type") == "application/json", headers
    assert json.loads(body)["sync"] == "requested", body
    took = timed_poll(lambda: can_login(port, "u1", "pw-u1"), 10,
                      message="the commit fetched on POST /sync applies", edgemq=e)
    print(f"POST /sync -> user logs in: {took * 1000:.0f} ms")
    assert git_status(e)["applied"]["commit"] == second
    assert metric(e.metrics(), "edgemq_git_fetches_total") == fetches + 1
    code, headers, body = http_call(e, "GET", "/sync")
    assert code == 405 and headers.get("allow") == "POST", (code, headers, body)


def test_post_sync_without_git_is_not_found(edgemq):
    port = free_port()
    e = edgemq()
    e.write("broker.yaml", broker_yaml("home", port))
    e.start()
    code, _, body = http_call(e, "POST", "/sync")
    assert code == 404, body
    assert "follows no git repository" in json.loads(body)["error"], body


def test_a_dead_remote_falls_back_to_the_next_and_status_names_the_one_that_served(
        edgemq, repo, tmp_path):
    port = free_port()
    good = repo.commit(revision(port, ["u0"]))
    dead = f"file://{tmp_path}/gone/fleet.git"
    e = start(edgemq, repo, urls=[dead, repo.url])
    applied(e, good)
    assert can_login(port, "u0", "pw-u0")
    g = git_status(e)
    assert g["fetchedFrom"] == repo.url and g["remotes"] == [dead, repo.url], g
    assert g["url"] == dead and "lastFetchError" not in g, g
    assert len(g["remoteErrors"]) == 1 and g["remoteErrors"][0].startswith(f"{dead}: git fetch:"), g
    m = e.metrics()
    assert metric(m, "edgemq_git_remote_failures_total") >= 1
    assert metric(m, "edgemq_git_fetch_failures_total") == 0
    out = cli_status(e, f"from {repo.url}")
    assert f"remote down: {dead}: git fetch:" in out, out
    # Both down: the fetch fails, both errors named, the applied revision keeps running.
    shutil.rmtree(repo.bare)
    err = e.wait_applied(lambda st: st["git"].get("lastFetchError"), message="fetch failure reported")
    assert f"{dead}: git fetch:" in err and f"{repo.url}: git fetch:" in err, err
    assert can_login(port, "u0", "pw-u0")


def test_https_style_basic_credentials_come_from_a_file_never_argv(edgemq, repo, tmp_path):
    from git_http import GitHttp
    port = free_port()
    password = "tok-" + os.urandom(8).hex()
    good = repo.commit(revision(port, ["u0"]))
    server = GitHttp(repo.git, repo.root, "fleet-bot", password)
    try:
        cred = tmp_path / "git-credentials"
        cred.write_text(f"fleet-bot:{password}\n")
        cred.chmod(0o600)
        # Without credentials: refused by the server, reported, nothing applied.
        e = start(edgemq, repo, url=server.url("fleet.git"), name="nocred", wait_ready=False)
        err = e.wait_applied(lambda st: st["git"].get("lastFetchError"), message="401 reported")
        assert "could not read Username" in err or "Authentication failed" in err, err
        assert "applied" not in git_status(e)
        e.stop()
        e = start(edgemq, repo, url=server.url("fleet.git"), extra=["--git-credentials", str(cred)])
        applied(e, good)
        assert can_login(port, "u0", "pw-u0")
        assert server.requests and server.requests[-1][2] == server.expected, server.requests[-3:]
        assert server.leaks == [], server.leaks  # the password was never in any argv
        assert password not in json.dumps(e.status()) and password not in e.log_text()
    finally:
        server.close()


def test_credentials_are_checked_at_start(edgemq_bin, repo, tmp_path):
    cred = tmp_path / "cred"
    cred.write_text("bot:pw\n")
    base = [edgemq_bin, "run", "--git-allowed-signers", str(repo.allowed),
            "--state", str(tmp_path / "st"), "--http", "127.0.0.1:0"]
    r = run(base + ["--git", "http://git.example.com/fleet.git", "--git-credentials", str(cred)])
    assert r.returncode != 0
    assert ("--git http://git.example.com/fleet.git: --git-credentials would cross the network "
            "in clear over http://; use https://") in r.stderr, r.stderr
    r = run(base + ["--git", repo.url, "--git-ssh-key", str(tmp_path / "nokey")])
    assert r.returncode != 0
    assert f"--git-ssh-key {tmp_path / 'nokey'}: No such file" in r.stderr, r.stderr
    cred.write_text("just-a-token\n")
    r = run(base + ["--git", repo.url, "--git-credentials", str(cred)])
    assert r.returncode != 0
    assert f"--git-credentials {cred}: expected one line username:password" in r.stderr, r.stderr
