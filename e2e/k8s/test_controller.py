"""`edgemq controller` on a real cluster: the same YAML as `edgemq run`, broker pods,
changes applied live, validation errors in status, rollouts only for pod changes,
leader election, least-privilege pods, garbage collection.

Each test runs its own controller process (watching only the test's namespace) on this
machine against the cluster; broker pods run the edgemq image; clients reach them
through NodePorts on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import socket
import subprocess
import time

import pytest

import edgemq_k8s as k
from edgemq_k8s import support

EXAMPLE = k.REPO / "examples" / "standalone"
Z2M_HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRig"
            "ZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==")  # secret1




def validate(tmp_path, namespace):
    copy = k.namespaced_copy(EXAMPLE, tmp_path / "example", namespace)
    r = support.run([support.edgemq_bin(), "validate", str(copy)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in r.stdout.splitlines():
        if line.strip().startswith(f"Broker {namespace}/home: config "):
            return line.split("config ")[1].strip()
    raise AssertionError(f"no config hash in: {r.stdout}")


def test_the_standalone_example_runs_as_a_broker_pod(cluster, controller, namespace, tmp_path):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    # Reach it from this machine: a NodePort Service (a live change, no restart).
    cluster.kubectl("patch", "broker", "home", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"service": {"type": "NodePort"}}}))
    b = k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    st = b["status"]
    assert st["readyReplicas"] == 1
    assert st["observedGeneration"] == b["metadata"]["generation"]
    # The pod runs what `edgemq run` would run for the same folder.
    assert st["configHash"] == st["desiredConfigHash"] == validate(tmp_path, namespace)
    cert = k.wait_ready(cluster, "certificates.edgemq.io", "home-tls", namespace, reason="Issued")
    assert cert["status"]["serial"]
    k.wait_ready(cluster, "mqttuser", "homeassistant", namespace, reason="Active")
    k.wait_ready(cluster, "mqttuser", "zigbee2mqtt", namespace, reason="Active")

    port = k.node_port(cluster, "home", namespace, "lan")
    sub = k.wait_connect(port, username="homeassistant", password="change-me-please")
    sub.subscribe_wait("zigbee2mqtt/#", qos=1)
    z2m = support.connect(port, username="zigbee2mqtt", password="secret1")
    z2m.publish_wait("zigbee2mqtt/lamp", b"on", qos=1)
    assert sub.get(timeout=10).payload == b"on"
    with pytest.raises(support.ConnectRefused) as refused:
        support.connect(port)
    # 3.1.1 return code 5, which paho reports as reason 135 (not authorized)
    assert refused.value.rc in (5, 135), "anonymous clients are refused (not authorized)"
    with pytest.raises(support.ConnectRefused):
        support.connect(port, username="homeassistant", password="wrong")

    # TLS through the Certificate the controller issued into a Secret.
    tls_port = k.node_port(cluster, "home", namespace, "tls")
    ca = json.loads(cluster.kubectl("get", "secret", "home-tls", "-n", namespace, "-o", "json").stdout)
    import base64
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(base64.b64decode(ca["data"]["ca.crt"]))
    ctx = ssl.create_default_context(cafile=str(ca_path))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version()

    table = cluster.kubectl("get", "brokers,mqttusers,bridges,certificates.edgemq.io",
                            "-n", namespace).stdout
    assert "home" in table and "True" in table, table
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=home,involvedObject.kind=Broker", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert "Running" in reasons, reasons
    for c in (sub, z2m):
        c.disconnect_wait()


def _tls_pair(tmp_path, n: int):
    key, crt = tmp_path / f"k{n}.pem", tmp_path / f"c{n}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return crt.read_text(), key.read_text()


def test_users_passwords_acls_and_tls_pairs_change_live_with_50_clients_connected(
        cluster, controller, namespace, tmp_path):
    crt, key = _tls_pair(tmp_path, 0)
    k.apply(cluster, namespace,
            k.secret("site-tls", "kubernetes.io/tls", **{"tls.crt": crt, "tls.key": key}),
            k.broker("site", [{"name": "lan", "port": 1883},
                              {"name": "tls", "port": 8883, "tls": {"secretRef": "site-tls"}}]),
            k.user("steady", "site", acl=[{"topic": "#", "access": "readwrite"}], passwordHash=Z2M_HASH),
            k.secret("acl-user-pw", password="acl-pass"),
            k.user("acl-user", "site", acl=[{"topic": "t/0", "access": "write"}],
                   passwordSecretRef={"name": "acl-user-pw", "key": "password"}))
    k.wait_ready(cluster, "broker", "site", namespace, timeout=240)
    port = k.node_port(cluster, "site", namespace, "lan")
    tls_port = k.node_port(cluster, "site", namespace, "tls")
    steady = [k.wait_connect(port, username="steady", password="secret1") for _ in range(50)]
    watcher = steady[0]
    watcher.subscribe_wait("t/#", qos=0)
    pod = k.pod_of(cluster, "site", namespace)
    uid = pod["metadata"]["uid"]

    latencies = {"add_user": [], "change_password": [], "change_acl": [], "replace_tls_secret": []}
    # Changes of each kind: 5 in the test suite; EDGEMQ_LIVE_CHANGES=20 for the
    # benchmark figure (README, "Kubernetes figures").
    per_kind = int(os.environ.get("EDGEMQ_LIVE_CHANGES", "5"))
    # The part of each latency that is `kubectl apply` itself (a process start, a
    # discovery and an API round trip), so that edgemq's own part shows.
    kubectl_s = []

    def timed(kind, change, effect, what):
        start = time.monotonic()
        change()
        kubectl_s.append(time.monotonic() - start)
        cluster.wait_for(effect, 60, what, interval=0.05)
        latencies[kind].append(time.monotonic() - start)

    def can_login(user, pw):
        # A raw CONNECT, one round trip: a refused paho client takes up to a second to
        # stop its network thread, which rounded every poll that came too early up to
        # about 1.2 s.
        return lambda: support.can_login(port, user, pw)

    for i in range(per_kind):
        name = f"new-{i}"
        timed("add_user",
              lambda: k.apply(cluster, namespace, k.secret(f"{name}-pw", password=f"pw-{i}"),
                              k.user(name, "site", passwordSecretRef={"name": f"{name}-pw", "key": "password"})),
              can_login(name, f"pw-{i}"), f"MqttUser {name} can log in")
    for i in range(per_kind):
        timed("change_password",
              lambda: k.apply(cluster, namespace, k.secret("new-0-pw", password=f"changed-{i}")),
              can_login("new-0", f"changed-{i}"), f"the new password {i} works")
        assert not can_login("new-0", f"pw-0" if i == 0 else f"changed-{i-1}")(), "the old password is refused"
    for i in range(1, per_kind + 1):
        topic = f"t/{i}"

        def publish_arrives(topic=topic):
            # MQTT 5, so that the PUBACK says at once whether the ACL allowed it
            # (0x87 while the old ACL is in force): a poll costs a round trip, not a
            # timeout, and the latency is not rounded up to the poll's wait.
            c = support.connect(port, username="acl-user", password="acl-pass",
                                protocol=support.MQTTv5)
            try:
                if c.publish_wait(topic, b"x", qos=1) == 0x87:
                    return False
                msg = watcher.get_or_none(timeout=5)
                while msg is not None and msg.topic != topic:
                    msg = watcher.get_or_none(timeout=5)
                assert msg is not None, f"{topic}: PUBACK success but nothing delivered"
                return True
            finally:
                c.disconnect_wait()
        timed("change_acl",
              lambda topic=topic: k.apply(cluster, namespace, k.user(
                  "acl-user", "site", acl=[{"topic": topic, "access": "write"}],
                  passwordSecretRef={"name": "acl-user-pw", "key": "password"})),
              publish_arrives, f"acl-user may publish on {topic}")
    for i in range(1, per_kind + 1):
        crt, key = _tls_pair(tmp_path, i)
        der = ssl.PEM_cert_to_DER_cert(crt)
        timed("replace_tls_secret",
              lambda crt=crt, key=key: k.apply(cluster, namespace, k.secret(
                  "site-tls", "kubernetes.io/tls", **{"tls.crt": crt, "tls.key": key})),
              lambda der=der: k.served_der(tls_port) == der, f"TLS pair {i} served")

    disconnected = [c for c in steady if c.disconnected.is_set()]
    assert not disconnected, f"{len(disconnected)} of 50 unconcerned clients were disconnected"
    for c in steady[:3]:
        c.publish_wait("t/steady", b"still here", qos=1)
    now = k.pod_of(cluster, "site", namespace)
    assert now["metadata"]["uid"] == uid, "the pod was replaced"
    assert k.restarts(now) == 0, "the broker container restarted"
    all_ms = [x * 1000 for v in latencies.values() for x in v]
    k.record("apply_to_effect", {
        "changes": len(all_ms),
        "p50_ms": round(k.percentile(all_ms, 50)),
        "p99_ms": round(k.percentile(all_ms, 99)),
        "by_kind_p50_ms": {kind: round(k.percentile([x * 1000 for x in v], 50)) for kind, v in latencies.items()},
        "by_kind_max_ms": {kind: round(max(v) * 1000) for kind, v in latencies.items()},
        "kubectl_apply_p50_ms": round(k.percentile([x * 1000 for x in kubectl_s], 50)),
        "after_kubectl_p50_ms": round(k.percentile(
            [(t - a) * 1000 for t, a in zip([x for v in latencies.values() for x in v], kubectl_s)], 50)),
    })
    for c in steady:
        c.disconnect_wait()


def test_an_invalid_object_is_reported_and_the_last_good_config_keeps_serving(
        cluster, controller, namespace, tmp_path):
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.user("alice", "home", acl=[{"topic": "#", "access": "readwrite"}], passwordHash=Z2M_HASH))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "lan")
    alice = k.wait_connect(port, username="alice", password="secret1")

    # A dangling reference: the object says why, with the words `edgemq validate` uses.
    k.apply(cluster, namespace, k.user("lost", "nope", passwordHash=Z2M_HASH))
    lost = k.wait_ready(cluster, "mqttuser", "lost", namespace, status="False", reason="InvalidSpec")
    # The words `edgemq validate` uses, then what runs instead.
    message, instead = k.ready(lost)["message"].rsplit("; ", 1)
    assert instead == "left out until fixed", k.ready(lost)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "all.yaml").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": []}))
    for i, obj in enumerate(json.loads(cluster.kubectl("get", "brokers,mqttusers", "-n", namespace,
                                                       "-o", "json").stdout)["items"]):
        keep = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {"name": obj["metadata"]["name"], "namespace": namespace},
                "spec": obj["spec"]}
        (folder / f"{i}.yaml").write_text(json.dumps(keep))
    (folder / "all.yaml").unlink()
    r = support.run([support.edgemq_bin(), "validate", str(folder)], timeout=60)
    assert r.returncode != 0
    assert any(line.endswith(message) for line in r.stdout.splitlines()), (message, r.stdout)
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                        "involvedObject.name=lost", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events), events
    # Not this Broker's business: it stays Ready.
    assert k.ready(k.get(cluster, "broker", "home", namespace))["status"] == "True"

    # A duplicate username: the newcomer stays out, alice keeps her last good version,
    # and the Broker is not held back (it stays Ready).
    k.apply(cluster, namespace, k.user("alice-again", "home", username="alice", passwordHash=Z2M_HASH))
    again = k.ready(k.wait_ready(cluster, "mqttuser", "alice-again", namespace, status="False",
                                 reason="InvalidSpec"))
    assert "already used" in again["message"] and again["message"].endswith("left out until fixed"), again
    held = k.ready(k.wait_ready(cluster, "mqttuser", "alice", namespace, status="False",
                                reason="InvalidSpec", timeout=60))
    assert "also claimed" in held["message"], held
    assert held["message"].endswith("its last good version stays in effect"), held
    assert k.ready(k.get(cluster, "broker", "home", namespace))["status"] == "True"
    assert not alice.disconnected.is_set()
    alice.subscribe_wait("check", qos=1)
    alice.publish_wait("check", b"1", qos=1)
    assert alice.get(timeout=5).payload == b"1"

    # The fix applies.
    cluster.kubectl("delete", "mqttuser", "alice-again", "-n", namespace)
    k.wait_ready(cluster, "broker", "home", namespace, timeout=60)
    k.wait_ready(cluster, "mqttuser", "alice", namespace, reason="Active", timeout=60)
    cluster.kubectl("delete", "mqttuser", "lost", "-n", namespace)
    assert not alice.disconnected.is_set()
    alice.disconnect_wait()


def test_deleting_a_user_locks_it_out_while_another_user_is_invalid(cluster, controller, namespace):
    rules = [{"topic": "home/#", "access": "readwrite"}]
    ref = lambda key: {"passwordSecretRef": {"name": "pw", "key": key}}  # noqa: E731
    k.apply(cluster, namespace,
            k.secret("pw", alice="pw-alice", bob="pw-bob", carol="pw-carol"),
            k.broker("home", [{"name": "lan", "port": 1883}]),
            *[k.user(u, "home", acl=rules, **ref(u)) for u in ("alice", "bob", "carol")])
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "lan")
    alice = k.wait_connect(port, username="alice", password="pw-alice")
    alice.subscribe_wait("home/#", qos=1)
    bob = k.wait_connect(port, username="bob", password="pw-bob")

    # Break carol: her password reference names a key the Secret does not have.
    k.apply(cluster, namespace, k.user("carol", "home", acl=rules, **ref("carol-typo")))
    carol = k.ready(k.wait_ready(cluster, "mqttuser", "carol", namespace, status="False",
                                 reason="InvalidSpec", timeout=60))
    assert "MqttUser/carol: Secret `pw` has no key `carol-typo`" in carol["message"], carol
    assert carol["message"].endswith("its last good version stays in effect"), carol

    # Delete bob while carol is broken: locked out at once, his session closed.
    cluster.kubectl("delete", "mqttuser", "bob", "-n", namespace)
    cluster.wait_for(bob.disconnected.is_set, 60, "bob's session closed after his deletion")
    assert support.connack_code(port, "bob", "pw-bob") == 5
    assert support.connack_code(port, "bob", "pw-bob", v5=True) == 0x87
    # Nobody else is touched: alice exchanges messages, carol runs her last good version,
    # and the Broker runs the new configuration.
    assert not alice.disconnected.is_set()
    alice.publish_wait("home/x", b"after", qos=1)
    assert alice.get(timeout=10).payload == b"after"
    assert support.try_connect(port, username="carol", password="pw-carol")[0]
    k.wait_ready(cluster, "broker", "home", namespace, reason="Running", timeout=60)

    # An object that never checked clean stays out, and says so.
    k.apply(cluster, namespace, k.user("dave", "home", acl=rules, **ref("dave")))
    dave = k.ready(k.wait_ready(cluster, "mqttuser", "dave", namespace, status="False",
                                reason="InvalidSpec", timeout=60))
    assert dave["message"].endswith("left out until fixed"), dave
    assert support.connack_code(port, "dave", "") == 5
    alice.disconnect_wait()


def test_a_user_moved_to_another_broker_is_locked_out_of_the_one_it_left_at_once(
        cluster, controller, namespace):
    rules = [{"topic": "home/#", "access": "readwrite"}]
    pw = {"passwordSecretRef": {"name": "pw", "key": "bob"}}
    k.apply(cluster, namespace,
            k.secret("pw", bob="pw-bob"),
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.broker("lab", [{"name": "lan", "port": 1884}]),
            k.user("bob", "home", acl=rules, **pw))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    k.wait_ready(cluster, "broker", "lab", namespace, timeout=240)
    home = k.node_port(cluster, "home", namespace, "lan")
    lab = k.node_port(cluster, "lab", namespace, "lan")

    def code(port):
        try:
            return support.connack_code(port, "bob", "pw-bob")
        except OSError:  # the NodePort not routed yet
            return None

    bob = k.wait_connect(home, username="bob", password="pw-bob")
    cluster.wait_for(lambda: code(lab) == 5, 60, "bob refused by the other Broker")
    # Let the rollouts' own status changes (which reconcile each Broker) settle, so the
    # move below is the only thing that could reconcile the Broker bob leaves.
    time.sleep(15)

    # Moved: the Broker he left drops him at once (not at its next periodic pass),
    # and the one he names admits him.
    k.apply(cluster, namespace, k.user("bob", "lab", acl=rules, **pw))
    cluster.wait_for(bob.disconnected.is_set, 60, "bob's session on the Broker he left closed")
    assert support.connack_code(home, "bob", "pw-bob") == 5
    assert support.connack_code(home, "bob", "pw-bob", v5=True) == 0x87
    cluster.wait_for(lambda: code(lab) == 0, 60, "bob admitted by the Broker he moved to")


def test_after_a_controller_restart_deleting_a_user_locks_it_out_while_the_broker_is_invalid(
        cluster, controller, namespace):
    rules = [{"topic": "home/#", "access": "readwrite"}]
    ref = lambda key: {"passwordSecretRef": {"name": "pw", "key": key}}  # noqa: E731
    k.apply(cluster, namespace,
            k.secret("pw", alice="pw-alice", bob="pw-bob"),
            k.broker("home", [{"name": "lan", "port": 1883}]),
            *[k.user(u, "home", acl=rules, **ref(u)) for u in ("alice", "bob")])
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "lan")
    alice = k.wait_connect(port, username="alice", password="pw-alice")
    alice.subscribe_wait("home/#", qos=1)
    bob = k.wait_connect(port, username="bob", password="pw-bob")

    # Break the Broker itself: the API server takes it, validation does not.
    cluster.kubectl("patch", "broker", "home", "-n", namespace, "--type", "merge", "-p",
                    json.dumps({"spec": {"listeners": [{"name": "lan", "port": 1883},
                                                       {"name": "lan2", "port": 1883}]}}))
    mistake = "Broker/home: port 1883 is already used by listener `lan`"
    k.wait_ready(cluster, "broker", "home", namespace, status="False", reason="InvalidSpec",
                 timeout=60)

    # The controller restarts: nothing of the Broker's last good version is in its memory.
    controller.stop()
    controller.start()

    # Delete bob: locked out all the same, his session closed.
    cluster.kubectl("delete", "mqttuser", "bob", "-n", namespace)
    cluster.wait_for(bob.disconnected.is_set, 90, "bob's session closed after his deletion")
    assert support.raw_connack(port, username="bob", password="pw-bob", v5=False) == ((2, 0, b"\x00\x05"), True)
    assert support.raw_connack(port, username="bob", password="pw-bob", v5=True) == ((2, 0, b"\x00\x87\x00"), True)
    # alice is not touched and says so; the Broker names its mistake and what runs.
    assert not alice.disconnected.is_set()
    alice.publish_wait("home/x", b"after", qos=1)
    assert alice.get(timeout=10).payload == b"after"
    k.wait_ready(cluster, "mqttuser", "alice", namespace, reason="Active", timeout=60)
    # The pod runs the bundle without bob, and the Broker says so.
    def applied():
        b = k.get(cluster, "broker", "home", namespace)
        st = b.get("status") or {}
        return st.get("configHash") and st.get("configHash") == st.get("desiredConfigHash") and b
    st = cluster.wait_for(applied, 60, "the pod running the bundle without bob")["status"]
    want = (f"{mistake}; its last good version stays in effect; "
            f"the pod keeps running configuration {st['configHash'][:12]}")
    cluster.wait_for(lambda: k.ready(k.get(cluster, "broker", "home", namespace))["message"] == want,
                     60, "the Broker naming its mistake")
    broker = k.ready(k.get(cluster, "broker", "home", namespace))
    assert (broker["status"], broker["reason"], broker["message"]) == ("False", "InvalidSpec", want)
    assert "recovered the last good version" in controller.log()
    alice.disconnect_wait()


def _versions(cluster, namespace):
    out = {}
    for kind in ("brokers.edgemq.io", "mqttusers.edgemq.io", "deployments", "services", "secrets",
                 "serviceaccounts", "roles", "rolebindings", "replicasets"):
        items = json.loads(cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
        for o in items:
            out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    return out


def second_image(image: str) -> str:
    return image + "-b" if ":" in image else image + ":b"


# The installer allows the second name of the image (chart value allowedBrokerImages).
@pytest.mark.controller_args(lambda cluster, _tmp: ["--allowed-broker-image",
                                                    second_image(cluster.image)])
def test_an_image_change_rolls_the_pod_once_and_an_idle_controller_writes_nothing(
        cluster, controller, namespace):
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.user("alice", "home", passwordHash=Z2M_HASH))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    before = k.get(cluster, "deployment", "edgemq-home", namespace)

    # Idle: a minute without any change must leave every object as it was.
    versions = _versions(cluster, namespace)
    time.sleep(60)
    assert _versions(cluster, namespace) == versions, "the controller wrote while nothing changed"

    # The same image under a second name is a pod-template change: one rollout.
    image = cluster.image
    second = second_image(image)
    tag = support.run(["bash", str(k.REPO / "scripts" / "cluster.sh"), "tag", image, second],
                      timeout=120)
    assert tag.returncode == 0, tag.stderr
    cluster.kubectl("patch", "broker", "home", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"pod": {"image": second}}}))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    cluster.wait_for(lambda: k.pod_of(cluster, "home", namespace)["spec"]["containers"][0]["image"] == second,
                     120, "the new pod")
    after = k.get(cluster, "deployment", "edgemq-home", namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    rs = json.loads(cluster.kubectl("get", "replicasets", "-n", namespace, "-l",
                                    "edgemq.io/broker=home", "-o", "json").stdout)["items"]
    assert len(rs) == 2, f"exactly one rollout: {[r['metadata']['name'] for r in rs]}"


def test_two_controller_replicas_one_acts_and_the_other_takes_over(crds, namespace, tmp_path):
    cluster = crds
    extra = ["--leader-election", "--lease-namespace", namespace, "--lease-name", "edgemq-test"]
    a = k.Controller(cluster, tmp_path, namespace, "a", extra + ["--identity", "replica-a"]).start()
    cluster.wait_for(lambda: "leading" in a.log(), 60, "replica a leading")
    b = k.Controller(cluster, tmp_path, namespace, "b", extra + ["--identity", "replica-b"]).start()
    try:
        k.apply(cluster, namespace, k.broker("one", [{"name": "lan", "port": 1883}]))
        k.wait_ready(cluster, "broker", "one", namespace, timeout=240)
        lease = k.get(cluster, "lease", "edgemq-test", namespace)
        assert lease["spec"]["holderIdentity"] == "replica-a"
        assert "leading" not in b.log(), "the standby must not act"

        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        cluster.wait_for(lambda: "leading" in b.log(), 60, "replica b taking over")
        took = time.monotonic() - killed
        k.apply(cluster, namespace, k.broker("two", [{"name": "lan", "port": 1883}]))
        k.wait_ready(cluster, "broker", "two", namespace, timeout=240)
        assert k.get(cluster, "lease", "edgemq-test", namespace)["spec"]["holderIdentity"] == "replica-b"
        k.record("leader_takeover", {"seconds": round(took, 1), "lease_seconds": 15})
    finally:
        a.stop()
        b.stop()


def test_a_broker_pod_reads_only_its_own_secrets_and_deleting_a_broker_removes_its_objects(
        cluster, controller, namespace):
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.broker("other", [{"name": "lan", "port": 1883}]))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    k.wait_ready(cluster, "broker", "other", namespace, timeout=240)
    sa = f"system:serviceaccount:{namespace}:edgemq-home"

    def can(verb, what):
        return cluster.kubectl("auth", "can-i", verb, what, "-n", namespace, "--as", sa,
                               check=False).stdout.strip()
    assert can("get", "secret/edgemq-home-bundle") == "yes"
    assert can("get", "secret/edgemq-other-bundle") == "no"
    assert can("list", "secrets") == "no"
    assert can("delete", "secret/edgemq-home-bundle") == "no"

    cluster.kubectl("delete", "broker", "other", "-n", namespace)

    def gone():
        left = []
        for kind, name in [("deployment", "edgemq-other"), ("service", "edgemq-other"),
                           ("secret", "edgemq-other-bundle"), ("serviceaccount", "edgemq-other"),
                           ("role", "edgemq-other"), ("rolebinding", "edgemq-other")]:
            if k.get(cluster, kind, name, namespace) is not None:
                left.append(f"{kind}/{name}")
        return not left
    cluster.wait_for(gone, 120, "Broker other's objects removed")
    assert k.get(cluster, "deployment", "edgemq-home", namespace) is not None


def test_a_bridge_added_with_kubectl_runs_in_the_broker_pod_and_reports_its_link(
        cluster, controller, namespace, mosquitto):
    # The pod reaches this machine on the node's own address (which never leaves it).
    node = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    remote_port = support.free_port()
    remote = mosquitto(["allow_anonymous true", f"listener {remote_port} {node_ip}"])
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}]),
            k.user("alice", "home", acl=[{"topic": "#", "access": "readwrite"}], passwordHash=Z2M_HASH))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "lan")
    uid = k.pod_of(cluster, "home", namespace)["metadata"]["uid"]
    far = support.connect(remote.port)
    far.subscribe_wait("home/#", qos=1)

    k.apply(cluster, namespace, {
        "apiVersion": k.API, "kind": "Bridge", "metadata": {"name": "up"},
        "spec": {"brokerRef": "home", "remote": {"address": f"{node_ip}:{remote_port}"},
                 "topics": [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                             "remotePrefix": "home/"}]}})
    bridge = k.wait_ready(cluster, "bridge", "up", namespace, reason="Connected", timeout=60)
    assert bridge["status"]["connected"] is True
    assert bridge["status"]["observedGeneration"] == bridge["metadata"]["generation"]
    # The Service's node port may still be on its way into the node's rules.
    alice = k.wait_connect(port, username="alice", password="secret1")
    alice.publish_wait("sensors/t", b"21", qos=1)
    msg = far.get(timeout=10)
    assert (msg.topic, msg.payload) == ("home/sensors/t", b"21")
    cluster.wait_for(lambda: (k.get(cluster, "bridge", "up", namespace)["status"].get("forwardedOut") or 0) >= 1,
                     30, "the pod reporting the forwarded message")
    now = k.pod_of(cluster, "home", namespace)
    assert now["metadata"]["uid"] == uid and k.restarts(now) == 0, "a bridge is added live"
    for c in (alice, far):
        c.disconnect_wait()


def test_a_tls_listener_added_with_kubectl_apply_is_live_and_keeps_the_pod(
        cluster, controller, namespace, tmp_path):
    crt, key = _tls_pair(tmp_path, 0)
    lan = {"name": "lan", "port": 1883}
    k.apply(cluster, namespace,
            k.secret("site-tls", "kubernetes.io/tls", **{"tls.crt": crt, "tls.key": key}),
            k.broker("site", [lan]),
            k.user("alice", "site", acl=[{"topic": "#", "access": "readwrite"}], passwordHash=Z2M_HASH))
    k.wait_ready(cluster, "broker", "site", namespace, timeout=240)
    port = k.node_port(cluster, "site", namespace, "lan")
    clients = [k.wait_connect(port, username="alice", password="secret1") for _ in range(10)]
    watcher = clients[0]
    watcher.subscribe_wait("t/#", qos=1)
    uid = k.pod_of(cluster, "site", namespace)["metadata"]["uid"]
    deployment = k.get(cluster, "deployment", "edgemq-site", namespace)

    # What a user does: the same Broker, now with a TLS listener, through kubectl apply.
    k.apply(cluster, namespace, k.broker(
        "site", [lan, {"name": "tls", "port": 8883, "tls": {"secretRef": "site-tls"}}]))
    tls_port = cluster.wait_for(
        lambda: next((p["nodePort"] for p in k.get(cluster, "service", "edgemq-site", namespace)
                      ["spec"]["ports"] if p["name"] == "tls"), None),
        60, "the Service's tls port")
    ca = tmp_path / "c0.pem"  # the self-signed pair, for the name localhost
    tls_client = k.wait_connect(tls_port, username="alice", password="secret1",
                                tls={"ca_certs": str(ca)}, host="localhost")
    tls_client.publish_wait("t/over-tls", b"secure", qos=1)
    msg = watcher.get(timeout=10)
    assert (msg.topic, msg.payload) == ("t/over-tls", b"secure")
    b = k.wait_ready(cluster, "broker", "site", namespace, timeout=60)
    assert b["status"]["observedGeneration"] == b["metadata"]["generation"]
    assert b["status"]["configHash"] == b["status"]["desiredConfigHash"]

    # The Deployment's pod template did not move, so no rollout is pending or running.
    now = k.get(cluster, "deployment", "edgemq-site", namespace)
    assert now["metadata"]["generation"] == deployment["metadata"]["generation"], (
        "the listener change edited the pod template (a rollout): "
        f"{json.dumps(now['spec']['template']['spec']['containers'][0].get('ports'))}")
    rs = json.loads(cluster.kubectl("get", "replicasets", "-n", namespace, "-l",
                                    "edgemq.io/broker=site", "-o", "json").stdout)["items"]
    assert len(rs) == 1, f"no second ReplicaSet: {[r['metadata']['name'] for r in rs]}"
    pod = k.pod_of(cluster, "site", namespace)
    assert pod["metadata"]["uid"] == uid and k.restarts(pod) == 0, "the pod was replaced"
    disconnected = [c for c in clients if c.disconnected.is_set()]
    assert not disconnected, f"{len(disconnected)} of 10 clients were disconnected"
    clients[1].publish_wait("t/plain", b"still here", qos=1)
    msg = watcher.get(timeout=10)
    assert (msg.topic, msg.payload) == ("t/plain", b"still here")
    for c in clients + [tls_client]:
        c.disconnect_wait()
