"""Device credentials and bootstrap tokens: formats, states and verdicts (pure; issue 10,
ADR 0026).

A device holds one bearer **credential** (``mfd_`` + 256 random bits); the hub stores only its
SHA-256, with the credential's id, its device, its ``not_after`` and its :class:`CredentialState`.
A credential comes from exchanging a one-time **bootstrap token** (``mfb_``…, short-lived,
bound to one device id) or from enrolling the device through the API. Rotation issues a new
credential and moves the old one to ``rotating``: both are accepted until the old one's
``grace_until``, so an agent that loses power between the hub's answer and its own write
still has a working credential. An expired credential is refused for everything but its own
renewal, for :attr:`CredentialSettings.renew_after_expiry_s` more: a device that was offline
for weeks comes back, renews, and goes on (it never stopped serving meanwhile).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from modelfleet.errors import ConfigError, InvalidInputError

__all__ = [
    "BOOTSTRAP_PREFIX",
    "CREDENTIAL_PREFIX",
    "CredentialSettings",
    "CredentialState",
    "Verdict",
    "is_bootstrap_token",
    "is_device_credential",
    "judge",
    "new_bootstrap_token",
    "new_credential",
    "new_credential_id",
    "transition",
]

CREDENTIAL_PREFIX = "mfd_"
BOOTSTRAP_PREFIX = "mfb_"

_DAY = 86_400.0


class CredentialState(StrEnum):
    """Where a credential is in its life."""

    ACTIVE = "active"
    ROTATING = "rotating"  # replaced; accepted until its grace_until
    REVOKED = "revoked"  # never accepted again


_MOVES: dict[CredentialState, frozenset[CredentialState]] = {
    CredentialState.ACTIVE: frozenset({CredentialState.ROTATING, CredentialState.REVOKED}),
    CredentialState.ROTATING: frozenset({CredentialState.REVOKED}),
    CredentialState.REVOKED: frozenset(),
}


def transition(current: CredentialState | str, to: CredentialState) -> CredentialState:
    """The one way a credential's state changes.

    Raises:
        InvalidInputError: ``to`` is not reachable from ``current`` (a revoked credential
            stays revoked; a rotating one is never active again).
    """
    now = CredentialState(current)
    if to not in _MOVES[now]:
        raise InvalidInputError(f"a {now.value} credential cannot become {to.value}")
    return to


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    """How long credentials and bootstrap tokens live (bounded).

    Attributes:
        lifetime_s: a new credential's validity (1 hour to 2 years; 90 days).
        rotation_grace_s: how long a replaced credential is still accepted (1 minute to
            30 days; 7 days).
        renew_after_expiry_s: how long after ``not_after`` an expired credential may still
            renew itself (0 to 2 years; 1 year): a device back from a long time offline
            renews without a person (Azure IoT Edge bricks after ~25 days, iotedge#7321).
        bootstrap_ttl_s: a bootstrap token's default validity (1 minute to 30 days; 1 day).
    """

    lifetime_s: float = 90 * _DAY
    rotation_grace_s: float = 7 * _DAY
    renew_after_expiry_s: float = 365 * _DAY
    bootstrap_ttl_s: float = _DAY

    def __post_init__(self) -> None:
        bounds = {
            "lifetime_s": (3600.0, 730 * _DAY),
            "rotation_grace_s": (60.0, 30 * _DAY),
            "renew_after_expiry_s": (0.0, 730 * _DAY),
            "bootstrap_ttl_s": (60.0, 30 * _DAY),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"credentials: {name} {value} is outside [{low}, {high}]")

    def bootstrap_ttl(self, requested_s: float | None) -> timedelta:
        """A bootstrap token's validity: ``requested_s`` or the default.

        Raises:
            InvalidInputError: outside 1 minute to 30 days.
        """
        ttl = self.bootstrap_ttl_s if requested_s is None else requested_s
        if not 60 <= ttl <= 30 * _DAY:
            raise InvalidInputError("a bootstrap token lives between 60 s and 30 days")
        return timedelta(seconds=ttl)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a credential is accepted now, and if not why (for the log and the 401)."""

    ok: bool
    reason: str = ""
    may_renew: bool = False


def judge(
    state: str,
    not_after: datetime,
    grace_until: datetime | None,
    now: datetime,
    settings: CredentialSettings,
) -> Verdict:
    """Whether a stored credential is accepted at ``now`` (pure).

    Returns:
        ``ok`` for an active credential before ``not_after`` or a rotating one before
        both its ``grace_until`` and ``not_after``; otherwise the reason, with
        ``may_renew`` when the credential may still call its own renewal (expired, not
        revoked, within ``renew_after_expiry_s``).
    """
    kind = CredentialState(state)
    if kind is CredentialState.REVOKED:
        return Verdict(False, "the device credential has been revoked")
    if kind is CredentialState.ROTATING and grace_until is not None and now >= grace_until:
        return Verdict(False, "the device credential was replaced and its grace window is over")
    if now >= not_after:
        renewable = kind is CredentialState.ACTIVE and now < not_after + timedelta(
            seconds=settings.renew_after_expiry_s
        )
        return Verdict(
            False,
            f"the device credential expired at {not_after.isoformat()}"
            + ("; renew it" if renewable else "; enrol the device again"),
            may_renew=renewable,
        )
    return Verdict(True)


def new_credential() -> str:
    """A fresh device credential (256 random bits)."""
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def new_bootstrap_token() -> str:
    """A fresh one-time bootstrap token (256 random bits)."""
    return BOOTSTRAP_PREFIX + secrets.token_urlsafe(32)


def new_credential_id() -> str:
    """A credential's public id (names it in listings and the audit log; not a secret)."""
    return "dc_" + secrets.token_hex(8)


def is_device_credential(token: str) -> bool:
    return token.startswith(CREDENTIAL_PREFIX)


def is_bootstrap_token(token: str) -> bool:
    return token.startswith(BOOTSTRAP_PREFIX)
