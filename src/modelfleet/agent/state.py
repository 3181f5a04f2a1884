"""The agent's persistent state: which version is active, previous and candidate per model.

One JSON file, replaced atomically (``state.json``). It is the "active pointer" of the two
slots: switching versions is one atomic rename, so a power cut leaves either the old or the
new pointer, never a mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import StorageError

__all__ = [
    "AgentState",
    "ModelSlots",
    "PendingInstall",
    "Refusal",
    "RollbackRecord",
    "SlotRecord",
    "StateFile",
    "load_state",
    "save_state",
]

STATE_FILE = "state.json"
MAX_EVENTS = 50
#: Rollbacks kept (and sent in every check-in) until the hub acknowledges them (contract 2).
MAX_ROLLBACKS = 50
#: An unchanged state is still rewritten this often, so ``last_check`` on disk stays recent.
STATE_REFRESH_S = 300.0


@dataclass(frozen=True)
class SlotRecord:
    """One installed, verified version on disk."""

    version: int
    sha256: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotRecord:
        return cls(int(d["version"]), str(d["sha256"]), str(d["path"]))


@dataclass
class ModelSlots:
    """Active (serving), previous (kept for rollback) and candidate of one model."""

    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    candidate: SlotRecord | None = None
    mode: str = "full"
    share: float = 0.0
    slo: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "mode": self.mode,
            "share": self.share,
            "slo": self.slo,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSlots:
        def rec(key: str) -> SlotRecord | None:
            v = d.get(key)
            return SlotRecord.from_dict(v) if v else None

        return cls(
            rec("active"),
            rec("previous"),
            rec("candidate"),
            str(d.get("mode", "full")),
            float(d.get("share", 0.0)),
            dict(d.get("slo") or {}),
        )


@dataclass(frozen=True)
class Refusal:
    """Why an update was not applied."""

    at: str
    model: str
    version: int
    sha256: str
    serial: int
    reason: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "serial": self.serial,
            "reason": self.reason,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Refusal:
        return cls(
            str(d["at"]),
            str(d["model"]),
            int(d["version"]),
            str(d["sha256"]),
            int(d["serial"]),
            str(d["reason"]),
            str(d.get("kind", "")),
        )


@dataclass(frozen=True)
class RollbackRecord:
    """A rollback done on this device, reported to the hub until it acknowledges it.

    The wire format of issue 6, contract 2 (``rollbacks`` in the check-in report).
    """

    id: str
    at: str
    model: str
    kind: str  # "candidate" | "production"
    from_version: int
    to_version: int
    reason: str
    serial: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "model": self.model,
            "kind": self.kind,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reason": self.reason,
            "serial": self.serial,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RollbackRecord:
        return cls(
            str(d["id"]),
            str(d["at"]),
            str(d["model"]),
            str(d["kind"]),
            int(d["from_version"]),
            int(d["to_version"]),
            str(d.get("reason", "")),
            int(d.get("serial", 0)),
        )


@dataclass(frozen=True)
class PendingInstall:
    """A version whose install failed for a transient reason and will be retried."""

    model: str
    version: int
    sha256: str
    serial: int
    attempts: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "serial": self.serial,
            "attempts": self.attempts,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingInstall:
        return cls(
            str(d["model"]),
            int(d["version"]),
            str(d["sha256"]),
            int(d["serial"]),
            int(d.get("attempts", 0)),
            str(d.get("reason", "")),
        )


@dataclass
class AgentState:
    """Everything the agent must remember across restarts."""

    device_id: str
    applied_serial: int = 0
    desired: dict[str, Any] | None = None
    models: dict[str, ModelSlots] = field(default_factory=dict)
    last_refusal: Refusal | None = None
    refused: dict[str, int] = field(default_factory=dict)  # sha256 -> serial refused at
    rolled_back: dict[str, int] = field(default_factory=dict)  # sha256 -> serial pinned away
    last_check: str = ""
    last_error: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Versions of the desired state that failed to install and are being retried.
    pending: list[PendingInstall] = field(default_factory=list)
    #: One line for people: "up to date", "retrying: …", "refused: …", "downloading: …".
    update_status: str = ""
    #: Rollbacks not yet acknowledged by the hub (newest last, at most MAX_ROLLBACKS).
    rollbacks: list[RollbackRecord] = field(default_factory=list)

    def add_event(self, at: str, kind: str, message: str) -> None:
        self.events.append({"at": at, "kind": kind, "message": message})
        del self.events[:-MAX_EVENTS]

    def add_rollback(self, record: RollbackRecord) -> None:
        self.rollbacks.append(record)
        del self.rollbacks[:-MAX_ROLLBACKS]

    def acknowledge_rollbacks(self, ids: set[str]) -> bool:
        """Drop the rollbacks the hub has applied; whether any was dropped."""
        kept = [r for r in self.rollbacks if r.id not in ids]
        dropped = len(kept) != len(self.rollbacks)
        self.rollbacks = kept
        return dropped

    @property
    def desired_serial(self) -> int:
        """Serial of the newest desired state accepted (applied or still being applied)."""
        if self.desired is None:
            return self.applied_serial
        return int(self.desired.get("serial", self.applied_serial))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "applied_serial": self.applied_serial,
            "desired": self.desired,
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "last_refusal": self.last_refusal.to_dict() if self.last_refusal else None,
            "refused": self.refused,
            "rolled_back": self.rolled_back,
            "last_check": self.last_check,
            "last_error": self.last_error,
            "events": self.events,
            "pending": [p.to_dict() for p in self.pending],
            "update_status": self.update_status,
            "rollbacks": [r.to_dict() for r in self.rollbacks],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        lr = d.get("last_refusal")
        return cls(
            device_id=str(d["device_id"]),
            applied_serial=int(d.get("applied_serial", 0)),
            desired=d.get("desired"),
            models={k: ModelSlots.from_dict(v) for k, v in (d.get("models") or {}).items()},
            last_refusal=Refusal.from_dict(lr) if lr else None,
            refused={str(k): int(v) for k, v in (d.get("refused") or {}).items()},
            rolled_back={str(k): int(v) for k, v in (d.get("rolled_back") or {}).items()},
            last_check=str(d.get("last_check", "")),
            last_error=str(d.get("last_error", "")),
            events=list(d.get("events") or []),
            pending=[PendingInstall.from_dict(p) for p in d.get("pending") or []],
            update_status=str(d.get("update_status", "")),
            rollbacks=[RollbackRecord.from_dict(r) for r in d.get("rollbacks") or []],
        )


def load_state(state_dir: Path, device_id: str) -> AgentState:
    """Read ``state.json``; a fresh state if there is none.

    Raises:
        StorageError: the file exists but is unreadable or corrupt.
    """
    path = Path(state_dir) / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AgentState(device_id=device_id)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return AgentState.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StorageError(f"agent state {path} is corrupt: {e}") from e


def save_state(state_dir: Path, state: AgentState) -> None:
    """Write ``state.json`` atomically (temp file, fsync, rename)."""
    atomic_write_bytes(
        Path(state_dir) / STATE_FILE,
        orjson.dumps(state.to_dict(), option=orjson.OPT_INDENT_2),
        mode=0o600,
    )


def read_state_file(state_dir: Path) -> dict[str, Any] | None:
    """Return the raw state dict for display, or None when the agent never ran here."""
    with contextlib.suppress(FileNotFoundError):
        data = orjson.loads((Path(state_dir) / STATE_FILE).read_bytes())
        return data if isinstance(data, dict) else None
    return None


class StateFile:
    """Writes ``state.json`` when the state changed, and at least every ``refresh_s``.

    The time of the last check alone does not count as a change, so an idle device does
    not rewrite and fsync its flash every poll.
    """

    def __init__(
        self, state_dir: Path, monotonic: Callable[[], float], refresh_s: float = STATE_REFRESH_S
    ) -> None:
        self.state_dir = Path(state_dir)
        self._monotonic = monotonic
        self._refresh_s = refresh_s
        self._key = b""
        self._at = float("-inf")

    def save(self, state: AgentState) -> None:
        content = state.to_dict()
        content.pop("last_check", None)
        key = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        now = self._monotonic()
        if key == self._key and now - self._at < self._refresh_s:
            return
        save_state(self.state_dir, state)
        self._key = key
        self._at = now
