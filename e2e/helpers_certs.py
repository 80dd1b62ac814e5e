"""Certificates made with openssl for the certificate tests: a private CA, server
certificates it signs, and Secrets that carry them."""

from __future__ import annotations

from pathlib import Path

from support import require, run


def openssl_ca(directory: Path, name: str = "ca", cn: str = "test CA", days: int = 2) -> tuple:
    """A self-signed EC CA with a PKCS#8 key, valid for `days`: (crt, key)."""
    openssl = require("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    r = run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", str(days), "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    assert r.returncode == 0, f"openssl failed: {r.stderr}"
    return crt, key


def openssl_server_cert(directory: Path, ca: tuple, name: str = "server") -> tuple:
    """A localhost / 127.0.0.1 server certificate signed by ca: (crt, key)."""
    openssl = require("openssl")
    crt, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    for args in (
        [openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
         "-out", crt, "-days", "2", "-extfile", ext],
    ):
        r = run(args)
        assert r.returncode == 0, f"openssl failed: {r.stderr}"
    return crt, key


def openssl_ca_and_leaf(directory: Path) -> tuple:
    """A CA and a localhost server certificate it signs: (ca.crt, server.crt, server.key)."""
    ca = openssl_ca(directory)
    crt, key = openssl_server_cert(directory, ca)
    return ca[0], crt, key


def block(text: str, indent: int = 4) -> str:
    return "\n".join(" " * indent + line for line in text.strip().splitlines())
