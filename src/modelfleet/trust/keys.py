"""The hub's signing keys: ed25519 private keys as PEM files, one per TUF role.

Key folder layout (``HOME/keys``)::

    root.pem  targets.pem  snapshot.pem  timestamp.pem  director.pem

``root`` signs the root metadata of both repositories; ``targets``, ``snapshot`` and
``timestamp`` sign the catalog's top-level roles; the online ``director`` key signs the
director's targets, snapshot and timestamp.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Signer

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import ConfigError

__all__ = ["ROLES", "generate_keys", "key_file", "load_signers"]

ROLES: tuple[str, ...] = ("root", "targets", "snapshot", "timestamp", "director")


def key_file(key_dir: Path, role: str) -> Path:
    """Return the PEM file of ``role`` in ``key_dir``."""
    return Path(key_dir) / f"{role}.pem"


def generate_keys(key_dir: Path) -> None:
    """Create a fresh ed25519 key for every role in :data:`ROLES` (PKCS#8 PEM, mode 0600).

    Args:
        key_dir: folder to hold the keys; created (mode 0700) if missing.

    Raises:
        ConfigError: a key file already exists there (keys are never overwritten:
            replacing them would orphan every device that trusts the old ones).
        StorageError: the folder is not writable.
    """
    key_dir = Path(key_dir)
    existing = [r for r in ROLES if key_file(key_dir, r).exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite existing keys in {key_dir}: {', '.join(existing)}"
        )
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create key folder {key_dir}: {e.strerror or e}") from e
    for role in ROLES:
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        atomic_write_bytes(key_file(key_dir, role), pem, mode=0o600)


def load_signers(key_dir: Path) -> dict[str, Signer]:
    """Load every role's private key as a securesystemslib signer.

    Args:
        key_dir: folder written by :func:`generate_keys`.

    Returns:
        ``{role: signer}`` for every role in :data:`ROLES`.

    Raises:
        ConfigError: a key file is missing, unreadable, not PEM or not ed25519.
    """
    signers: dict[str, Signer] = {}
    for role in ROLES:
        path = key_file(key_dir, role)
        try:
            pem = path.read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(f"signing key {path} is missing (run key generation)") from e
        except OSError as e:
            raise ConfigError(f"cannot read signing key {path}: {e.strerror or e}") from e
        try:
            private = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"signing key {path} is corrupt or encrypted: {e}") from e
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"signing key {path} is not an ed25519 key")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise ConfigError(f"signing key {path} is readable by others; chmod 600 it")
        signers[role] = CryptoSigner(private)
    return signers
