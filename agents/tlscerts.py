"""Test certificates made with ``openssl``: a CA, a broker certificate and client
certificates, for the local broker's secure mode (:mod:`agents.localkafka`) and the tests.

Keys are EC P-256 (fast to generate), valid for two days, unencrypted PEM (PKCS#8) next to
their certificates, mode 0600; the broker also gets a PKCS#12 keystore. Nothing here is
meant for production: operators bring their own PKI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.errors import BrokerError

DAYS = "2"


@dataclass(frozen=True)
class Certs:
    """Paths of the generated files (all PEM unless named otherwise)."""

    directory: Path
    ca: Path
    ca_key: Path
    broker_cert: Path
    broker_key: Path
    keystore: Path
    """PKCS#12 keystore of the broker (key, certificate, CA), password :attr:`store_password`."""
    store_password: str = field(repr=False)
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    """Client name (the certificate's CN) -> (certificate, key)."""


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip()[-1500:]}")


def _key_and_csr(d: Path, name: str, subject: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=d)
    os.chmod(d / f"{name}.key", 0o600)


def _sign(d: Path, name: str, extensions: str, ca: str = "ca") -> Path:
    (d / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", DAYS, "-sha256",
             "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.pem"


def make_ca(d: Path, name: str = "ca", cn: str = "metering test CA") -> Path:
    """A self-signed CA ``<name>.pem`` / ``<name>.key`` in ``d``."""
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.pem", "-days", DAYS, "-subj", f"/CN={cn}", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext",
             "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    os.chmod(d / f"{name}.key", 0o600)
    return d / f"{name}.pem"


def server_cert(d: Path, name: str, hosts: Sequence[str], ca: str = "ca") -> Path:
    """A server certificate ``<name>.pem`` for ``hosts`` (DNS names or IPv4 addresses)."""
    sans = ",".join(("IP:" if h.replace(".", "").isdigit() else "DNS:") + h for h in hosts)
    _key_and_csr(d, name, f"/CN={hosts[0]}")
    return _sign(d, name, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                 f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n", ca)


def client_cert(d: Path, name: str, ca: str = "ca") -> Path:
    """A client certificate ``<name>.pem`` with subject ``CN=<name>``."""
    _key_and_csr(d, name, f"/CN={name}")
    return _sign(d, name, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                 "extendedKeyUsage=clientAuth\n", ca)


def make_certs(d: Path, clients: Sequence[str] = (),
               hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> Certs:
    """A CA, a broker certificate for ``hosts`` with its PKCS#12 keystore, and one client
    certificate per name in ``clients``, all under ``d``."""
    if shutil.which("openssl") is None:
        raise BrokerError("openssl is not on PATH: install it (the secure local broker "
                          "generates its certificates with it)")
    d.mkdir(parents=True, exist_ok=True)
    make_ca(d)
    server_cert(d, "broker", hosts)
    password = secrets.token_hex(12)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile",
             "ca.pem", "-name", "broker", "-out", "broker.p12", "-passout",
             f"pass:{password}", cwd=d)
    os.chmod(d / "broker.p12", 0o600)
    made = {name: (client_cert(d, name), d / f"{name}.key") for name in clients}
    return Certs(directory=d, ca=d / "ca.pem", ca_key=d / "ca.key",
                 broker_cert=d / "broker.pem", broker_key=d / "broker.key",
                 keystore=d / "broker.p12", store_password=password, clients=made)
