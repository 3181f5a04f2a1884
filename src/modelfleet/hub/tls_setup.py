"""A CA and a server certificate for the hub, for sites without their own PKI (issue 10).

``modelfleet hub tls-init`` writes, in ``HOME/tls/``::

    ca.pem     the CA certificate devices pin (``agent run --hub-ca ca.pem``)
    ca.key     the CA's private key (mode 0600; move it offline once the certificate exists)
    hub.pem    the hub's certificate, signed by the CA, for the names and addresses given
    hub.key    its private key (mode 0600), read by ``hub serve --tls``

ECDSA P-256 keys (every TLS stack speaks them), SHA-256 signatures, the server certificate
valid for ``days`` (default 825, the longest public CAs allow), the CA ten years. Sites
with a PKI pass their own files to ``hub serve --tls-cert/--tls-key`` instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelfleet._atomic import atomic_write_bytes, create_secret_once
from modelfleet.errors import ConfigError

__all__ = ["TLS_FOLDER", "HubTlsFiles", "create_hub_tls", "hub_tls_files"]

TLS_FOLDER = "tls"
_CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class HubTlsFiles:
    """Where the hub's TLS files are (see the module docstring)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    def exist(self) -> bool:
        """True when the hub's certificate and key are both there."""
        return self.cert.is_file() and self.key.is_file()


def hub_tls_files(home: Path) -> HubTlsFiles:
    """The TLS file paths in hub home ``home`` (nothing is read)."""
    folder = Path(home) / TLS_FOLDER
    return HubTlsFiles(folder / "ca.pem", folder / "ca.key", folder / "hub.pem", folder / "hub.key")


def create_hub_tls(
    home: Path, hosts: list[str], now: datetime, days: int = 825
) -> tuple[HubTlsFiles, str]:
    """Create the CA and the hub's certificate for ``hosts`` (DNS names or IP addresses).

    Returns:
        The files, and the CA certificate's SHA-256 fingerprint (hex, for operators to
        compare when they copy ``ca.pem`` to devices).

    Raises:
        ConfigError: no host, a host that is neither a name nor an address, ``days`` out of
            1..3650, or TLS files already there (never overwritten: devices pin the CA).
    """
    if not hosts:
        raise ConfigError("give at least one --host (the name or address devices use)")
    if not 1 <= days <= _CA_DAYS:
        raise ConfigError(f"--days must be between 1 and {_CA_DAYS}")
    names = [_san(h) for h in hosts]
    files = hub_tls_files(home)
    there = [p for p in (files.ca_cert, files.ca_key, files.cert, files.key) if p.exists()]
    if there:
        raise ConfigError(f"{there[0]} exists already: devices may pin it; not overwritten")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfleet hub CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        _builder(subject, ca_name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    create_secret_once(files.ca_key, _private_pem(ca_key), "hub CA key")
    create_secret_once(files.key, _private_pem(key), "hub TLS key")
    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files, ca_cert.fingerprint(hashes.SHA256()).hex()


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_label_ok(label) for label in labels):
        raise ConfigError(f"--host {host!r} is neither a DNS name nor an IP address")
    return x509.DNSName(host)


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a little clock skew
        .not_valid_after(now + timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
