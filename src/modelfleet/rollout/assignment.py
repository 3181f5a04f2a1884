"""Pure deployment and rollback transitions: slots in, new slots out.

The one place the rules live. The hub applies them to its assignment rows (version
numbers), the agent's updater and local guard to its installed slots (slot records): the
same rule on both ends, so the hub's view of a device never drifts from the device's.

No I/O, no clock. Items are compared with ``==``; pass values whose equality means
"the same version" (version numbers, or slot records of one version).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Generic, TypeVar

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.desired_state import Mode

__all__ = ["Rollback", "RollbackKind", "Slots", "deploy", "roll_back"]

T = TypeVar("T")


@dataclass(frozen=True)
class Slots(Generic[T]):
    """What one model has on one device.

    Attributes:
        production: the version serving every request not given to the candidate.
        candidate: a version under test (split or shadow), or None.
        previous: the version production replaced, the target of a rollback, or None.
        mode: ``full`` when there is no candidate, else how the candidate is used.
        share: the candidate's share of requests (split) or mirrored sample (shadow).
    """

    production: T | None
    candidate: T | None = None
    previous: T | None = None
    mode: Mode = Mode.FULL
    share: float = 0.0


class RollbackKind(StrEnum):
    """What a rollback took away."""

    CANDIDATE = "candidate"  # the candidate is dropped; production keeps serving
    PRODUCTION = "production"  # production goes back to the previous version


@dataclass(frozen=True)
class Rollback(Generic[T]):
    """The result of :func:`roll_back`.

    Attributes:
        slots: the slots after the rollback (always ``full``, no candidate).
        kind: whether a candidate was dropped or production went back.
        away: the version rolled away from.
        to: the version that now serves everything.
    """

    slots: Slots[T]
    kind: RollbackKind
    away: T
    to: T


def roll_back(slots: Slots[T]) -> Rollback[T] | None:
    """The rollback rule.

    A model with a candidate drops it and production keeps serving (its previous is
    untouched). Otherwise production goes back to the previous version, and there is no
    previous any more: a second rollback does not flip back to the version just left.

    Returns:
        The rollback, or None when there is nothing to go back to.
    """
    if slots.production is None:
        return None
    if slots.candidate is not None:
        after = Slots(slots.production, None, slots.previous, Mode.FULL, 0.0)
        return Rollback(after, RollbackKind.CANDIDATE, slots.candidate, slots.production)
    if slots.previous is not None:
        after = Slots(slots.previous, None, None, Mode.FULL, 0.0)
        return Rollback(after, RollbackKind.PRODUCTION, slots.production, slots.previous)
    return None


def deploy(slots: Slots[T] | None, version: T, mode: Mode, share: float = 0.0) -> Slots[T]:
    """The slots after deploying ``version`` in ``mode``.

    ``full`` makes it production; the production it replaces becomes previous (the
    rollback target) and any candidate is dropped. ``split`` and ``shadow`` keep
    production and add the version as candidate with ``share`` in (0, 1].

    Raises:
        InvalidInputError: split/shadow with no production, with the production version
            itself, or a share outside (0, 1].
    """
    current = slots if slots is not None else Slots[T](None)
    if mode is Mode.FULL:
        if current.production == version:
            return Slots(version, None, current.previous, Mode.FULL, 0.0)
        return Slots(version, None, current.production, Mode.FULL, 0.0)
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise InvalidInputError(f"share must be in (0, 1] for {mode.value}, got {share}")
    if current.production is None:
        raise InvalidInputError(f"{mode.value} needs a production version first")
    if current.production == version:
        raise InvalidInputError(f"version {version} is already production")
    return replace(current, candidate=version, mode=mode, share=share)
