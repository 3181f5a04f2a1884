"""Pure steps of the update cycle: data in, decisions out (no I/O, no clock, no lock).

The updater (:mod:`modelfleet.agent.updater`) is the shell: it fetches, installs and
switches around these.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.agent.state import AgentState, ModelSlots, PendingInstall, SlotRecord
from modelfleet.errors import InvalidInputError
from modelfleet.rollout.assignment import Rollback, Slots, roll_back
from modelfleet.rollout.desired_state import DesiredState, Mode

__all__ = ["Screened", "describe_pending", "rollback_slots", "screen_desired", "to_slots"]


@dataclass(frozen=True)
class Screened:
    """A fetched desired state after the checks that need no download.

    Exactly one of ``desired`` (to apply, or already applied) and ``error`` is set, or
    neither when the director has no desired state for this device.
    """

    desired: DesiredState | None = None
    error: str = ""


def screen_desired(raw: bytes | None, device_id: str, state: AgentState) -> Screened:
    """Parse the verified bytes and refuse what must not be applied on this device."""
    if raw is None:
        return Screened()
    try:
        desired = DesiredState.from_json(raw)
    except InvalidInputError as e:
        return Screened(error=str(e))
    if desired.device_id != device_id:
        return Screened(error=f"desired state is for device {desired.device_id!r}, not this one")
    if desired.serial < state.desired_serial:
        return Screened(error=f"desired state serial {desired.serial} is older than applied")
    return Screened(desired)


def needs_work(desired: DesiredState, state: AgentState) -> bool:
    """Whether ``desired`` is not (yet) fully applied: new, or with installs to retry."""
    if state.desired is None or desired.serial != state.desired_serial:
        return True
    return desired.serial != state.applied_serial or bool(state.pending)


def to_slots(slots: ModelSlots) -> Slots[SlotRecord]:
    return Slots(slots.active, slots.candidate, slots.previous, Mode(slots.mode), slots.share)


def rollback_slots(slots: ModelSlots) -> tuple[ModelSlots, Rollback[SlotRecord]] | None:
    """The slots after a rollback by the one rule (:func:`modelfleet.rollout.assignment.roll_back`).

    After a production rollback there is no previous (no flip-back). None when there is
    nothing to roll back to.
    """
    rollback = roll_back(to_slots(slots))
    if rollback is None:
        return None
    after = rollback.slots
    new = ModelSlots(
        after.production, after.previous, after.candidate, after.mode.value, after.share, slots.slo
    )
    return new, rollback


def describe_pending(pending: list[PendingInstall], next_in_s: float | None) -> str:
    """``retrying: m v2: HTTP 503 (attempt 2, next in 8 s)`` for status."""
    parts = [f"{p.model} v{p.version}: {p.reason} (attempt {p.attempts})" for p in pending]
    when = f"; next try in {next_in_s:.0f} s" if next_in_s is not None else ""
    return "retrying: " + "; ".join(parts) + when
