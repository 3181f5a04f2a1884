"""Pure decisions of the update cycle: which versions to install and the slots that result.

No I/O here: the updater downloads what :func:`plan_slots` lists, then asks the plan to
resolve the new slots from what actually installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelfleet.agent.state import ModelSlots, SlotRecord
from modelfleet.rollout.desired_state import ArtefactRef, Assignment, Mode

__all__ = ["SlotPlan", "plan_slots", "slot_key"]


def slot_key(sha256: str, version: int | str) -> str:
    """Identity of an installed version: its bytes *and* its version number.

    Two versions may have byte-identical artefacts; they are still different versions
    (they answer with different ``model_version`` and are rolled back separately).
    """
    return f"{sha256}:{int(version)}"


def _key(rec: SlotRecord | ArtefactRef) -> str:
    return slot_key(rec.sha256, rec.version)


def _find(current: ModelSlots, ref: ArtefactRef) -> SlotRecord | None:
    for rec in (current.active, current.candidate, current.previous):
        if rec is not None and _key(rec) == _key(ref):
            return rec
    return None


def _same(a: SlotRecord | None, b: SlotRecord | None) -> bool:
    return a is not None and b is not None and _key(a) == _key(b)


@dataclass(frozen=True)
class SlotPlan:
    """What to install for one assignment, and how to resolve the slots afterwards."""

    assignment: Assignment
    production: ArtefactRef | None  # None when blocked (refused or rolled back at this serial)
    candidate: ArtefactRef | None
    to_install: tuple[ArtefactRef, ...]

    def resolve(self, current: ModelSlots, installed: Mapping[str, SlotRecord]) -> ModelSlots:
        """Return the new slots given the records of the versions that installed.

        ``installed`` is keyed by :func:`slot_key`.

        Production that failed to install leaves the active version in place; a candidate
        that failed is simply absent (production keeps serving everything).
        """

        def record(ref: ArtefactRef | None) -> SlotRecord | None:
            if ref is None:
                return None
            return _find(current, ref) or installed.get(_key(ref))

        active = record(self.production) or current.active
        if current.active is not None and active is not None:
            changed = not _same(active, current.active)
        else:
            changed = active is not current.active
        previous = current.active if changed else current.previous
        if _same(previous, active):
            previous = None
        candidate = record(self.candidate)
        if _same(candidate, active):
            candidate = None
        mode = self.assignment.mode.value if candidate is not None else Mode.FULL.value
        share = self.assignment.share if candidate is not None else 0.0
        return ModelSlots(active, previous, candidate, mode, share, dict(self.assignment.slo))


def plan_slots(
    current: ModelSlots,
    assignment: Assignment,
    serial: int,
    refused: Mapping[str, int],
    rolled_back: Mapping[str, int],
) -> SlotPlan:
    """Decide which versions of ``assignment`` must be downloaded.

    Args:
        current: the model's slots now.
        assignment: what the director wants for this model.
        serial: the desired state's serial.
        refused: sha256 -> serial at which that version was refused (not retried at
            the same serial).
        rolled_back: sha256 -> serial at which the device rolled away from it (not
            re-applied until the director issues a new serial).
    """

    def usable(ref: ArtefactRef | None) -> ArtefactRef | None:
        if ref is None:
            return None
        if refused.get(ref.sha256) == serial or rolled_back.get(ref.sha256) == serial:
            return None
        return ref

    production = usable(assignment.production)
    candidate = usable(assignment.candidate) if assignment.mode != Mode.FULL else None
    to_install = tuple(
        ref for ref in (production, candidate) if ref is not None and _find(current, ref) is None
    )
    return SlotPlan(assignment, production, candidate, to_install)
