"""Pure steps of the update cycle: data in, decisions out (no I/O, no clock, no lock).

The updater (:mod:`modelfleet.agent.updater`) is the shell: it fetches, installs and
switches around these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelfleet.agent.plan import plan_slots, slot_key
from modelfleet.agent.state import (
    AgentState,
    ModelSlots,
    PendingInstall,
    Refusal,
    RollbackRecord,
    SlotRecord,
)
from modelfleet.errors import InvalidInputError, MetadataExpiredError
from modelfleet.rollout.assignment import Rollback, Slots, roll_back
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState, Mode

__all__ = [
    "Screened",
    "describe_pending",
    "describe_switch",
    "expired_status",
    "needs_work",
    "pending_after",
    "rollback_record",
    "rollback_slots",
    "screen_desired",
    "to_install",
    "to_slots",
    "update_status",
    "used_slot_keys",
]


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


def to_install(desired: DesiredState, state: AgentState) -> list[ArtefactRef]:
    """The versions ``desired`` needs that are not installed (each once)."""
    seen: dict[str, ArtefactRef] = {}
    for assignment in desired.assignments:
        current = state.models.get(assignment.model, ModelSlots())
        plan = plan_slots(current, assignment, desired.serial, state.refused, state.rolled_back)
        for ref in plan.to_install:
            seen.setdefault(slot_key(ref.sha256, ref.version), ref)
    return list(seen.values())


def pending_after(
    failed: Sequence[tuple[ArtefactRef, str]], before: Sequence[PendingInstall], serial: int
) -> list[PendingInstall]:
    """The retry records after an attempt: one per failed version, attempts counted on."""
    attempts = {slot_key(p.sha256, p.version): p.attempts for p in before}
    return [
        PendingInstall(
            ref.model,
            ref.version,
            ref.sha256,
            serial,
            attempts.get(slot_key(ref.sha256, ref.version), 0) + 1,
            reason,
        )
        for ref, reason in failed
    ]


def update_status(
    serial: int,
    pending: Sequence[PendingInstall],
    retry_in_s: float | None,
    last_refusal: Refusal | None,
) -> str:
    """One line for people: ``retrying: …``, ``refused: …`` or ``up to date (serial N)``."""
    parts: list[str] = []
    if pending:
        parts.append(describe_pending(list(pending), retry_in_s))
    if last_refusal is not None and last_refusal.serial == serial:
        r = last_refusal
        parts.append(f"refused: {r.model} v{r.version}: {r.reason}")
    return "; ".join(parts) or f"up to date (serial {serial})"


def expired_status(error: MetadataExpiredError, models: Mapping[str, ModelSlots]) -> str:
    """The status line while metadata is expired (issue 11, ADR 0036), e.g. ``metadata
    expired (director timestamp expired 2026-03-02T00:00:00+00:00): serving m v1, no new
    installs until fresh metadata arrives (bundle import or hub)``."""
    what = " ".join(p for p in (error.repo, error.role) if p) or "metadata"
    when = f" {error.expires.isoformat()}" if error.expires is not None else ""
    serving = ", ".join(
        f"{name} v{slots.active.version}"
        for name, slots in sorted(models.items())
        if slots.active is not None
    )
    return (
        f"metadata expired ({what} expired{when}): serving {serving or 'nothing'}, "
        "no new installs until fresh metadata arrives (bundle import or hub)"
    )


def rollback_record(
    record_id: str, at: str, model: str, rollback: Rollback[SlotRecord], reason: str, serial: int
) -> RollbackRecord:
    """The structured record of a rollback (contract 2)."""
    return RollbackRecord(
        record_id,
        at,
        model,
        rollback.kind.value,
        rollback.away.version,
        rollback.to.version,
        reason,
        serial,
    )


def describe_switch(name: str, old: ModelSlots, new: ModelSlots) -> str:
    """``m: active v1 -> v2, candidate none (full), previous v1``."""

    def v(r: SlotRecord | None) -> str:
        return f"v{r.version}" if r else "none"

    share = f" {new.share:.0%}" if new.candidate else ""
    return (
        f"{name}: active {v(old.active)} -> {v(new.active)}, candidate {v(new.candidate)} "
        f"({new.mode}{share}), previous {v(new.previous)}"
    )


def used_slot_keys(models: Mapping[str, ModelSlots], keep_previous: bool) -> set[str]:
    """Slot keys of every version a model's slots name (the previous only when kept)."""
    return {
        slot_key(r.sha256, r.version)
        for s in models.values()
        for r in (s.active, s.candidate, s.previous if keep_previous else None)
        if r is not None
    }
