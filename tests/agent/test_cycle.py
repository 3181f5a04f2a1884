"""The update cycle's pure steps: screening, whether work is left, status lines, rollback."""

from __future__ import annotations

import pytest

from modelfleet.agent.cycle import (
    needs_work,
    pending_after,
    rollback_slots,
    screen_desired,
    update_status,
)
from modelfleet.agent.state import AgentState, ModelSlots, PendingInstall, Refusal, SlotRecord
from modelfleet.rollout.desired_state import ArtefactRef, Assignment, DesiredState

REF = ArtefactRef("m", 2, "a" * 64, 10, "b" * 64, 5)
V1 = SlotRecord(1, "1" * 64, "/s/1")
V2 = SlotRecord(2, "2" * 64, "/s/2")


def desired(serial: int, device: str = "dev-1") -> DesiredState:
    return DesiredState(device, serial, (Assignment("m", REF),))


def state(applied: int, accepted: int | None, pending: int = 0) -> AgentState:
    s = AgentState("dev-1", applied_serial=applied)
    if accepted is not None:
        s.desired = {"serial": accepted, "assignments": []}
    s.pending = [PendingInstall("m", 2, REF.sha256, accepted or 0, 1, "HTTP 503")] * pending
    return s


@pytest.mark.parametrize(
    ("raw", "current", "error"),
    [
        (desired(3, "other").to_json(), state(1, 1), "not this one"),
        (desired(1).to_json(), state(2, 2), "older than applied"),
        (desired(2).to_json(), state(1, 3), "older than applied"),  # older than one accepted
        (b"{not json", state(0, None), "desired state"),
    ],
    ids=["other-device", "older-than-applied", "older-than-accepted", "malformed"],
)
def test_desired_states_that_must_not_be_applied_are_screened_out(
    raw: bytes, current: AgentState, error: str
) -> None:
    screened = screen_desired(raw, "dev-1", current)
    assert screened.desired is None and error in screened.error


@pytest.mark.parametrize(
    ("serial", "current", "work"),
    [
        (2, state(1, 1), True),  # new serial
        (1, state(1, 1), False),  # applied, nothing pending
        (2, state(1, 2, pending=1), True),  # accepted, an install to retry
        (2, state(1, 2), True),  # accepted but never finished (power cut mid-download)
        (1, state(0, None), True),  # first desired state ever
    ],
    ids=["new", "applied", "retry", "interrupted", "first"],
)
def test_a_serial_is_done_only_when_every_version_installed_or_was_refused(
    serial: int, current: AgentState, work: bool
) -> None:
    assert needs_work(desired(serial), current) is work


def test_attempts_count_on_across_retries_of_the_same_version() -> None:
    first = pending_after([(REF, "HTTP 503")], [], 4)
    again = pending_after([(REF, "timed out")], first, 4)
    assert [(p.attempts, p.reason, p.serial) for p in again] == [(2, "timed out", 4)]


def test_status_line_says_retrying_or_refused_or_up_to_date() -> None:
    pending = pending_after([(REF, "HTTP 503")], [], 4)
    assert update_status(4, pending, 8.0, None) == (
        "retrying: m v2: HTTP 503 (attempt 1); next try in 8 s"
    )
    refusal = Refusal("t", "m", 3, "c" * 64, 4, "hash mismatch", "trust")
    assert update_status(4, [], None, refusal) == "refused: m v3: hash mismatch"
    assert update_status(5, [], None, refusal) == "up to date (serial 5)"  # an older refusal


@pytest.mark.parametrize(
    ("slots", "kind", "after"),
    [
        (ModelSlots(V1, None, V2, "split", 0.5), "candidate", ModelSlots(V1, None, None)),
        (ModelSlots(V2, V1), "production", ModelSlots(V1, None, None)),  # no previous after
    ],
    ids=["candidate", "production"],
)
def test_rollback_follows_the_one_rule(slots: ModelSlots, kind: str, after: ModelSlots) -> None:
    result = rollback_slots(slots)
    assert result is not None
    new, rollback = result
    assert rollback.kind.value == kind and new == after


def test_nothing_to_roll_back_to() -> None:
    assert rollback_slots(ModelSlots(V1)) is None


def test_a_state_file_from_before_rollback_records_still_loads() -> None:
    old = {"device_id": "dev-1", "applied_serial": 3, "models": {}, "events": []}
    loaded = AgentState.from_dict(old)
    assert loaded.rollbacks == [] and loaded.pending == [] and loaded.update_status == ""
