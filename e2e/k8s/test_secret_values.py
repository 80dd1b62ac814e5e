"""The controller holds only the Secrets some edgemq object names (issue 17, item 5).

It watches Secrets by metadata (names and versions) and reads by name only the values
of Secrets an edgemq object names. The tests look into the controller process's memory
for values of Secrets nobody names, pick up a Secret that is named before it exists,
and apply a change of a named Secret live.
"""

from __future__ import annotations

import re
import secrets as rnd
import subprocess

import edgemq_k8s as k
from edgemq_k8s import support


def _memory_holds(pid: int, needles: list) -> set:
    """The needles (bytes) found in the readable, writable memory of process `pid`."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            start, end, perms = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
            if not perms.startswith("rw"):
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for n in needles:
                if n in chunk:
                    found.add(n)
    return found


def _create_secret(cluster, namespace: str, name: str, **values) -> None:
    # `kubectl create` (not apply): no last-applied annotation copying the values.
    args = [f"--from-literal={key}={v}" for key, v in values.items()]
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace, *args)


def _can_login(port: int, user: str, password: str):
    def check():
        try:
            c = support.connect(port, username=user, password=password, timeout=3)
        except support.ConnectRefused:
            return False
        c.disconnect_wait()
        return True
    return check


def test_the_controller_never_holds_values_of_secrets_no_edgemq_object_names(
        cluster, controller, namespace):
    unrelated = [f"unrelated-{rnd.token_hex(16)}" for _ in range(20)]
    for i, value in enumerate(unrelated):
        _create_secret(cluster, namespace, f"other-{i}", token=value)
    named = f"named-{rnd.token_hex(16)}"
    _create_secret(cluster, namespace, "app-pw", password=named)
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}], pod={"nodeSelector": {"edgemq.io/none": "x"}}),
            k.user("app", "home", passwordSecretRef={"name": "app-pw", "key": "password"}))
    # The controller has validated and planned the Broker: it read `app-pw`.
    obj = k.wait_ready(cluster, "broker", "home", namespace, status="False",
                       reason="PodNotReady", timeout=120)
    assert obj["status"].get("desiredConfigHash"), obj["status"]
    # A later change to an unrelated Secret, seen by the watch, is not read either.
    cluster.kubectl("patch", "secret", "other-0", "-n", namespace, "--type", "merge",
                    "-p", '{"stringData": {"more": "x"}}')

    found = _memory_holds(controller.proc.pid, [named.encode()] + [u.encode() for u in unrelated])
    assert named.encode() in found, "the named Secret's value is not in the controller's memory: the search does not work"
    leaked = sorted(n.decode() for n in found if n != named.encode())
    assert not leaked, f"{len(leaked)} of {len(unrelated)} values of Secrets nobody names are in the controller's memory"


def test_a_secret_named_before_it_exists_is_picked_up_and_its_changes_apply_live(
        cluster, controller, namespace):
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.user("late", "home", passwordSecretRef={"name": "late-pw", "key": "password"}))
    # A user whose Secret is missing is left out, and says why; the Broker runs.
    obj = k.wait_ready(cluster, "mqttuser", "late", namespace, status="False",
                       reason="InvalidSpec", timeout=60)
    assert "late-pw" in k.ready(obj)["message"], k.ready(obj)["message"]

    _create_secret(cluster, namespace, "late-pw", password="first-pw")
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    k.wait_ready(cluster, "mqttuser", "late", namespace, reason="Active", timeout=60)
    port = k.node_port(cluster, "home", namespace, "lan")
    cluster.wait_for(_can_login(port, "late", "first-pw"), 60, "the user logs in with the first password")

    cluster.kubectl("patch", "secret", "late-pw", "-n", namespace, "--type", "merge",
                    "-p", '{"stringData": {"password": "second-pw"}}')
    cluster.wait_for(_can_login(port, "late", "second-pw"), 60, "the changed password works")
    assert not _can_login(port, "late", "first-pw")(), "the old password is refused"

    # A key the user names disappears: the controller sees it in the Secret it reads.
    cluster.kubectl("patch", "secret", "late-pw", "-n", namespace, "--type", "json",
                    "-p", '[{"op": "remove", "path": "/data/password"}]')
    obj = k.wait_ready(cluster, "mqttuser", "late", namespace, status="False",
                       reason="InvalidSpec", timeout=60)
    assert "password" in k.ready(obj)["message"], k.ready(obj)["message"]
