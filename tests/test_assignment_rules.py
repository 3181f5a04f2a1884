"""The one deployment/rollback rule (modelfleet.rollout.assignment)."""

from __future__ import annotations

import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.assignment import RollbackKind, Slots, deploy, roll_back
from modelfleet.rollout.desired_state import Mode


def test_full_deploy_keeps_the_replaced_production_as_rollback_target() -> None:
    s = deploy(deploy(None, 1, Mode.FULL), 2, Mode.FULL)
    assert (s.production, s.previous, s.candidate) == (2, 1, None)


def test_redeploying_production_keeps_previous() -> None:
    s = deploy(Slots(2, None, 1), 2, Mode.FULL)
    assert (s.production, s.previous) == (2, 1)


def test_split_adds_a_candidate_and_keeps_production() -> None:
    s = deploy(Slots(1), 2, Mode.SPLIT, 0.5)
    assert (s.production, s.candidate, s.mode, s.share) == (1, 2, Mode.SPLIT, 0.5)


@pytest.mark.parametrize(
    ("slots", "version", "share"),
    [
        (None, 1, 0.5),  # nothing in production
        (Slots(1), 1, 0.5),  # candidate equal to production
        (Slots(1), 2, 0.0),  # share out of range
        (Slots(1), 2, float("nan")),
    ],
    ids=["no-production", "same-as-production", "zero-share", "nan-share"],
)
def test_bad_candidate_deploys_are_refused(
    slots: Slots[int] | None, version: int, share: float
) -> None:
    with pytest.raises(InvalidInputError):
        deploy(slots, version, Mode.SHADOW, share)


def test_rollback_drops_a_candidate_first() -> None:
    rb = roll_back(Slots(2, 3, 1, Mode.SPLIT, 0.1))
    assert rb is not None
    assert rb.kind is RollbackKind.CANDIDATE and (rb.away, rb.to) == (3, 2)
    assert rb.slots == Slots(2, None, 1, Mode.FULL, 0.0)


def test_rollback_of_production_goes_to_previous_and_does_not_flip_back() -> None:
    rb = roll_back(Slots(2, None, 1))
    assert rb is not None
    assert rb.kind is RollbackKind.PRODUCTION and (rb.away, rb.to) == (2, 1)
    assert rb.slots == Slots(1)
    assert roll_back(rb.slots) is None


def test_nothing_to_roll_back_to() -> None:
    assert roll_back(Slots(1)) is None
    assert roll_back(Slots[int](None)) is None
