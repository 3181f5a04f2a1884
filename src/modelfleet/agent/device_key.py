"""The device's own Ed25519 key (issue 11): it signs the version reports and telemetry the
device sends back on removable media (:mod:`modelfleet.delivery.return_bundle`).

The private key is made once, at the agent's first start (or by ``modelfleet agent key``
for a device enrolled offline), in the state folder as ``device-key.pem`` (PKCS #8, mode
0600), with :func:`~modelfleet._atomic.create_secret_once`: two starts racing keep one key,
and the file never holds a partial secret. It never leaves the device. The hub learns the
public key over an authenticated channel only: the agent sends it with its own token
(``PUT /api/v1/devices/{id}/key``), or an admin registers it (``modelfleet device key``).
A key that arrives inside a return bundle would prove nothing, so none does. See ADR 0029.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelfleet._atomic import create_secret_once
from modelfleet.delivery.return_bundle import key_id
from modelfleet.errors import ConfigError, InvalidInputError

__all__ = [
    "DEVICE_KEY_FILE",
    "DeviceKey",
    "key_id",
    "load_device_key",
    "load_or_create_device_key",
    "parse_public_key",
]

#: The private key's file in the agent's state folder.
DEVICE_KEY_FILE: Final = "device-key.pem"


def parse_public_key(text: str | bytes) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as 64 hex digits or as a PEM
    ``PUBLIC KEY`` block (what ``modelfleet agent key`` prints and writes).

    Raises:
        InvalidInputError: neither, or not an Ed25519 key.
    """
    raw = text.encode() if isinstance(text, str) else bytes(text)
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as e:
            raise InvalidInputError(f"not a PEM public key: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidInputError("the public key is not an Ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        data = bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInputError("a device public key is 64 hex digits or a PEM block") from e
    if len(data) != 32:
        raise InvalidInputError("an Ed25519 public key is 32 bytes (64 hex digits)")
    return data


@dataclass(frozen=True)
class DeviceKey:
    """A device's private key, loaded.

    Attributes:
        private: the Ed25519 private key (never printed).
        path: the file it came from.
    """

    private: Ed25519PrivateKey
    path: Path

    def __repr__(self) -> str:  # never the secret
        return f"DeviceKey({self.key_id[:12]}…, {str(self.path)!r})"

    @property
    def public_bytes(self) -> bytes:
        """The 32 raw public bytes."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_hex(self) -> str:
        """The public key as 64 hex digits (what the hub stores)."""
        return self.public_bytes.hex()

    @property
    def public_pem(self) -> str:
        """The public key as a PEM ``PUBLIC KEY`` block."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def key_id(self) -> str:
        """See :func:`key_id`."""
        return key_id(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self.private.sign(message)


def load_device_key(state_dir: Path) -> DeviceKey:
    """The device key in ``state_dir``.

    Raises:
        ConfigError: there is none (the agent never started here: ``modelfleet agent key
            --state-dir DIR`` makes one), or the file is unreadable or not an Ed25519 key.
    """
    path = Path(state_dir) / DEVICE_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"no device key in {state_dir} ({DEVICE_KEY_FILE}); the agent makes one at its "
            f"first start, or run `modelfleet agent key --state-dir {state_dir}`"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read the device key {path}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"the device key {path} is not a usable private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the device key {path} is not an Ed25519 key")
    return DeviceKey(key, path)


def load_or_create_device_key(state_dir: Path) -> tuple[DeviceKey, bool]:
    """The device key in ``state_dir``, made first if there is none.

    Returns:
        (the key, whether this call made it). A concurrent creator's key wins and is kept.

    Raises:
        ConfigError: the folder or file cannot be created, or the existing file is unusable.
    """
    path = Path(state_dir) / DEVICE_KEY_FILE
    created = False
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_secret_once(path, pem, "device key")
        created = True
    key = load_device_key(state_dir)
    return key, created
