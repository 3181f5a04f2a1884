"""Hub API tokens and roles (pure: no database, no HTTP).

Roles: ``admin`` may do everything; ``publisher`` registers models and ``operator``
enrols devices, deploys and runs rollouts, and both may read like a ``viewer``; an
``approver`` approves the rollouts of safety-classified models (issue 8; an operator
cannot, and nobody approves a rollout they created) and reads like a viewer. A ``device`` token
only reads TUF metadata and artefacts, the trust root, and its own device record, and
posts its own reports.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from modelfleet.errors import ForbiddenError, InvalidInputError

__all__ = [
    "TOKEN_PREFIX",
    "Permission",
    "Principal",
    "Role",
    "check",
    "hash_token",
    "new_token",
    "parse_role",
]

TOKEN_PREFIX = "mft_"


class Role(StrEnum):
    """What a token may do."""

    ADMIN = "admin"
    PUBLISHER = "publisher"
    OPERATOR = "operator"
    VIEWER = "viewer"
    APPROVER = "approver"
    DEVICE = "device"


class Permission(StrEnum):
    """The kinds of action the API distinguishes."""

    READ = "read"  # list and inspect models, devices, audit
    PUBLISH = "publish"  # upload blobs, register versions
    OPERATE = "operate"  # enrol devices, deploy, roll back
    ADMIN = "admin"  # create tokens
    APPROVE = "approve"  # approve a safety-classified model's rollout (issue 8)
    TUF = "tuf"  # read TUF metadata, targets and the trust root


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.PUBLISHER: frozenset({Permission.READ, Permission.PUBLISH, Permission.TUF}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE, Permission.TUF}),
    Role.VIEWER: frozenset({Permission.READ, Permission.TUF}),
    Role.APPROVER: frozenset({Permission.READ, Permission.TUF, Permission.APPROVE}),
    Role.DEVICE: frozenset({Permission.TUF}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a role and who it is (a user name or a device id)."""

    role: Role
    subject: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller, e.g. ``"device:cam-7"``."""
        return f"{self.role.value}:{self.subject}"

    def may(self, permission: Permission) -> bool:
        return permission in _GRANTS[self.role]

    def is_device(self, device_id: str) -> bool:
        return self.role is Role.DEVICE and self.subject == device_id


def check(principal: Principal, permission: Permission, device_id: str | None = None) -> None:
    """Allow the action, or raise.

    Args:
        principal: the caller.
        permission: what the action needs.
        device_id: for per-device endpoints: that device's own token is allowed too.

    Raises:
        ForbiddenError: the role does not grant ``permission``.
    """
    if principal.may(permission):
        return
    if device_id is not None and principal.is_device(device_id):
        return
    raise ForbiddenError(
        f"a {principal.role.value} token may not do this (needs {permission.value} permission)"
    )


def parse_role(value: str) -> Role:
    """Role from its name.

    Raises:
        InvalidInputError: not a known role.
    """
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise InvalidInputError(f"unknown role {value!r}; use one of {names}") from None


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256 hex digest."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
