"""Pure rule: which install failures are final for a serial and which are tried again.

Issue 11, ADR 0034. Data in, decision out: no clock, no I/O. The updater
(:mod:`modelfleet.agent.updater`) asks :func:`failure_kind` what a failed install means,
:func:`retry_due` whether a pending retry may run now, and :func:`refusal_after_install`
which refusal status keeps showing.

* **Refused** (deterministic): the signed metadata itself says no (a package for other
  hardware, a bad signature or threshold, a smoke test that fails, a version that is not
  in the catalog). The same serial gives the same answer, so it is pinned to the serial.
* **Delivery**: the bytes delivered do not match the signed length or hash. That copy is
  bad (a tampered or damaged stick, a mirror that served a corrupted cache); another copy
  of the same signed artefact may be good. It is refused and retried.
* **Transient**: the bytes could not be had at all (hub unreachable, disk full), or the
  metadata that lists them has expired (ADR 0036: fresh metadata, not another serial,
  clears that); retried.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from modelfleet.agent.state import Refusal
from modelfleet.errors import (
    CorruptDeliveryError,
    InvalidInputError,
    MetadataExpiredError,
    RefusedUpdateError,
    TrustError,
)

__all__ = [
    "FailureKind",
    "failure_kind",
    "refusal_after_install",
    "refusal_kind",
    "retry_due",
]


class FailureKind(StrEnum):
    """What a failed install means for the desired state's serial."""

    REFUSED = "refused"  # final for this serial
    DELIVERY = "delivery"  # refused, retried (the copy was bad)
    TRANSIENT = "transient"  # retried


def failure_kind(error: Exception) -> FailureKind:
    """Classify an install failure (see the module docstring)."""
    if isinstance(error, CorruptDeliveryError):
        return FailureKind.DELIVERY
    if isinstance(error, MetadataExpiredError):
        return FailureKind.TRANSIENT
    if isinstance(error, TrustError | RefusedUpdateError | InvalidInputError):
        return FailureKind.REFUSED
    return FailureKind.TRANSIENT


def refusal_kind(error: Exception) -> str:
    """``Refusal.kind`` for a refused install: ``delivery``, ``trust`` or ``check``."""
    if failure_kind(error) is FailureKind.DELIVERY:
        return "delivery"
    return "trust" if isinstance(error, TrustError) else "check"


def retry_due(now: float, retry_at: float, medium_then: str | None, medium_now: str | None) -> bool:
    """Whether a pending retry may run now.

    Args:
        now: the monotonic clock now.
        retry_at: when the backoff after the last failed attempt ends.
        medium_then: the delivery medium's fingerprint when that attempt began (a mounted
            folder's, :meth:`FolderFetcher.fingerprint`), or None when not known.
        medium_now: its fingerprint now, or None.

    Returns:
        True when the backoff is over, or when the medium's content changed since the
        failed attempt (a re-made stick is tried at the next poll, not minutes later).
    """
    if now >= retry_at:
        return True
    return medium_then is not None and medium_now is not None and medium_now != medium_then


def refusal_after_install(last: Refusal | None, installed: Iterable[str]) -> Refusal | None:
    """The refusal status keeps showing after an attempt that installed ``installed``
    (sha256s): a delivery refusal is cleared once that very artefact installs, a
    deterministic one stays (it is pinned to its serial)."""
    if last is not None and last.kind == "delivery" and last.sha256 in set(installed):
        return None
    return last
