"""Devices logging in with client certificates on a real cluster: the listener's CA
and CRL come from Secrets the broker pod reads through the API; a device signed by
that CA logs in as its CN with its MqttUser's ACL, one of another CA is refused, and a
new CRL closes the revoked device while the others stay connected."""

from __future__ import annotations

import edgemq_k8s as k
from edgemq_k8s import support
from helpers_devices import Ca


def test_devices_log_in_with_certificates_signed_by_the_ca_in_a_secret(
        cluster, controller, namespace, tmp_path):
    ca = Ca(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    sensor, spare = ca.issue("sensor-1"), ca.issue("spare-2")
    # The API server publishes a replaced CRD's schema a little after it is
    # Established, and kubectl validates against the published one.
    cluster.wait_for(lambda: cluster.kubectl("explain", "mqttusers.spec.certificateIdentity",
                                             check=False).returncode == 0,
                     60, "the MqttUser schema with certificateIdentity published")
    k.apply(cluster, namespace,
            k.secret("broker-tls", "kubernetes.io/tls",
                     **{"tls.crt": server[0].read_text(), "tls.key": server[1].read_text()}),
            k.secret("devices-ca", **{"ca.crt": ca.pem}),
            k.secret("devices-crl", **{"ca.crl": ca.crl_pem()}),
            k.user("sensor-1", "home", acl=[{"topic": "sensors/sensor-1/#", "access": "readwrite"}],
                   certificateIdentity="sensor-1"),
            k.broker("home", [{"name": "devices", "port": 8883, "tls": {
                "secretRef": "broker-tls",
                "clientAuth": {"caSecretRef": {"name": "devices-ca", "key": "ca.crt"},
                               "crlSecretRef": {"name": "devices-crl", "key": "ca.crl"}}}}],
                     aclPatterns=[{"topic": "devices/%u/#", "access": "readwrite"}]))
    k.wait_ready(cluster, "broker", "home", namespace, timeout=240)
    port = k.node_port(cluster, "home", namespace, "devices")

    def tls(cert):
        return {"ca_certs": str(ca.path), "certfile": str(cert[0]), "keyfile": str(cert[1])}

    c = k.wait_connect(port, tls=tls(sensor), client_id="sensor-1")
    assert c.subscribe_wait("sensors/sensor-1/#", 1) == [1]
    c.publish_wait("sensors/sensor-1/t", b"from the cluster", qos=1)
    assert c.get(10).payload == b"from the cluster"
    other = Ca(tmp_path / "other", cn="other CA").issue("sensor-1")
    assert support.try_connect(port, tls=tls(other), client_id="intruder") == (False, None)
    s2 = k.wait_connect(port, tls=tls(spare), client_id="spare-2")

    # A new CRL revoking spare-2: the pod reads it through the API and closes only it.
    ca.revoke(spare[2])
    k.apply(cluster, namespace, k.secret("devices-crl", **{"ca.crl": ca.crl_pem()}))
    assert s2.disconnected.wait(60), "the revoked device must be disconnected"
    assert c.is_connected() and not c.disconnected.is_set()
    c.publish_wait("sensors/sensor-1/t", b"still here", qos=1)
    assert c.get(10).payload == b"still here"
    assert support.try_connect(port, tls=tls(spare), client_id="spare-2") == (False, None)
    assert "reason=revoked" in k.broker_logs(cluster, "home", namespace, tail=200) \
        or 'reason="revoked"' in k.broker_logs(cluster, "home", namespace, tail=200)
    c.disconnect_wait()
