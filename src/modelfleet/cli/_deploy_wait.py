"""``deploy --wait``: has every device of a deployment come to serve the version?

Pure: the deploy answer and the hub's device views in, one :class:`DeviceWait` per device
out. A device *serves* the version when its last report shows it in the slot the deploy
put it in (``active`` for a full deploy, ``candidate`` for split and shadow) and it has
applied the desired state the deploy signed (``applied_serial``). It has *failed* when it
refused that desired state, rolled the version back (reported, or applied by the hub), or
the hub no longer assigns it the version; waiting longer cannot help those.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.cli._rollout_view import time_text
from modelfleet.errors import ModelfleetError

__all__ = ["DeployWaitError", "DeviceWait", "WaitState", "describe_laggards", "wait_states"]


class DeployWaitError(ModelfleetError):
    """A deploy was made but not every device came to serve it (timeout or failure)."""


class WaitState(enum.StrEnum):
    SERVING = "serving"
    PENDING = "pending"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"
    REASSIGNED = "reassigned"
    GONE = "gone"

    @property
    def failed(self) -> bool:
        return self not in (WaitState.SERVING, WaitState.PENDING)


@dataclass(frozen=True)
class DeviceWait:
    """Where one device stands; ``detail`` says why, for people."""

    device_id: str
    state: WaitState
    detail: str


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _slot_version(report: Mapping[str, Any], model: str, slot: str) -> int | None:
    models = report.get("models")
    slots = models.get(model) if isinstance(models, Mapping) else None
    record = slots.get(slot) if isinstance(slots, Mapping) else None
    return _int(record.get("version")) if isinstance(record, Mapping) else None


def _assignment(device: Mapping[str, Any], model: str) -> Mapping[str, Any] | None:
    for a in device.get("assignments") or []:
        if isinstance(a, Mapping) and a.get("model") == model:
            return a
    return None


def _refused_or_rolled_back(
    report: Mapping[str, Any], model: str, version: int, serial: int | None
) -> tuple[WaitState, str] | None:
    """What the device itself says went wrong with this deploy (not an older one)."""

    def this_deploy(entry: Mapping[str, Any]) -> bool:
        at = _int(entry.get("serial"))
        return serial is None or at is None or at >= serial

    refusal = report.get("last_refusal")
    if (
        isinstance(refusal, Mapping)
        and refusal.get("model") == model
        and _int(refusal.get("version")) == version
        and this_deploy(refusal)
    ):
        return WaitState.REFUSED, f"refused v{version}: {refusal.get('reason') or 'no reason'}"
    for event in report.get("rollbacks") or []:
        if (
            isinstance(event, Mapping)
            and event.get("model") == model
            and _int(event.get("from_version")) == version
            and this_deploy(event)
        ):
            why = event.get("reason") or "its local guard"
            return (
                WaitState.ROLLED_BACK,
                f"rolled v{version} back to v{event.get('to_version')}: {why}",
            )
    return None


def _device_state(
    device: Mapping[str, Any] | None, model: str, version: int, mode: str, serial: int | None
) -> tuple[WaitState, str]:
    if device is None:
        return WaitState.GONE, "no longer enrolled"
    raw = device.get("report")
    report: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    failed = _refused_or_rolled_back(report, model, version, serial)
    if failed is not None:
        return failed
    a = _assignment(device, model)
    if a is None or _int(a.get("production" if mode == "full" else "candidate")) != version:
        rollout = str(a.get("rollout_id") or "") if a is not None else ""
        now = f"v{a.get('production')}" if a is not None else "nothing"
        if rollout.startswith("device-rollback"):
            return WaitState.ROLLED_BACK, f"rolled v{version} back, now assigned {now}"
        return WaitState.REASSIGNED, f"the hub now assigns {now} ({rollout or 'another change'})"
    applied = _int(report.get("applied_serial"))
    fresh = serial is None or (applied is not None and applied >= serial)
    slot = "active" if mode == "full" else "candidate"
    served = _slot_version(report, model, slot)
    if served == version and fresh:
        return WaitState.SERVING, f"serving v{version}"
    if not report:
        return WaitState.PENDING, "has not reported yet"
    parts = [f"{slot} v{served}" if served is not None else f"no {slot} version"]
    if not fresh:
        parts.append(f"applied serial {applied if applied is not None else '-'} < {serial}")
    status = report.get("update_status")
    if isinstance(status, str) and status and not status.startswith("up to date"):
        parts.append(status)
    if device.get("last_seen"):
        parts.append(f"last seen {time_text(device['last_seen'])}")
    return WaitState.PENDING, ", ".join(parts)


def wait_states(
    deployed: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]
) -> list[DeviceWait]:
    """Where each device of the deploy answer ``deployed`` stands, given the hub's current
    device views (``GET /api/v1/devices``), in the deploy's device order."""
    model = str(deployed.get("model"))
    version = _int(deployed.get("version"))
    mode = str(deployed.get("mode") or "full")
    by_id = {str(d.get("id")): d for d in devices if isinstance(d, Mapping)}
    out = []
    for entry in deployed.get("devices") or []:
        device_id = str(entry.get("device_id"))
        state, detail = _device_state(
            by_id.get(device_id), model, version or 0, mode, _int(entry.get("serial"))
        )
        out.append(DeviceWait(device_id, state, detail))
    return out


def describe_laggards(states: Sequence[DeviceWait], limit: int = 5) -> str:
    """``dev-a (refused v3: …), dev-b (has not reported yet) and 3 more``."""
    bad = [s for s in states if s.state is not WaitState.SERVING]
    text = ", ".join(f"{s.device_id} ({s.detail})" for s in bad[:limit])
    return f"{text} and {len(bad) - limit} more" if len(bad) > limit else text
