"""A config path that changes atomically is followed: `--config` a symlink swapped to a
new folder (`ln -s new tmp && mv -T tmp current`, the layout of git-sync and most
deploy tools), a parent directory swapped, and git's own checkout. A user added in the
new revision logs in; nobody already connected is disconnected; a broken revision
keeps the last good one running and is reported with file:line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers_b import revision
from support import can_login, connect, free_port, require, run, timed_poll

USERS = ["u0", "u1", "u2"]




def write_tree(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def swap(link: Path, target: Path) -> None:
    """`ln -s target tmp && mv -T tmp link`: one rename, never a moment without a link."""
    tmp = link.parent / f".{link.name}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Layout:
    """Where --config points and how a new revision replaces the old one."""

    def __init__(self, kind: str, root: Path):
        self.kind, self.root, self.n = kind, root, 0
        if kind == "symlink":  # --config root/current -> releases/rN
            self.config = root / "current"
        elif kind == "parent":  # --config root/current/mqtt, current -> releases/rN
            self.config = root / "current" / "mqtt"
        else:  # --config a git working tree; a new revision is `git checkout`
            self.git = require("git")
            self.config = root / "work"
            self.config.mkdir(parents=True)
            self._git("init", "-q", "-b", "main")

    def _git(self, *args):
        r = run([self.git, "-C", self.config, "-c", "user.name=t", "-c", "user.email=t@t", *args])
        assert r.returncode == 0, f"git {args}: {r.stdout}{r.stderr}"

    def publish(self, files: dict) -> None:
        self.n += 1
        if self.kind == "git":
            # Each revision names its users file differently, so the checkout renames.
            branch = f"r{self.n}"
            self._git("checkout", "-q", "--orphan", branch)
            self._git("rm", "-rqf", "--ignore-unmatch", ".")
            for name, text in files.items():
                name = name.replace("users", f"users-{self.n}")
                (self.config / name).write_text(text)
            self._git("add", "-A")
            self._git("commit", "-qm", branch)
            return
        rel = self.root / "releases" / f"r{self.n}"
        if self.kind == "symlink":
            write_tree(rel, files)
        else:
            write_tree(rel / "mqtt", files)
        swap(self.root / "current", rel)

    def stage_git(self, files: dict) -> str:
        """Commit a revision on its own branch without checking it out."""
        self.publish(files)
        branch = f"r{self.n}"
        self._git("checkout", "-q", f"r{self.n - 1}")
        return branch


@pytest.mark.parametrize("kind", ["symlink", "parent", "git"])
def test_a_folder_replaced_atomically_is_applied_and_disconnects_nobody(edgemq, tmp_path, kind):
    port = free_port()
    lay = Layout(kind, tmp_path / "srv")
    lay.publish(revision(port, USERS))
    e = edgemq()
    e.config_dir = lay.config
    e.start()
    others = [connect(port, username=u, password=f"pw-{u}", client_id=f"{u}-c") for u in USERS]
    for u, c in zip(USERS, others):
        assert c.subscribe_wait(f"{u}/#", qos=1) == [1]
    assert not can_login(port, "newbie", "pw-newbie")

    if kind == "git":
        branch = lay.stage_git(revision(port, USERS + ["newbie"]))
        lay._git("checkout", "-q", branch)
    else:
        lay.publish(revision(port, USERS + ["newbie"]))
    took = timed_poll(lambda: can_login(port, "newbie", "pw-newbie"), 15,
                      message="the user of the new revision logs in", edgemq=e)
    print(f"{kind}: swap -> new user logs in: {took * 1000:.0f} ms")

    # A broken revision: the last good keeps running, the mistake is named with file:line.
    broken = revision(port, USERS)
    broken["users.yaml"] += "---\napiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: bad}\nspec:\n  brokerRef: nowhere\n"
    if kind == "git":
        lay._git("checkout", "-q", lay.stage_git(broken))
    else:
        lay.publish(broken)
    errors = e.wait_applied(lambda st: (not st["config"]["valid"]) and st["config"]["errors"],
                            message="the broken revision is reported")
    assert any("MqttUser/bad" in x and ".yaml:" in x and "nowhere" in x for x in errors), errors
    # Everything else of the revision applied: newbie (not in it) is gone, u0 stays.
    assert can_login(port, "u0", "pw-u0")
    for u, c in zip(USERS, others):
        c.publish_wait(f"{u}/x", b"1", qos=1)
        assert c.get(timeout=5).topic == f"{u}/x"
    assert [c for c in others if c.disconnected.is_set()] == [], "a swap disconnected a client"
    for c in others:
        c.disconnect_wait()
