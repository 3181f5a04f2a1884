"""The pure rule of issue 11 (ADR 0034): which install failures are pinned to the serial,
which are refused and retried (bad bytes), and when a retry is due."""

from __future__ import annotations

import pytest

from modelfleet.agent.plan import plan_slots
from modelfleet.agent.refusals import (
    FailureKind,
    failure_kind,
    refusal_after_install,
    refusal_kind,
    retry_due,
)
from modelfleet.agent.state import ModelSlots, Refusal
from modelfleet.errors import (
    ArtefactVerificationError,
    CompatibilityError,
    CorruptDeliveryError,
    DeadlineExceededError,
    InvalidInputError,
    MetadataExpiredError,
    MetadataVerificationError,
    RefusedUpdateError,
    SmokeTestError,
    StorageError,
    TransportError,
)
from modelfleet.rollout.desired_state import ArtefactRef, Assignment

REF = ArtefactRef("m", 2, "a" * 64, 10, "b" * 64, 5)


@pytest.mark.parametrize(
    ("error", "kind", "refusal"),
    [
        (CorruptDeliveryError("artefact m/2: hash mismatch"), FailureKind.DELIVERY, "delivery"),
        (CorruptDeliveryError("longer than its signed length"), FailureKind.DELIVERY, "delivery"),
        (ArtefactVerificationError("not in the catalog"), FailureKind.REFUSED, "trust"),
        (ArtefactVerificationError("director and catalog disagree"), FailureKind.REFUSED, "trust"),
        (MetadataVerificationError("signature verification failed"), FailureKind.REFUSED, "trust"),
        (CompatibilityError("needs a GPU"), FailureKind.REFUSED, "trust"),
        (SmokeTestError("outputs differ"), FailureKind.REFUSED, "check"),
        (RefusedUpdateError("guard rolled it back"), FailureKind.REFUSED, "check"),
        (InvalidInputError("malformed target"), FailureKind.REFUSED, "check"),
        (TransportError("HTTP 503"), FailureKind.TRANSIENT, "check"),
        (DeadlineExceededError("too slow"), FailureKind.TRANSIENT, "check"),
        (StorageError("disk full"), FailureKind.TRANSIENT, "check"),
        (MetadataExpiredError("catalog timestamp expired"), FailureKind.TRANSIENT, "trust"),
    ],
    ids=[
        "hash-mismatch", "too-long", "not-in-catalog", "director-catalog-disagree",
        "bad-signature", "other-hardware", "smoke-failed", "refused-update", "malformed",
        "unreachable", "deadline", "disk-full", "metadata-expired-awaits-fresh-metadata",
    ],
)  # fmt: skip
def test_only_bad_bytes_are_refused_and_retried(
    error: Exception, kind: FailureKind, refusal: str
) -> None:
    assert failure_kind(error) is kind
    if kind is not FailureKind.TRANSIENT:
        assert refusal_kind(error) == refusal


@pytest.mark.parametrize(
    ("now", "retry_at", "then", "medium", "due"),
    [
        (5.0, 10.0, None, None, False),  # online: backoff not over
        (10.0, 10.0, None, None, True),  # online: backoff over
        (5.0, 10.0, "a", "a", False),  # same stick: wait
        (5.0, 10.0, "a", "b", True),  # a re-made stick: now
        (5.0, 10.0, None, "b", False),  # no earlier fingerprint to compare with
        (5.0, 10.0, "a", None, False),  # the folder could not be looked at: the timer decides
        (11.0, 10.0, "a", "a", True),  # same stick, backoff over: tried again (capped)
    ],
    ids=[
        "online-wait", "online-due", "same-stick", "new-stick", "no-then", "no-now",
        "same-stick-due",
    ],
)  # fmt: skip
def test_a_retry_is_due_after_its_backoff_or_when_the_folder_changed(
    now: float, retry_at: float, then: str | None, medium: str | None, due: bool
) -> None:
    assert retry_due(now, retry_at, then, medium) is due


def _refusal(kind: str, sha256: str = REF.sha256) -> Refusal:
    return Refusal("t", "m", 2, sha256, 4, "artefact m/2: hash mismatch", kind)


@pytest.mark.parametrize(
    ("last", "installed", "kept"),
    [
        (_refusal("delivery"), [REF.sha256], False),  # the same artefact installed
        (_refusal("delivery"), ["c" * 64], True),  # something else installed
        (_refusal("delivery"), [], True),  # nothing installed
        (_refusal("trust"), [REF.sha256], True),  # deterministic: stays
        (None, [REF.sha256], False),
    ],
    ids=["delivery-installed", "other-installed", "none-installed", "deterministic", "none"],
)
def test_status_says_the_last_refusal_until_that_artefact_installs(
    last: Refusal | None, installed: list[str], kept: bool
) -> None:
    assert refusal_after_install(last, installed) is (last if kept else None)


def test_a_version_refused_at_this_serial_is_not_planned_but_one_not_pinned_is() -> None:
    assignment = Assignment("m", REF)
    pinned = plan_slots(ModelSlots(), assignment, 4, {REF.sha256: 4}, {})
    assert pinned.to_install == () and pinned.production is None
    retried = plan_slots(ModelSlots(), assignment, 4, {}, {})  # a delivery refusal pins nothing
    assert retried.to_install == (REF,)
