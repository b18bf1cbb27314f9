"""A development certificate authority: a CA, a server certificate and client certificates
for TLS on HTTPS (uvicorn) and MQTT (Mosquitto), written as PEM files.

For development and HIL benches only: the CA key sits unencrypted next to the certificates.
Keys are ECDSA P-256, certificates X.509 v3 with the usual extensions (server: serverAuth and
subjectAltName for every host; client: clientAuth with the name as common name, which
Mosquitto's ``use_identity_as_username`` takes as the MQTT user name).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twin.errors import ConfigError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_FILE, CA_KEY_FILE = "ca.pem", "ca.key"
SERVER_FILE, SERVER_KEY_FILE = "server.pem", "server.key"


@dataclass(frozen=True)
class DevCaFiles:
    """Paths of what ``write_dev_ca`` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]
    """client name -> (certificate, key)."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b2l development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: datetime,
    days: int,
    hosts: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_ca(
    now: datetime, days: int = 365, common_name: str = "b2l development CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_dev_ca(
    directory: Path,
    now: datetime,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clients: Sequence[str] = (),
    days: int = 365,
    overwrite: bool = False,
) -> DevCaFiles:
    """Write a CA, a server certificate for ``hosts`` and one client certificate per name.

    Files: ``ca.pem``/``ca.key``, ``server.pem``/``server.key``, ``client-NAME.pem``/``.key``;
    keys are readable by the owner only. Refuses to overwrite unless ``overwrite``.
    """
    if days < 1:
        raise ConfigError("certificates need a validity of at least one day")
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name or address")
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"bad client name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    targets = [CA_FILE, CA_KEY_FILE, SERVER_FILE, SERVER_KEY_FILE]
    targets += [f"client-{n}.{ext}" for n in clients for ext in ("pem", "key")]
    existing = [t for t in targets if (directory / t).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{directory} already holds {', '.join(existing)} (use --force)")
    ca_cert, ca_key = make_ca(now, days)
    server_cert, server_key = _leaf(
        ca_cert, ca_key, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, now, days, hosts
    )
    _write(directory / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(directory / CA_KEY_FILE, _key_pem(ca_key), secret=True)
    _write(
        directory / SERVER_FILE, server_cert.public_bytes(serialization.Encoding.PEM), secret=False
    )
    _write(directory / SERVER_KEY_FILE, _key_pem(server_key), secret=True)
    client_files: dict[str, tuple[Path, Path]] = {}
    for name in clients:
        cert, key = _leaf(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, now, days)
        cert_path, key_path = directory / f"client-{name}.pem", directory / f"client-{name}.key"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
        _write(key_path, _key_pem(key), secret=True)
        client_files[name] = (cert_path, key_path)
    return DevCaFiles(
        ca_cert=directory / CA_FILE,
        ca_key=directory / CA_KEY_FILE,
        server_cert=directory / SERVER_FILE,
        server_key=directory / SERVER_KEY_FILE,
        clients=client_files,
    )


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    """Write ``data`` atomically; secret files get mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
