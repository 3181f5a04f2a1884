"""Desired state: what the director tells one device to run.

Signed into the director repository as the target ``devices/<device id>/desired-state.json``.
The artefact digests inside bind the director's word to the catalog's: a device installs an
artefact only when the catalog's signed hashes equal the ones named here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from modelfleet.errors import InvalidInputError

__all__ = [
    "DESIRED_STATE_FORMAT",
    "ArtefactRef",
    "Assignment",
    "DesiredState",
    "Mode",
    "desired_state_target_path",
    "manifest_target_path",
    "model_target_path",
]

DESIRED_STATE_FORMAT = "modelfleet.desired-state/v1"


class Mode(StrEnum):
    """How a device uses the candidate of an assignment."""

    FULL = "full"  # the candidate replaces production (no candidate kept)
    SPLIT = "split"  # a sticky share of requests goes to the candidate
    SHADOW = "shadow"  # the candidate sees a mirrored sample; callers get production only


def model_target_path(name: str, version: int) -> str:
    """Catalog target path of a version's ONNX artefact."""
    return f"models/{name}/{version}/model.onnx"


def manifest_target_path(name: str, version: int) -> str:
    """Catalog target path of a version's package manifest."""
    return f"models/{name}/{version}/manifest.json"


def desired_state_target_path(device_id: str) -> str:
    """Director target path of a device's desired state."""
    return f"devices/{device_id}/desired-state.json"


@dataclass(frozen=True, slots=True)
class ArtefactRef:
    """One signed package version, as the director names it."""

    model: str
    version: int
    sha256: str
    length: int
    manifest_sha256: str
    manifest_length: int

    @property
    def model_path(self) -> str:
        return model_target_path(self.model, self.version)

    @property
    def manifest_path(self) -> str:
        return manifest_target_path(self.model, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "length": self.length,
            "manifest_sha256": self.manifest_sha256,
            "manifest_length": self.manifest_length,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtefactRef:
        return cls(
            str(d["model"]),
            int(d["version"]),
            str(d["sha256"]),
            int(d["length"]),
            str(d["manifest_sha256"]),
            int(d["manifest_length"]),
        )


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one model on one device should be: production, an optional candidate, how to mix."""

    model: str
    production: ArtefactRef
    candidate: ArtefactRef | None = None
    mode: Mode = Mode.FULL
    share: float = 0.0
    slo: dict[str, float] = field(default_factory=dict)
    rollout_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "production": self.production.to_dict(),
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "mode": self.mode.value,
            "share": self.share,
            "slo": dict(self.slo),
            "rollout_id": self.rollout_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Assignment:
        cand = d.get("candidate")
        share = float(d.get("share", 0.0))
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share {share} outside [0, 1]")
        return cls(
            model=str(d["model"]),
            production=ArtefactRef.from_dict(d["production"]),
            candidate=ArtefactRef.from_dict(cand) if cand else None,
            mode=Mode(d.get("mode", "full")),
            share=share,
            slo={str(k): float(v) for k, v in (d.get("slo") or {}).items()},
            rollout_id=str(d.get("rollout_id", "")),
        )


@dataclass(frozen=True)
class DesiredState:
    """The director's instruction to one device; ``serial`` grows with every change."""

    device_id: str
    serial: int
    assignments: tuple[Assignment, ...]
    issued_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def assignment(self, model: str) -> Assignment | None:
        for a in self.assignments:
            if a.model == model:
                return a
        return None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                **self.extra,
                "format": DESIRED_STATE_FORMAT,
                "device_id": self.device_id,
                "serial": self.serial,
                "issued_at": self.issued_at,
                "assignments": [a.to_dict() for a in self.assignments],
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> DesiredState:
        """Parse desired-state bytes.

        Raises:
            InvalidInputError: not JSON, wrong format, or a malformed field.
        """
        try:
            d = orjson.loads(raw)
            if not isinstance(d, dict) or d.get("format") != DESIRED_STATE_FORMAT:
                raise ValueError(f"unsupported desired-state format {d.get('format')!r}")
            known = {"format", "device_id", "serial", "issued_at", "assignments"}
            return cls(
                device_id=str(d["device_id"]),
                serial=int(d["serial"]),
                assignments=tuple(Assignment.from_dict(a) for a in d["assignments"]),
                issued_at=str(d.get("issued_at", "")),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"malformed desired state: {e}") from e
