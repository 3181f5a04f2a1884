"""The audit chain's anchors outside its rows (ADR 0016): the hub's audit key and the
checkpoint file in the hub's home.

* ``HOME/keys/audit.pem``: an ed25519 key that signs the head record on every append. It is
  created the first time a hub opens a home that lacks it (homes made before issue 8 too),
  and never replaced. Like the TUF keys it is encrypted at rest with the hub's key
  passphrase when the hub has one (issue 10; :mod:`modelfleet.trust._key_files`); an
  unencrypted one (a home made before) still loads, with a warning.
* ``HOME/audit-checkpoint.json``: the newest signed head this hub has checked, written
  atomically and only ever moved forward. It lives on the hub's disk, not in the database:
  someone who can write the database but not the hub's home can put the database back to an
  older, validly signed state, and this file then shows it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfleet._atomic import atomic_write_bytes
from modelfleet.audit.checkpoint import Checkpoint, CheckpointSigner
from modelfleet.errors import ConfigError, StorageError
from modelfleet.trust._key_files import create_private_key, read_private_key

__all__ = ["AUDIT_KEY_NAME", "WITNESS_NAME", "WitnessFile", "load_audit_signer"]

AUDIT_KEY_NAME = "audit.pem"
WITNESS_NAME = "audit-checkpoint.json"


def load_audit_signer(key_dir: Path, passphrase: bytes | None = None) -> CheckpointSigner:
    """The hub's audit key from ``key_dir/audit.pem``, created (mode 0600) when missing.

    Two processes opening one home at once agree on one key: the new key is linked into
    place only if no file is there yet.

    Args:
        key_dir: the hub's key folder.
        passphrase: the hub's key passphrase: a new key is written encrypted with it and
            an encrypted one read with it; None writes an unencrypted key (loading an
            unencrypted key warns once).

    Raises:
        ConfigError: the file is unreadable, readable by others, not an ed25519 PEM key,
            encrypted without a passphrase given, or the passphrase is wrong.
    """
    path = Path(key_dir) / AUDIT_KEY_NAME
    if not path.exists():
        create_private_key(path, Ed25519PrivateKey.generate(), passphrase, "audit key")
    private = read_private_key(path, passphrase, what="audit key")
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"audit key {path} is not an ed25519 key")
    return CheckpointSigner(private)


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
