"""`$SYS` statistics topics, read with `mosquitto_sub` as MQTT Explorer and Mosquitto
exporters read them: Mosquitto's common topics every `limits.sysIntervalSeconds`,
never matched by `#`, and checked by the ACL like any topic."""

from __future__ import annotations

import re

import support

COMMON = ["version", "uptime", "clients/connected", "clients/total", "clients/maximum",
          "messages/received", "messages/sent", "bytes/received", "bytes/sent",
          "subscriptions/count", "retained messages/count", "heap/current", "heap/maximum",
          "load/messages/received/1min", "load/bytes/sent/15min"]


TIMED_OUT = 27  # mosquitto_sub's exit status when -W runs out


def sys_sub(port, n=60, username=None, password=None, timeout=10) -> dict:
    """`mosquitto_sub -d` on `$SYS/#` for at most n messages or timeout seconds:
    {"connack": CONNACK code or None, "granted": [SUBACK codes], "messages": {topic: value},
    "rc": exit status, "stderr": text}. Its debug lines show what the broker answered, so
    "no messages" is never mistaken for "could not connect"."""
    args = [support.require("mosquitto_sub"), "-d", "-h", "127.0.0.1", "-p", port, "-t", "$SYS/#",
            "-F", "%t\t%p", "-C", n, "-W", timeout]
    if username:
        args += ["-u", username, "-P", password]
    r = support.run(args, timeout=timeout + 10)
    out = {"connack": None, "granted": [], "messages": {}, "rc": r.returncode, "stderr": r.stderr}
    for line in r.stdout.splitlines():
        if "\t" in line:
            topic, _, value = line.partition("\t")
            out["messages"][topic] = value
        elif m := re.search(r"received CONNACK \((\d+)\)", line):
            out["connack"] = int(m.group(1))
        elif m := re.match(r"Subscribed \(mid: \d+\): ([\d, ]+)$", line):
            out["granted"] = [int(c) for c in m.group(1).split(",")]
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
        sys_sub(port)["messages"]), timeout=30, message="every common $SYS topic")
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
    monitor = sys_sub(port, n=5, username="monitor", password="secret1")
    assert (monitor["connack"], monitor["granted"], monitor["rc"]) == (0, [0], 0), monitor
    assert len(monitor["messages"]) == 5 and all(t.startswith("$SYS/broker/") for t in monitor["messages"]), monitor
    # alice logs in and her subscription is refused (SUBACK 0x80): she reads nothing.
    alice = sys_sub(port, n=1, username="alice", password="secret1", timeout=3)
    assert (alice["connack"], alice["granted"], alice["messages"]) == (0, [0x80], {}), alice
    assert "All subscription requests were denied" in alice["stderr"], alice
    support.poll(lambda: 'subscription refused by the ACL' in e.log_text()
                 and 'filter="$SYS/#"' in e.log_text(), 5, message="the refusal logged")


def test_sys_interval_zero_turns_them_off(edgemq):
    port = support.free_port()
    e = edgemq()
    e.write("b.yaml", support.broker_yaml(
        "sys", port, "  allowAnonymous: true\n  aclEnabled: false\n"
                     "  limits: {sysIntervalSeconds: 0}\n"))
    e.start()
    support.wait_port(port)
    got = sys_sub(port, n=1, timeout=3)
    # connected and subscribed, then nothing until mosquitto_sub gave up
    assert (got["connack"], got["granted"], got["messages"]) == (0, [0], {}), got
    assert got["rc"] == TIMED_OUT and "Timed out" in got["stderr"], got
