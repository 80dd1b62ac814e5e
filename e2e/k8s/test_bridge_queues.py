"""Bridges in the broker pod on a real cluster: store-and-forward to a Mosquitto on this
machine through an outage of 10,000 QoS 1 messages, with nothing lost and the order
kept — also when the broker pod is deleted during the outage and its queue lives on the
Broker's PersistentVolumeClaim. The pod that runs the bridge reports its status.

The pod reaches this machine on the node's InternalIP (an address on a local veth pair
that never leaves the machine); clients reach the pod through a NodePort on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Optional

import pytest

import edgemq_k8s as k
from edgemq_k8s import support

N = 10_000




def node_ip(cluster) -> str:
    node = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def persistent_remote(mosquitto, tmp_path, address: str):
    """A Mosquitto listening on 127.0.0.1 (for the test's own clients) and on `address`
    (for the pod), keeping sessions across its own restart, so the persistent
    subscriber `sink` on home/# gets everything sent while it is away, without limit."""
    db = tmp_path / "remote-db"
    db.mkdir()
    pod_port = support.free_port()
    m = mosquitto(["allow_anonymous true", "persistence true", f"persistence_location {db}/",
                   "max_queued_messages 0", "max_inflight_messages 100",
                   f"listener {pod_port} {address}"], name="remote")
    m.pod_port = pod_port
    return m


def local_volume(cluster, namespace: str) -> Optional[Path]:
    """The folder on this machine behind the Broker's volume, when the cluster is this
    machine's own (hostPath PersistentVolumes); None elsewhere."""
    pvc = k.get(cluster, "pvc", "edgemq-home-data", namespace)
    pv = k.get(cluster, "pv", pvc["spec"]["volumeName"], namespace) if pvc else None
    path = ((pv or {}).get("spec", {}).get("hostPath") or {}).get("path")
    return Path(path) if path and os.path.isdir(path) else None


def bridge_status(cluster, namespace: str) -> dict:
    return (k.get(cluster, "bridge", "up", namespace) or {}).get("status") or {}


@pytest.mark.parametrize("delete_pod", [False, True], ids=["remote-outage", "pod-deleted-too"])
def test_an_outage_of_the_remote_loses_nothing_and_keeps_order(
        cluster, controller, namespace, mosquitto, tmp_path, delete_pod):
    remote = persistent_remote(mosquitto, tmp_path, node_ip(cluster))
    sink = support.connect(remote.port, client_id="sink", clean=False)
    sink.subscribe_wait("home/#", 1)
    sink.disconnect_wait()
    extra = {"persistence": {"enabled": True}} if delete_pod else {}
    k.apply(cluster, namespace,
            k.broker("home", [{"name": "lan", "port": 1883}], allowAnonymous=True,
                     aclEnabled=False, **extra),
            {"apiVersion": k.API, "kind": "Bridge", "metadata": {"name": "up"},
             "spec": {"brokerRef": "home",
                      "remote": {"address": f"{node_ip(cluster)}:{remote.pod_port}"},
                      "topics": [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                                  "remotePrefix": "home/"}]}})
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    k.wait_ready(cluster, "bridge", "up", namespace, reason="Connected", timeout=60)
    port = k.node_port(cluster, "home", namespace, "lan")

    remote.stop()
    down = k.wait_ready(cluster, "bridge", "up", namespace, status="False", timeout=60)
    assert down["status"]["connected"] is False
    support.publish_many(port, N, connack_timeout=10, publish_timeout=120)
    st = cluster.wait_for(lambda: (s := bridge_status(cluster, namespace)).get("queueDepth") == N and s,
                          60, f"the pod reporting {N} messages queued")
    assert st["dropped"] == 0 and st["queueBytes"] > 0

    if delete_pod:
        old = k.pod_of(cluster, "home", namespace)
        volume = local_volume(cluster, namespace)
        queue_file = volume / "bridges" / f"{namespace}_up.redb" if volume else None
        # Without waiting for the kubelet to remove the pod object: what matters is that
        # its process ends and a new pod opens the volume.
        cluster.kubectl("delete", "pod", old["metadata"]["name"], "-n", namespace, "--wait=false")
        held = os.open(queue_file, os.O_RDONLY) if queue_file else None
        try:
            if held is not None:
                # A ReplicaSet does not wait for a deleted pod to end before starting
                # its replacement, so the old process may still hold the queue when the
                # new one wants it. Here the test holds it (the store's own lock) the
                # moment the old pod lets go, until the new pod has found it held.
                def take():
                    try:
                        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return True
                    except BlockingIOError:
                        return False
                cluster.wait_for(take, 60, "the old pod letting go of the queue", interval=0.01)
            new = cluster.wait_for(lambda: (p := k.pod_of(cluster, "home", namespace))["metadata"]["uid"]
                                   != old["metadata"]["uid"] and p, 120, "a new broker pod")
            if held is not None:
                # The new pod says why the bridge does not run, in the Bridge's status.
                # (It may first find the Broker's own store still held by the old pod,
                # and then say "Broker home is not running" until its next try.)
                def queue_held():
                    c = k.ready(k.get(cluster, "bridge", "up", namespace))
                    return c and c["reason"] == "ConfigError" and "bridge queue" in c["message"]
                cluster.wait_for(queue_held, 120, "the Bridge's status saying its queue is held")
        finally:
            if held is not None:
                os.close(held)  # releases the lock
        # Nothing changes in the cluster: the pod tries again by itself.
        k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
        assert k.pod_of(cluster, "home", namespace)["metadata"]["uid"] == new["metadata"]["uid"]
        # The new pod opened the queue the old one left on the volume.
        cluster.wait_for(lambda: bridge_status(cluster, namespace).get("queueDepth") == N,
                         120, f"the new pod reporting {N} messages queued")

    remote.start()
    started = time.monotonic()
    # The sink's session resumes at once, so each message is timed as it arrives.
    sink = support.connect(remote.port, client_id="sink", clean=False)
    got, times = [], []
    deadline = time.monotonic() + 180
    while len(got) < N and time.monotonic() < deadline:
        # The first message waits for the bridge's next try, whose delay has grown during
        # the outage (up to 60 s with jitter); after that, 10 s of silence ends the wait.
        m = sink.get_or_none(min(10 if got else 90, max(0.1, deadline - time.monotonic())))
        if m is None:
            break
        got.append(m)
        times.append(time.monotonic())
    time.sleep(0.5)
    got += sink.drain()
    sink.disconnect_wait()
    cluster.wait_for(lambda: bridge_status(cluster, namespace).get("queueDepth") == 0, 60,
                     "the pod reporting an empty queue")
    assert all(m.topic == "home/sensors/x" and m.qos == 1 for m in got)
    losses, dups = support.check_in_order([m.payload for m in got], N)
    st = k.wait_ready(cluster, "bridge", "up", namespace, reason="Connected", timeout=60)["status"]
    cluster.wait_for(lambda: bridge_status(cluster, namespace).get("forwardedOut", 0) >= N, 30,
                     "the pod reporting what it forwarded")
    k.record(f"k8s_bridge_drain_{'pod_deleted' if delete_pod else 'remote_outage'}", {
        "messages": N,
        "received": len(got),
        "lost": losses,
        "duplicates": dups,
        "seconds_from_remote_start_to_first_message": round(times[0] - started, 2) if times else None,
        "drain_seconds_first_to_last": round(times[-1] - times[0], 2) if times else None,
        "messages_per_second": round(len(times) / (times[-1] - times[0])) if len(times) > 1 else None,
    })
    assert losses == 0, f"{losses} of {N} messages lost"
    assert st["dropped"] == 0
