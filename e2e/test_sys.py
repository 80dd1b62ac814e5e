"""`$SYS` statistics topics, read with `mosquitto_sub` as MQTT Explorer and Mosquitto
exporters read them: Mosquitto's common topics every `limits.sysIntervalSeconds`,
never matched by `#`, and checked by the ACL like any topic."""

from __future__ import annotations

import pytest

import support

COMMON = ["version", "uptime", "clients/connected", "clients/total", "clients/maximum",
          "messages/received", "messages/sent", "bytes/received", "bytes/sent",
          "subscriptions/count", "retained messages/count", "heap/current", "heap/maximum",
          "load/messages/received/1min", "load/bytes/sent/15min"]


def sys_messages(port, n=60, username=None, password=None, timeout=10) -> dict:
    args = [support.require("mosquitto_sub"), "-h", "127.0.0.1", "-p", port, "-t", "$SYS/#",
            "-F", "%t\t%p", "-C", n, "-W", timeout]
    if username:
        args += ["-u", username, "-P", password]
    r = support.run(args, timeout=timeout + 10)
    out = {}
    for line in r.stdout.splitlines():
        topic, _, value = line.partition("\t")
        out[topic] = value
    return out


def test_mosquitto_sub_reads_the_common_sys_topics(edgemq, clients):
    port = support.free_port()
    e = edgemq()
    e.write("b.yaml", support.broker_yaml(
        "sys", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                     "  limits: {sysIntervalSeconds: 1}\n"))
    e.start()
    support.wait_port(port)
    everything = clients(port)
    everything.subscribe_wait("#", 0)
    support.pub(port, "some/topic", b"x", qos=1)
    got = support.poll(lambda: (lambda m: all(f"$SYS/broker/{t}" in m for t in COMMON) and m)(
        sys_messages(port)), timeout=30, message="every common $SYS topic")
    assert got["$SYS/broker/version"].startswith("edgemq version ")
    assert int(got["$SYS/broker/clients/connected"]) >= 1
    assert int(got["$SYS/broker/messages/received"]) >= 1
    assert int(got["$SYS/broker/heap/current"]) > 0
    float(got["$SYS/broker/load/messages/received/1min"])
    # `#` never matches a `$SYS` topic.
    seen = [m.topic for m in everything.drain()]
    assert seen and not any(t.startswith("$") for t in seen), seen


def test_sys_topics_are_acl_checked_like_any_topic(edgemq):
    port = support.free_port()
    e = edgemq()
    e.write("b.yaml", support.docs(
        support.broker_yaml("sys", port, "  limits: {sysIntervalSeconds: 1}\n"),
        support.user_yaml("alice", "sys", support.ALICE_HASH, acl=[("alice/#", "readwrite")]),
        support.user_yaml("monitor", "sys", support.ALICE_HASH, username="monitor",
                          acl=[("$SYS/#", "read")])))
    e.start()
    support.wait_port(port)
    assert sys_messages(port, n=5, username="monitor", password="secret1")
    assert sys_messages(port, n=1, username="alice", password="secret1", timeout=3) == {}


def test_sys_interval_zero_turns_them_off(edgemq):
    port = support.free_port()
    e = edgemq()
    e.write("b.yaml", support.broker_yaml(
        "sys", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                     "  limits: {sysIntervalSeconds: 0}\n"))
    e.start()
    support.wait_port(port)
    assert sys_messages(port, n=1, timeout=3) == {}
