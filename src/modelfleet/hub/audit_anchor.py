"""The audit chain's anchors outside its rows (ADR 0016): the hub's audit key and the
checkpoint file in the hub's home.

* ``HOME/keys/audit.pem``: an ed25519 key that signs the head record on every append. It is
  created the first time a hub opens a home that lacks it (homes made before issue 8 too),
  and never replaced.
* ``HOME/audit-checkpoint.json``: the newest signed head this hub has checked, written
  atomically and only ever moved forward. It lives on the hub's disk, not in the database:
  someone who can write the database but not the hub's home can put the database back to an
  older, validly signed state, and this file then shows it.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from modelfleet._atomic import atomic_write_bytes, create_secret_once
from modelfleet.audit.checkpoint import Checkpoint, CheckpointSigner
from modelfleet.errors import ConfigError, StorageError

__all__ = ["AUDIT_KEY_NAME", "WITNESS_NAME", "WitnessFile", "load_audit_signer"]

AUDIT_KEY_NAME = "audit.pem"
WITNESS_NAME = "audit-checkpoint.json"


def load_audit_signer(key_dir: Path) -> CheckpointSigner:
    """The hub's audit key from ``key_dir/audit.pem``, created (mode 0600) when missing.

    Two processes opening one home at once agree on one key: the new key is linked into
    place only if no file is there yet.

    Raises:
        ConfigError: the file is unreadable, not an ed25519 PEM key, or readable by others.
    """
    path = Path(key_dir) / AUDIT_KEY_NAME
    if not path.exists():
        _create_key(path)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the audit key {path}: {e.strerror or e}") from e
    try:
        private = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"audit key {path} is corrupt or encrypted: {e}") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"audit key {path} is not an ed25519 key")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"audit key {path} is readable by others; chmod 600 it")
    return CheckpointSigner(private)


def _create_key(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    create_secret_once(path, pem, "audit key")


class WitnessFile:
    """The checkpoint file in the hub's home (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> Checkpoint | None:
        """The stored checkpoint, or None when there is none yet.

        Raises:
            StorageError: the file exists but cannot be read or is not a checkpoint (which
                is itself a sign of tampering: it is only ever replaced atomically).
        """
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            raise StorageError(f"cannot read the audit checkpoint {self.path}: {e}") from e
        try:
            return Checkpoint(
                int(doc["seq"]),
                str(doc["hash"]),
                datetime.fromisoformat(doc["at"]),
                str(doc.get("keyid") or ""),
                str(doc.get("signature") or ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(f"the audit checkpoint {self.path} is malformed: {e}") from e

    def advance(self, head: Checkpoint) -> bool:
        """Store ``head`` if it is newer than the stored one.

        Returns:
            True when the file was written.

        Raises:
            StorageError: the file could not be written.
        """
        current = self.read()
        if current is not None and current.seq >= head.seq:
            return False
        atomic_write_bytes(
            self.path, orjson.dumps(head.to_dict(), option=orjson.OPT_SORT_KEYS), mode=0o600
        )
        return True
