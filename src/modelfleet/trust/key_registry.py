"""Which key serves which role: the hub's key registry, ``HOME/keys/registry.json``.

One record per key ever used by the hub: its key id, role, state, where its private half
lives (a file in the key folder, a securesystemslib signer URI such as ``hsm:2?label=x``,
or nowhere on this machine: ``offline``), its public key and its creation and retirement
times. The file is replaced atomically on every change (temp file, fsync, rename).

A key folder from before the registry (``root.pem``, ``targets.pem``...) is adopted as it
is read: one active record per role file; the registry is written at the first change.

States (:class:`KeyState`), with the one transition function :func:`transition`::

    pending --> active --> retired
       \\______________________/

``pending``: created, waiting for a root that lists it (an offline root signature);
``active``: listed in the current root for its role; ``retired``: never used again (its
private key file, if any, is deleted).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from modelfleet._atomic import atomic_write_text
from modelfleet.errors import ConfigError, ConflictError, InvalidInputError, NotFoundError

__all__ = [
    "REGISTRY_FILE",
    "REGISTRY_FORMAT",
    "ROLES",
    "KeyRecord",
    "KeyRegistry",
    "KeyState",
    "public_dict",
    "transition",
]

REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = "modelfleet-keys/1"

ROLES: tuple[str, ...] = ("root", "targets", "snapshot", "timestamp", "director")
"""The hub's key roles: ``root`` signs both repositories' roots; ``targets``, ``snapshot``
and ``timestamp`` the catalog's top-level roles; ``director`` the director's."""

OFFLINE = "offline"
"""The location of a key whose private half is not on this machine."""


class KeyState(enum.StrEnum):
    """Where a key is in its life (see the module docstring)."""

    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"


_MOVES: dict[KeyState, frozenset[KeyState]] = {
    KeyState.PENDING: frozenset({KeyState.ACTIVE, KeyState.RETIRED}),
    KeyState.ACTIVE: frozenset({KeyState.RETIRED}),
    KeyState.RETIRED: frozenset(),
}


def transition(record: KeyRecord, to: KeyState, now: datetime) -> KeyRecord:
    """``record`` moved to state ``to`` at ``now``.

    Raises:
        ConflictError: the move is not allowed (a retired key never comes back).
    """
    if to not in _MOVES[record.state]:
        raise ConflictError(f"key {record.keyid[:16]} is {record.state}; it cannot become {to}")
    retired = now if to is KeyState.RETIRED else record.retired
    return replace(record, state=to, retired=retired)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of the hub.

    Attributes:
        keyid: the TUF key id (sha256 of the canonical public key).
        role: one of :data:`ROLES`.
        state: see :class:`KeyState`.
        created: when the record was made (UTC).
        retired: when it was retired (UTC), else None.
        public: the securesystemslib public key dict (``keytype``, ``scheme``, ``keyval``).
        location: ``file:<name in the key folder>``, ``uri:<signer URI>`` or ``offline``.
    """

    keyid: str
    role: str
    state: KeyState
    created: datetime
    public: dict[str, Any] = field(hash=False)
    location: str = OFFLINE
    retired: datetime | None = None

    @property
    def public_key(self) -> Key:
        """The public key as a securesystemslib :class:`Key`."""
        return SSlibKey.from_dict(self.keyid, dict(self.public))

    @property
    def file(self) -> str | None:
        """The private key's file name in the key folder, or None."""
        kind, _, rest = self.location.partition(":")
        return rest if kind == "file" else None

    @property
    def uri(self) -> str | None:
        """The securesystemslib signer URI of the private key, or None."""
        kind, _, rest = self.location.partition(":")
        return rest if kind == "uri" else None

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in ``registry.json``."""
        return {
            "keyid": self.keyid,
            "role": self.role,
            "state": self.state.value,
            "created": _iso(self.created),
            "retired": _iso(self.retired) if self.retired else None,
            "location": self.location,
            "public": dict(self.public),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyRecord:
        """Parse a stored record.

        Raises:
            ConfigError: a field is missing or malformed.
        """
        try:
            record = cls(
                keyid=str(data["keyid"]),
                role=str(data["role"]),
                state=KeyState(data["state"]),
                created=_parse_time(data["created"]),
                retired=_parse_time(data["retired"]) if data.get("retired") else None,
                location=str(data.get("location") or OFFLINE),
                public=dict(data["public"]),
            )
            if record.public_key.keyid != record.keyid:
                raise ValueError("key id does not match the public key")
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"key registry record is malformed: {e}") from e
        if record.role not in ROLES:
            raise ConfigError(f"key registry record has an unknown role {record.role!r}")
        return record


class KeyRegistry:
    """The records of one key folder, loaded in memory; :meth:`save` writes them back.

    Not safe for concurrent writers on its own: the caller holds the trust store's lock.
    """

    def __init__(self, key_dir: Path, records: Iterable[KeyRecord] = ()) -> None:
        self.key_dir = Path(key_dir)
        self._records: dict[str, KeyRecord] = {r.keyid: r for r in records}

    @property
    def path(self) -> Path:
        """The registry file."""
        return self.key_dir / REGISTRY_FILE

    @classmethod
    def load(cls, key_dir: Path) -> KeyRegistry:
        """Read ``key_dir/registry.json``, or adopt a legacy folder of ``<role>.pem`` files.

        Raises:
            ConfigError: the registry is unreadable or malformed, or a legacy key file is
                encrypted (a registry always exists next to encrypted keys).
        """
        registry = cls(key_dir)
        try:
            text = registry.path.read_text("utf-8")
        except FileNotFoundError:
            registry._adopt_legacy()
            return registry
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read key registry {registry.path}: {e}") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"key registry {registry.path} is not JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
            raise ConfigError(f"key registry {registry.path}: expected format {REGISTRY_FORMAT}")
        keys = data.get("keys")
        if not isinstance(keys, list):
            raise ConfigError(f"key registry {registry.path}: 'keys' must be a list")
        for item in keys:
            if not isinstance(item, dict):
                raise ConfigError(f"key registry {registry.path}: a key is not an object")
            record = KeyRecord.from_dict(item)
            registry._records[record.keyid] = record
        return registry

    def save(self) -> None:
        """Write the registry atomically (mode 0600).

        Raises:
            StorageError: the file could not be written.
        """
        body = {"format": REGISTRY_FORMAT, "keys": [r.to_dict() for r in self.records()]}
        atomic_write_text(self.path, json.dumps(body, indent=2, sort_keys=True) + "\n", 0o600)

    # -- queries -----------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every record, by role (in :data:`ROLES` order), then creation time."""
        return sorted(self._records.values(), key=lambda r: (ROLES.index(r.role), r.created))

    def get(self, keyid: str) -> KeyRecord:
        """The record of ``keyid``; a unique prefix of at least 8 hex digits will do.

        Raises:
            InvalidInputError: the prefix is shorter than 8 or matches several keys.
            NotFoundError: no such key.
        """
        if keyid in self._records:
            return self._records[keyid]
        if len(keyid) < 8:
            raise InvalidInputError(f"key id {keyid!r}: give at least 8 hex digits")
        found = [r for k, r in self._records.items() if k.startswith(keyid)]
        if len(found) > 1:
            raise InvalidInputError(f"key id prefix {keyid!r} matches {len(found)} keys")
        if not found:
            raise NotFoundError(f"no key {keyid!r} in {self.path}")
        return found[0]

    def active(self, role: str) -> list[KeyRecord]:
        """The active keys of ``role``, oldest first."""
        return [r for r in self.records() if r.role == role and r.state is KeyState.ACTIVE]

    def pending(self) -> list[KeyRecord]:
        """Keys waiting for a root that lists them."""
        return [r for r in self.records() if r.state is KeyState.PENDING]

    # -- changes -----------------------------------------------------------------------

    def put(self, record: KeyRecord) -> None:
        """Add or replace a record (in memory; :meth:`save` writes it).

        Raises:
            InvalidInputError: unknown role.
        """
        if record.role not in ROLES:
            raise InvalidInputError(f"unknown key role {record.role!r}; one of {', '.join(ROLES)}")
        self._records[record.keyid] = record

    def _adopt_legacy(self) -> None:
        for role in ROLES:
            path = self.key_dir / f"{role}.pem"
            try:
                pem = path.read_bytes()
                created = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
            except OSError:
                continue
            try:
                public = CryptoSigner(load_pem_private_key(pem, password=None)).public_key
            except TypeError as e:
                raise ConfigError(
                    f"signing key {path} is encrypted but {self.path} is missing"
                ) from e
            except ValueError:
                continue  # a corrupt file: reported when the signer is loaded
            self._records[public.keyid] = KeyRecord(
                keyid=public.keyid,
                role=role,
                state=KeyState.ACTIVE,
                created=created,
                public=public_dict(public),
                location=f"file:{path.name}",
            )


def public_dict(key: Key) -> dict[str, Any]:
    """The stored form of a public key (``keytype``, ``scheme``, ``keyval``)."""
    data = key.to_dict()
    return {k: data[k] for k in ("keytype", "scheme", "keyval")}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime:
    t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no zone")
    return t.astimezone(UTC)
