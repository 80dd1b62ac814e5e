"""A stand-in for AWS IoT Core's fleet provisioning by claim, for the e2e tests.

AWS IoT's MQTT provisioning API cannot run here, so this implements its documented topic
contract (JSON payload format) on a real Mosquitto that, like AWS IoT Core, requires a
client certificate signed by its CA and takes the certificate's identity as the username:

- `$aws/certificates/create-from-csr/json`: `{"certificateSigningRequest"}` → the CSR is
  signed by the stand-in's CA; `accepted`: `{"certificateId", "certificatePem",
  "certificateOwnershipToken"}`.
- `$aws/certificates/create/json`: `{}` → a new key and certificate; `accepted` adds
  `"privateKey"`.
- `$aws/provisioning-templates/<template>/provision/json`:
  `{"certificateOwnershipToken", "parameters"}` → `accepted`: `{"deviceConfiguration",
  "thingName"}` with thing name `edge-<SerialNumber>`.
- Every refusal goes to the request topic's `rejected` with `{"statusCode", "errorCode",
  "errorMessage"}`. The template's parameter check stands in for a pre-provisioning hook:
  a serial number not in `allowed_serials` is refused as a hook refusal.

The certificate id is the SHA-256 of the certificate's DER, as AWS IoT makes it. Each new
certificate's subject CN is a fresh `device-<hex>`, so Mosquitto's log and ACL see the
device's own identity, distinct from the claim's (`claim`). The ACL gives the claim only
the provisioning topics and denies it `home/#`; other identities may use `home/#`.

The replying service is a paho client (identity `provisioner`) on a thread of the test
process; Mosquitto is started on a free loopback port and stopped by pid.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support import free_port
from test_bridges import make_ca, make_leaf

CREATE_FROM_CSR = "$aws/certificates/create-from-csr/json"
CREATE = "$aws/certificates/create/json"


def provision_topic(template: str) -> str:
    return f"$aws/provisioning-templates/{template}/provision/json"


class FleetStandin:
    def __init__(self, mosquitto, d: Path, template: str = "edge-fleet",
                 allowed_serials=("SN-1001",), port=None, also_on=None):
        """`also_on`: an address (such as a cluster node's) to listen on as well, on
        `self.pod_port`, with the same TLS and ACL, for clients that cannot reach
        loopback; the server certificate names it."""
        self.template = template
        self.allowed = set(allowed_serials)
        self.d = d
        self.ca = make_ca(d, "standin-ca")
        self.server = make_leaf(d, "server", self.ca, "localhost", server=True,
                                ips=[also_on] if also_on else [])
        self.claim = make_leaf(d, "claim", self.ca, "claim", server=False)
        self.provisioner = make_leaf(d, "provisioner", self.ca, "provisioner", server=False)
        self.ca_key = serialization.load_pem_private_key(self.ca[1].read_bytes(), None)
        self.ca_cert = x509.load_pem_x509_certificate(self.ca[0].read_bytes())
        prov = provision_topic(template)
        acl = d / "acl"
        acl.write_text(
            "user claim\n"
            "topic deny home/#\n"
            f"topic write {CREATE_FROM_CSR}\ntopic read {CREATE_FROM_CSR}/+\n"
            f"topic write {CREATE}\ntopic read {CREATE}/+\n"
            f"topic write {prov}\ntopic read {prov}/+\n"
            "user provisioner\n"
            "topic readwrite $aws/#\n"
            "pattern readwrite home/#\n")
        tls = [f"cafile {self.ca[0]}", f"certfile {self.server[0]}",
               f"keyfile {self.server[1]}", "require_certificate true",
               "use_identity_as_username true"]
        self.pod_port = free_port() if also_on else None
        second = [f"listener {self.pod_port} {also_on}", *tls] if also_on else []
        # Listener options apply to the listener above them; the rest to all.
        self.mosquitto = mosquitto([*tls, *second, "allow_anonymous false", f"acl_file {acl}"],
                                   name="fleet-standin", port=port, start=False)
        self.port = self.mosquitto.port
        self.lock = threading.Lock()
        self.requests = {"create-from-csr": 0, "create": 0, "provision": 0}
        self.tokens = {}  # ownership token -> certificate id
        self.issued = {}  # certificate id -> subject CN
        self.client = None

    # lifecycle ------------------------------------------------------------
    def start(self) -> "FleetStandin":
        self.mosquitto.start()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                        client_id="provisioner", protocol=mqtt.MQTTv311)
        c.tls_set(ca_certs=str(self.ca[0]), certfile=str(self.provisioner[0]),
                  keyfile=str(self.provisioner[1]))
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_connect = lambda cl, *a: cl.subscribe(
            [(CREATE_FROM_CSR, 1), (CREATE, 1), (provision_topic(self.template), 1)])
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        assert subscribed.wait(10), "stand-in provisioner did not subscribe"
        self.client = c
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        self.mosquitto.stop()

    def counts(self) -> dict:
        with self.lock:
            return dict(self.requests)

    def claim_connections(self) -> int:
        """How many times the claim certificate connected (Mosquitto's log)."""
        return self.mosquitto.log_path.read_text(errors="replace").count("u'claim'")

    # the API --------------------------------------------------------------
    def _reply(self, topic: str, accepted: bool, body: dict) -> None:
        self.client.publish(f"{topic}/{'accepted' if accepted else 'rejected'}",
                            json.dumps(body), qos=1)

    @staticmethod
    def _rejection(status: int, code: str, message: str) -> dict:
        return {"statusCode": status, "errorCode": code, "errorMessage": message}

    def _on_message(self, client, userdata, msg) -> None:
        try:
            body = json.loads(msg.payload or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._reply(msg.topic, False, self._rejection(
                400, "InvalidPayload", "The payload is not a JSON object"))
            return
        if msg.topic == CREATE_FROM_CSR:
            self._count("create-from-csr")
            csr_pem = body.get("certificateSigningRequest")
            try:
                csr = x509.load_pem_x509_csr(csr_pem.encode())
                assert csr.is_signature_valid
            except Exception:  # noqa: BLE001 - any bad CSR is a rejection
                self._reply(msg.topic, False, self._rejection(
                    400, "InvalidCertificateSigningRequest", "The CSR is not valid"))
                return
            self._reply(msg.topic, True, self._issue(csr.public_key()))
        elif msg.topic == CREATE:
            self._count("create")
            key = ec.generate_private_key(ec.SECP256R1())
            reply = self._issue(key.public_key())
            reply["privateKey"] = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode()
            self._reply(msg.topic, True, reply)
        elif msg.topic == provision_topic(self.template):
            self._count("provision")
            self._reply(msg.topic, *self._provision(body))

    def _count(self, what: str) -> None:
        with self.lock:
            self.requests[what] += 1

    def _issue(self, public_key) -> dict:
        cn = "device-" + secrets.token_hex(8)
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(self.ca_cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .sign(self.ca_key, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        cert_id = hashlib.sha256(der).hexdigest()
        token = secrets.token_hex(32)
        with self.lock:
            self.tokens[token] = cert_id
            self.issued[cert_id] = cn
        return {"certificateId": cert_id,
                "certificatePem": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "certificateOwnershipToken": token}

    def _provision(self, body: dict):
        with self.lock:
            cert_id = self.tokens.pop(body.get("certificateOwnershipToken"), None)
        if cert_id is None:
            return False, self._rejection(400, "InvalidCertificateOwnershipToken",
                                          "The certificate ownership token is not valid")
        params = body.get("parameters") or {}
        serial = params.get("SerialNumber")
        if not serial:
            return False, self._rejection(400, "InvalidParameters",
                                          "Missing required parameter SerialNumber")
        if serial not in self.allowed:
            return False, self._rejection(
                403, "AccessDenied",
                f"Pre-provisioning hook denied provisioning: serial {serial} is not allowed")
        return True, {"deviceConfiguration": {"Site": params.get("Site", "")},
                      "thingName": f"edge-{serial}"}
