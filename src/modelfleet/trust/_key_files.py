"""Private key files at rest: PKCS#8 PEM, encrypted with a passphrase (issue 10).

A key file is written encrypted (``BestAvailableEncryption`` of ``cryptography``: AES-256
with a scrypt- or PBKDF2-derived key) when a passphrase is given, and mode 0600 always.
Files written before encryption existed (``-----BEGIN PRIVATE KEY-----``) still load; each
one is reported once per process with a warning, so an operator knows to re-encrypt it
(``modelfleet keys encrypt``).

The passphrase is never read here from the environment: the CLI and the hub's entry point
read ``MODELFLEET_KEY_PASSPHRASE`` / ``--passphrase-file`` and pass the bytes in.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import ConfigError

__all__ = ["ENCRYPTED_HEADER", "is_encrypted", "read_private_key", "write_private_key"]

_log = logging.getLogger(__name__)
_warned: set[str] = set()
_warned_lock = threading.Lock()

ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def is_encrypted(pem: bytes) -> bool:
    """True if ``pem`` is an encrypted PKCS#8 key."""
    return pem.lstrip().startswith(ENCRYPTED_HEADER)


def write_private_key(path: Path, private: PrivateKeyTypes, passphrase: bytes | None) -> None:
    """Write ``private`` to ``path`` as PKCS#8 PEM (mode 0600), atomically.

    Args:
        path: the key file (its folder is created if missing).
        private: the private key.
        passphrase: encrypts the file when given (non-empty); None writes it unencrypted
            (the hub's legacy layout; loading it later warns).

    Raises:
        ConfigError: the passphrase is empty.
        StorageError: the file could not be written.
    """
    encryption: KeySerializationEncryption = NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise ConfigError("the key passphrase is empty")
        encryption = BestAvailableEncryption(passphrase)
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    atomic_write_bytes(Path(path), pem, mode=0o600)


def read_private_key(path: Path, passphrase: bytes | None) -> PrivateKeyTypes:
    """Load a private key file written by :func:`write_private_key` (or a legacy one).

    Args:
        path: the key file.
        passphrase: the passphrase of an encrypted file; ignored (with a one-time warning)
            for an unencrypted legacy file.

    Returns:
        The private key.

    Raises:
        ConfigError: the file is missing, unreadable, readable by others, corrupt,
            encrypted without a passphrase given, or the passphrase is wrong.
    """
    path = Path(path)
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise ConfigError(f"signing key {path} is missing (run key generation)") from e
    except OSError as e:
        raise ConfigError(f"cannot read signing key {path}: {e.strerror or e}") from e
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(f"signing key {path} is readable by others; chmod 600 it")
    encrypted = is_encrypted(pem)
    if encrypted and not passphrase:
        raise ConfigError(
            f"signing key {path} is encrypted: give its passphrase "
            "(MODELFLEET_KEY_PASSPHRASE or --passphrase-file)"
        )
    try:
        private = load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise ConfigError(f"wrong passphrase for signing key {path}") from e
        raise ConfigError(f"signing key {path} is corrupt: {e}") from e
    except TypeError as e:
        raise ConfigError(f"signing key {path} is corrupt: {e}") from e
    if not encrypted:
        _warn_unencrypted(path)
    return private


def _warn_unencrypted(path: Path) -> None:
    key = str(path.resolve())
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    _log.warning(
        "signing key %s is stored unencrypted; encrypt it with `modelfleet keys encrypt`", path
    )
