"""Private key files at rest: PKCS#8 PEM, encrypted with a passphrase (issue 10).

A key file is written encrypted (``BestAvailableEncryption`` of ``cryptography``: AES-256
with a scrypt- or PBKDF2-derived key) when a passphrase is given, and mode 0600 always.
Files written before encryption existed (``-----BEGIN PRIVATE KEY-----``) still load; each
one is reported once per process with a warning, so an operator knows to re-encrypt it
(``modelfleet keys encrypt``).

The same rule holds for every private key in the hub's home: the TUF role keys, the audit
key (``audit.pem``) and the OpenSSF model-signing key (``model-signing.key``).

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

from modelfleet._atomic import atomic_write_bytes, create_secret_once
from modelfleet.errors import ConfigError

__all__ = [
    "ENCRYPTED_HEADER",
    "create_private_key",
    "encrypt_key_file",
    "is_encrypted",
    "private_key_pem",
    "read_private_key",
    "write_private_key",
]

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
    atomic_write_bytes(Path(path), private_key_pem(private, passphrase), mode=0o600)


def private_key_pem(private: PrivateKeyTypes, passphrase: bytes | None) -> bytes:
    """``private`` as PKCS#8 PEM, encrypted when ``passphrase`` is given.

    Raises:
        ConfigError: the passphrase is empty.
    """
    encryption: KeySerializationEncryption = NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise ConfigError("the key passphrase is empty")
        encryption = BestAvailableEncryption(passphrase)
    return private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)


def create_private_key(
    path: Path, private: PrivateKeyTypes, passphrase: bytes | None, what: str
) -> None:
    """Write ``private`` to ``path`` (mode 0600) unless a file is already there: two
    processes creating one key at once agree on the first one's file (see
    :func:`~modelfleet._atomic.create_secret_once`).

    Args:
        path: the key file.
        private: the new key.
        passphrase: encrypts the file when given; None writes it unencrypted.
        what: names the key in errors (``"audit key"``).

    Raises:
        ConfigError: the passphrase is empty, or the file cannot be created.
    """
    create_secret_once(Path(path), private_key_pem(private, passphrase), what)


def encrypt_key_file(path: Path, passphrase: bytes, what: str = "signing key") -> bool:
    """Re-write an unencrypted key file encrypted with ``passphrase`` (atomically, mode
    0600); an encrypted or missing file is left alone.

    Returns:
        True when the file was encrypted here.

    Raises:
        ConfigError: the passphrase is empty, or the file is unreadable or corrupt.
        StorageError: the file could not be written.
    """
    path = Path(path)
    try:
        if is_encrypted(path.read_bytes()):
            return False
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from e
    write_private_key(path, read_private_key(path, None, what=what), passphrase)
    return True


def read_private_key(
    path: Path, passphrase: bytes | None, *, what: str = "signing key"
) -> PrivateKeyTypes:
    """Load a private key file written by :func:`write_private_key` (or a legacy one).

    Args:
        path: the key file.
        passphrase: the passphrase of an encrypted file; ignored (with a one-time warning)
            for an unencrypted legacy file.
        what: names the key in errors and the warning (``"audit key"``).

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
        raise ConfigError(f"{what} {path} is missing (run key generation)") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others; chmod 600 it")
    encrypted = is_encrypted(pem)
    if encrypted and not passphrase:
        raise ConfigError(
            f"{what} {path} is encrypted: give its passphrase "
            "(MODELFLEET_KEY_PASSPHRASE or --passphrase-file)"
        )
    try:
        private = load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise ConfigError(f"wrong passphrase for {what} {path}") from e
        raise ConfigError(f"{what} {path} is corrupt: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{what} {path} is corrupt: {e}") from e
    if not encrypted:
        _warn_unencrypted(path, what)
    return private


def _warn_unencrypted(path: Path, what: str) -> None:
    key = str(path.resolve())
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    _log.warning(
        "%s %s is stored unencrypted; encrypt it with `modelfleet keys encrypt`", what, path
    )
