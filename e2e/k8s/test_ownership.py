"""The controller never takes over an object it does not own (issue 17, item 3).

A Broker's objects are named `edgemq-<broker>`. When an object of that name already
exists and belongs to someone else (no owner reference to the Broker, no edgemq label
for it), the controller writes none of the Broker's objects, leaves that object as it
was, and says why in the Broker's status (Ready=False, reason NameConflict, naming the
object) and in a Warning Event. Each test runs its own controller process watching only
the test's namespace.
"""

from __future__ import annotations

import json

import edgemq_k8s as k


def _strip_volatile(obj: dict) -> dict:
    """An object's content without what the API server changes by itself."""
    meta = {key: v for key, v in obj["metadata"].items()
            if key not in ("resourceVersion", "managedFields", "generation")}
    out = {key: v for key, v in obj.items() if key not in ("metadata", "status")}
    out["metadata"] = meta
    return out


def _events(cluster, namespace: str, name: str) -> list:
    r = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                        f"involvedObject.name={name}", "-o", "json")
    return json.loads(r.stdout)["items"]


def _conflict_reported(cluster, namespace: str, broker: str, kind: str, name: str) -> dict:
    obj = k.wait_ready(cluster, "broker", broker, namespace, status="False",
                       reason="NameConflict", timeout=60)
    message = k.ready(obj)["message"]
    assert f"{kind} {name} already exists and does not belong to Broker {broker}" in message, message
    cluster.wait_for(lambda: any(e["reason"] == "NameConflict" and e["type"] == "Warning"
                                 for e in _events(cluster, namespace, broker)),
                     30, "a Warning Event NameConflict on the Broker")
    return obj


def test_a_broker_leaves_a_service_of_its_name_that_someone_else_made_untouched(
        cluster, controller, namespace):
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "edgemq-foo", "labels": {"app": "shop"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"name": "web", "port": 80}]},
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(service))
    before = _strip_volatile(k.get(cluster, "service", "edgemq-foo", namespace))
    k.apply(cluster, namespace, k.broker("foo", [{"name": "lan", "port": 1883}]))

    _conflict_reported(cluster, namespace, "foo", "Service", "edgemq-foo")
    after = k.get(cluster, "service", "edgemq-foo", namespace)
    assert _strip_volatile(after) == before, "the Service was changed"
    managers = {m["manager"] for m in after["metadata"].get("managedFields") or []}
    assert "edgemq-controller" not in managers, managers
    # Nothing of the Broker was written, not even the objects whose names were free.
    for kind in ("serviceaccount", "role", "rolebinding", "deployment", "secret"):
        name = "edgemq-foo-bundle" if kind == "secret" else "edgemq-foo"
        assert k.get(cluster, kind, name, namespace) is None, f"{kind} {name} was written"

    # Once the Service is gone, the Broker makes its own.
    cluster.kubectl("delete", "service", "edgemq-foo", "-n", namespace)

    def owned():
        svc = k.get(cluster, "service", "edgemq-foo", namespace)
        refs = (svc or {}).get("metadata", {}).get("ownerReferences") or []
        return any(r["kind"] == "Broker" and r["name"] == "foo" for r in refs)
    cluster.wait_for(owned, 90, "the Broker's own Service edgemq-foo")
    reason = k.ready(k.get(cluster, "broker", "foo", namespace))["reason"]
    assert reason != "NameConflict", reason


def test_a_broker_named_leader_election_leaves_the_charts_role_and_binding_alone(
        cluster, controller, namespace):
    # What the chart installs for release `edgemq` in its namespace
    # (templates/rbac.yaml: `<fullname>-leader-election`).
    labels = {"app.kubernetes.io/name": "edgemq", "app.kubernetes.io/instance": "edgemq",
              "app.kubernetes.io/managed-by": "Helm"}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "edgemq-leader-election", "labels": labels},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "verbs": ["get", "create", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "edgemq-leader-election", "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "edgemq-leader-election"},
               "subjects": [{"kind": "ServiceAccount", "name": "edgemq",
                             "namespace": namespace}]}
    cluster.kubectl("create", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]}))
    before = {kind: _strip_volatile(k.get(cluster, kind, "edgemq-leader-election", namespace))
              for kind in ("role", "rolebinding")}
    k.apply(cluster, namespace, k.broker("leader-election", [{"name": "lan", "port": 1883}]))

    obj = _conflict_reported(cluster, namespace, "leader-election", "Role",
                             "edgemq-leader-election")
    assert "(managed by Helm)" in k.ready(obj)["message"], k.ready(obj)["message"]
    for kind, content in before.items():
        now = k.get(cluster, kind, "edgemq-leader-election", namespace)
        assert _strip_volatile(now) == content, f"the chart's {kind} was changed"
    assert k.get(cluster, "serviceaccount", "edgemq-leader-election", namespace) is None
