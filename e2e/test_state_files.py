"""The state directory is its owner's only (issue 17, item 10): retained messages,
sessions, bridge queues and status.json hold message payloads and client ids, so every
folder is 0700 and every file 0600, whatever the umask, also in a state directory that
already existed with open modes."""

from __future__ import annotations

import os
import stat

import support
from support import broker_yaml, free_port, poll


def modes(root) -> dict:
    """{relative path: mode} of every folder and file under root, root included."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def test_every_state_folder_is_0700_and_every_file_0600_after_start_even_with_umask_0(edgemq):
    port = free_port()
    e = edgemq()
    # A state directory left open by an older version or created by hand.
    os.chmod(e.state_dir, 0o755)
    old = e.state_dir / "brokers"
    old.mkdir()
    os.chmod(old, 0o775)
    (e.state_dir / "status.json").write_text("{}")
    os.chmod(e.state_dir / "status.json", 0o644)
    (old / "notes.txt").write_text("left behind")
    os.chmod(old / "notes.txt", 0o666)

    e.write("home.yaml", broker_yaml("home", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                                                   "  persistence: {enabled: true}\n"))
    # A bridge to a remote that is not there: its queue is opened all the same.
    e.write("bridge.yaml", "apiVersion: edgemq.io/v1alpha1\nkind: Bridge\nmetadata: {name: up}\n"
                           "spec:\n  brokerRef: home\n"
                           f"  remote: {{address: '127.0.0.1:{free_port()}'}}\n"
                           "  topics: [{pattern: '#', direction: out, qos: 1}]\n")
    previous = os.umask(0)
    try:
        e.start()
    finally:
        os.umask(previous)
    support.pub(port, "kept/1", b"retained", qos=1, retain=True)

    def files():
        m = modes(e.state_dir)
        names = [p for p in m if os.path.isfile(os.path.join(e.state_dir, p))]
        redbs = [p for p in names if p.endswith(".redb")]
        return m if len(redbs) >= 2 and "status.json" in names else None

    m = poll(files, 15, message="retained store, bridge queue and status.json written")
    wrong = {p: oct(v) for p, v in m.items()
             if v != (0o700 if os.path.isdir(os.path.join(e.state_dir, p)) else 0o600)}
    assert not wrong, f"not private to the owner: {wrong}"
