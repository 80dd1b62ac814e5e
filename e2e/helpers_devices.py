"""Device certificates for the client-certificate tests, made with `cryptography`: a
device CA, a server certificate for the broker, device certificates (valid, expired,
from another CA, revoked) and CRLs, written as PEM files Mosquitto, its clients, Paho
and edgemq read alike."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Ca:
    """A CA that signs server and device certificates and CRLs, under `directory`."""

    def __init__(self, directory: Path, cn: str = "devices CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.path = self.dir / f"{cn.replace(' ', '-')}.crt"
        self.path.write_text(self.pem)
        self.revoked: list = []

    def issue(self, cn: str, *, server: bool = False, expired: bool = False,
              dns=(), org: str | None = None, file: str | None = None) -> tuple:
        """A certificate for `cn`: (cert path, key path, serial)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        if expired:
            start, end = NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)
        else:
            start, end = NOW - dt.timedelta(hours=1), NOW + dt.timedelta(days=5)
        b = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(self.name)
             .public_key(key.public_key()).serial_number(serial)
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                 critical=False))
        sans = [x509.DNSName(d) for d in dns]
        if server:
            sans += [x509.DNSName("localhost"),
                     x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = file or cn
        crt, k = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(_pem_key(key))
        k.chmod(0o600)
        return crt, k, serial

    def revoke(self, serial: int) -> None:
        self.revoked.append(serial)

    def crl_pem(self) -> str:
        """A CRL listing every revoked serial, valid for a day."""
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(NOW - dt.timedelta(minutes=5)).next_update(NOW + dt.timedelta(days=1))
             .add_extension(x509.CRLNumber(len(self.revoked) + 1), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        for s in self.revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s)
                .revocation_date(NOW - dt.timedelta(minutes=1)).build())
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def secret_yaml(name: str, data: dict) -> str:
    """A Secret manifest with stringData (multi-line values as block scalars)."""
    lines = ["apiVersion: v1", "kind: Secret", f"metadata: {{name: {name}}}", "stringData:"]
    for k, v in data.items():
        lines.append(f"  {k}: |")
        lines += ["    " + line for line in v.strip().splitlines()]
    return "\n".join(lines) + "\n"
