"""Device credentials in the hub's database (issue 10, ADR 0026): issue, enrol with a
bootstrap token, rotate, revoke, decommission, list. Every change is audited in its own
transaction. The rules (states, expiry, grace) are :mod:`modelfleet.hub.credentials`'s.
"""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from modelfleet.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UnauthenticatedError,
)
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _check_name, _iso
from modelfleet.hub.auth import Role, hash_token
from modelfleet.hub.context import HubContext
from modelfleet.hub.credentials import (
    CredentialSettings,
    CredentialState,
    is_bootstrap_token,
    is_device_credential,
    judge,
    new_bootstrap_token,
    new_credential,
    new_credential_id,
    transition,
)
from modelfleet.hub.director import Director

__all__ = ["DeviceCredentials", "InsertDevice"]

log = logging.getLogger("modelfleet.hub")

#: ``(session, device_id, site, tags, actor)``: adds an enrolled device's row (Fleet's).
InsertDevice = Callable[[Session, str, str, Sequence[str], str], None]


def _view(row: db.DeviceCredential, now: datetime) -> JSONDict:
    """A credential as listings show it (never its secret); ``state`` says ``expired``
    past ``not_after``."""
    state = row.state
    if state != CredentialState.REVOKED and now >= row.not_after:
        state = "expired"
    return {
        "id": row.id,
        "device_id": row.device_id,
        "state": state,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "not_after": _iso(row.not_after),
        "grace_until": _iso(row.grace_until),
        "replaced_by": row.replaced_by,
        "revoked_at": _iso(row.revoked_at),
        "revoked_reason": row.revoked_reason,
    }


class DeviceCredentials:
    """Credentials and bootstrap tokens of enrolled devices.

    Args:
        ctx: sessions, clock, audit log.
        director: empties a decommissioned device's director repository.
        insert_device: adds a device row when a bootstrap token enrols a new device.
        forget: drops cached principals of these token digests (revocation takes effect
            in this process at once; other replicas within the token cache's TTL).
        settings: lifetimes and windows.
    """

    def __init__(
        self,
        ctx: HubContext,
        director: Director,
        insert_device: InsertDevice,
        forget: Callable[[Iterable[str]], None],
        settings: CredentialSettings | None = None,
    ) -> None:
        self._ctx = ctx
        self._director = director
        self._insert_device = insert_device
        self._forget = forget
        self.settings = settings or CredentialSettings()

    # -- issuing ---------------------------------------------------------------------------

    def issue(self, s: Session, device_id: str, actor: str) -> tuple[str, db.DeviceCredential]:
        """A new active credential for ``device_id`` in the caller's transaction.

        Returns:
            ``(secret, row)``: the secret is shown once and never stored.
        """
        secret = new_credential()
        now = self._ctx.now()
        row = db.DeviceCredential(
            id=new_credential_id(),
            device_id=device_id,
            secret_sha256=hash_token(secret),
            state=CredentialState.ACTIVE.value,
            created_at=now,
            created_by=actor,
            not_after=now + timedelta(seconds=self.settings.lifetime_s),
            grace_until=None,
            replaced_by=None,
            revoked_at=None,
            revoked_reason="",
        )
        s.add(row)
        return secret, row

    def create_bootstrap(
        self,
        device_id: str,
        actor: str,
        *,
        site: str = "",
        tags: Sequence[str] = (),
        ttl_s: float | None = None,
    ) -> JSONDict:
        """A one-time bootstrap token for ``device_id`` (enrolled or not yet).

        Returns:
            ``{"id", "device_id", "token", "expires_at"}``; the token is shown only here.

        Raises:
            InvalidInputError: a bad device id, site, tags or lifetime.
            ConflictError: the device is decommissioned.
        """
        _check_name("device id", device_id)
        if not isinstance(site, str) or len(site) > 128:
            raise InvalidInputError("site must be a string of at most 128 characters")
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
            raise InvalidInputError("tags must be a list of non-empty strings")
        ttl = self.settings.bootstrap_ttl(ttl_s)
        token = new_bootstrap_token()
        now = self._ctx.now()
        row_id = "bt_" + secrets.token_hex(8)
        with self._ctx.write() as s:
            self._refuse_decommissioned(s, device_id)
            s.add(
                db.BootstrapToken(
                    id=row_id,
                    token_sha256=hash_token(token),
                    device_id=device_id,
                    site=site,
                    tags=sorted(set(tags)),
                    created_at=now,
                    created_by=actor,
                    expires_at=now + ttl,
                    used_at=None,
                )
            )
            self._ctx.audit(
                s,
                actor,
                "device.bootstrap_token.create",
                device_id,
                {"id": row_id, "expires_at": _iso(now + ttl)},
            )
        return {"id": row_id, "device_id": device_id, "token": token, "expires_at": _iso(now + ttl)}

    def enrol(
        self, bootstrap_token: str | None, device_id: str | None = None
    ) -> tuple[JSONDict, bool]:
        """Exchange a bootstrap token for the device's credential, once.

        Args:
            bootstrap_token: the ``mfb_`` token.
            device_id: the id the device believes it has (refused when it is not the
                token's); None: the token's.

        Returns:
            ``({"device_id", "credential_id", "token", "not_after"}, new_device)``.

        Raises:
            UnauthenticatedError: not a bootstrap token, unknown, used or expired (the
                reason is logged and said).
            ForbiddenError: ``device_id`` is not the token's device.
            ConflictError: the device is decommissioned.
        """
        if not bootstrap_token or not is_bootstrap_token(bootstrap_token):
            raise UnauthenticatedError("enrolment needs a bootstrap token (mfb_...)")
        sha = hash_token(bootstrap_token)
        now = self._ctx.now()
        with self._ctx.write() as s:
            row = s.scalar(select(db.BootstrapToken).where(db.BootstrapToken.token_sha256 == sha))
            reason = ""
            if row is None:
                reason = "unknown bootstrap token"
            elif row.used_at is not None:
                reason = f"bootstrap token {row.id} was already used at {_iso(row.used_at)}"
            elif now >= row.expires_at:
                reason = f"bootstrap token {row.id} expired at {_iso(row.expires_at)}"
            if reason or row is None:
                log.warning("enrolment refused: %s", reason)
                raise UnauthenticatedError(f"enrolment refused: {reason}")
            if device_id is not None and device_id != row.device_id:
                log.warning(
                    "enrolment refused: bootstrap token %s is for %r, not %r",
                    row.id,
                    row.device_id,
                    device_id,
                )
                raise ForbiddenError(
                    f"enrolment refused: the bootstrap token is for device {row.device_id!r}"
                )
            self._refuse_decommissioned(s, row.device_id)
            row.used_at = now
            new_device = s.get(db.Device, row.device_id) is None
            if new_device:
                self._insert_device(s, row.device_id, row.site, list(row.tags), row.created_by)
                s.flush()
            secret, cred = self.issue(s, row.device_id, f"bootstrap:{row.id}")
            self._ctx.audit(
                s,
                f"device:{row.device_id}",
                "device.enrol",
                row.device_id,
                {"bootstrap_token": row.id, "credential": cred.id, "new_device": new_device},
            )
            answer = {
                "device_id": row.device_id,
                "credential_id": cred.id,
                "token": secret,
                "not_after": _iso(cred.not_after),
            }
        return answer, new_device

    # -- rotation ----------------------------------------------------------------------------

    def rotate(self, token: str | None, device_id: str) -> JSONDict:
        """Replace the caller's own credential: a new active one, the old one accepted for
        the grace window more (never past its own ``not_after``). An expired credential may
        still rotate itself within ``renew_after_expiry_s`` (renewal after a long offline
        spell); a replaced one within its grace window (the answer was lost: its unused
        successor is revoked); a revoked one never.

        Returns:
            ``{"device_id", "credential_id", "token", "not_after", "previous":
            {"id", "grace_until"}}``.

        Raises:
            UnauthenticatedError: unknown, revoked, replaced past its grace window, or
                expired too long ago (the reason is logged and said). A legacy device
                token (``tokens`` table) gets its device's first credential.
            ForbiddenError: the credential is another device's.
        """
        if not token:
            raise UnauthenticatedError("a bearer token is required")
        if not is_device_credential(token):
            return self._from_legacy(token, device_id)
        sha = hash_token(token)
        now = self._ctx.now()
        with self._ctx.write() as s:
            old = s.scalar(
                select(db.DeviceCredential).where(db.DeviceCredential.secret_sha256 == sha)
            )
            if old is None:
                log.warning("credential renewal refused for %r: unknown credential", device_id)
                raise UnauthenticatedError("the token is not valid")
            if old.device_id != device_id:
                log.warning(
                    "credential renewal refused: credential %s of %r used for %r",
                    old.id,
                    old.device_id,
                    device_id,
                )
                raise ForbiddenError("a device may renew only its own credential")
            verdict = judge(old.state, old.not_after, old.grace_until, now, self.settings)
            if not (verdict.ok or verdict.may_renew):
                log.warning(
                    "credential renewal refused for %s (%s): %s", device_id, old.id, verdict.reason
                )
                raise UnauthenticatedError(verdict.reason)
            secret, new = self.issue(s, device_id, f"device:{device_id}")
            if old.state == CredentialState.ROTATING:
                # Renewing again with the replaced credential, within its grace: the answer
                # with its successor never reached the device (or was never written there),
                # so that successor was never used: revoke it, keep the grace window.
                self._supersede(s, old.replaced_by, now)
            else:
                old.state = transition(old.state, CredentialState.ROTATING).value
                old.grace_until = min(
                    now + timedelta(seconds=self.settings.rotation_grace_s), old.not_after
                )
            old.replaced_by = new.id
            self._ctx.audit(
                s,
                f"device:{device_id}",
                "device.credential.rotate",
                device_id,
                {
                    "from": old.id,
                    "to": new.id,
                    "grace_until": _iso(old.grace_until),
                    "expired": not verdict.ok,
                },
            )
            answer = {
                "device_id": device_id,
                "credential_id": new.id,
                "token": secret,
                "not_after": _iso(new.not_after),
                "previous": {"id": old.id, "grace_until": _iso(old.grace_until)},
            }
        return answer

    def _from_legacy(self, token: str, device_id: str) -> JSONDict:
        """A first credential for a device that holds a ``tokens``-table device token from
        before migration 0011 (it keeps working until the device is revoked).

        Raises:
            UnauthenticatedError: not a valid device token.
            ForbiddenError: another device's token.
        """
        with self._ctx.write() as s:
            legacy = s.scalar(select(db.Token).where(db.Token.token_sha256 == hash_token(token)))
            if legacy is None or legacy.revoked or legacy.role != Role.DEVICE.value:
                log.warning(
                    "credential renewal refused for %r: not a valid device token", device_id
                )
                raise UnauthenticatedError("the token is not valid")
            if legacy.subject != device_id:
                log.warning(
                    "credential renewal refused: %r's token used for %r", legacy.subject, device_id
                )
                raise ForbiddenError("a device may renew only its own credential")
            secret, new = self.issue(s, device_id, f"device:{device_id}")
            self._ctx.audit(
                s,
                f"device:{device_id}",
                "device.credential.rotate",
                device_id,
                {"from": "legacy-token", "to": new.id},
            )
            return {
                "device_id": device_id,
                "credential_id": new.id,
                "token": secret,
                "not_after": _iso(new.not_after),
                "previous": {"id": None, "grace_until": None},
            }

    def _supersede(self, s: Session, credential_id: str | None, now: datetime) -> None:
        successor = None if credential_id is None else s.get(db.DeviceCredential, credential_id)
        if successor is not None and successor.state == CredentialState.ACTIVE:
            successor.state = transition(successor.state, CredentialState.REVOKED).value
            successor.revoked_at = now
            successor.revoked_reason = "superseded: renewed again with its predecessor"
            self._forget([successor.secret_sha256])

    # -- revocation ---------------------------------------------------------------------------

    def revoke_credential(self, credential_id: str, actor: str, reason: str = "") -> JSONDict:
        """Revoke one credential (refused from then on; at once in this process).

        Raises:
            NotFoundError: no such credential.
            InvalidInputError: already revoked.
        """
        now = self._ctx.now()
        with self._ctx.write() as s:
            row = s.get(db.DeviceCredential, credential_id)
            if row is None:
                raise NotFoundError(f"no credential {credential_id!r}")
            row.state = transition(row.state, CredentialState.REVOKED).value
            row.revoked_at, row.revoked_reason = now, reason[:256]
            self._ctx.audit(
                s,
                actor,
                "device.credential.revoke",
                row.device_id,
                {"credential": row.id, "reason": reason[:256]},
            )
            view = _view(row, now)
            sha = row.secret_sha256
        self._forget([sha])
        return view

    def revoke_device(self, device_id: str, actor: str, reason: str = "") -> JSONDict:
        """Revoke every credential, legacy token and unused bootstrap token of a device.

        Returns:
            ``{"device_id", "revoked": [credential ids], "tokens": N}``.

        Raises:
            NotFoundError: no such device.
        """
        with self._ctx.write() as s:
            answer, shas = self._revoke_all(s, device_id, reason)
            self._ctx.audit(
                s, actor, "device.revoke", device_id, {**answer, "reason": reason[:256]}
            )
        self._forget(shas)
        return {"device_id": device_id, **answer}

    def decommission(self, device_id: str, actor: str, reason: str = "") -> JSONDict:
        """Take a device out of the fleet: its credentials and tokens revoked, its
        assignments removed, its director repository signed with no desired state, and
        marked so deploys and rollouts skip it. The device row and its history stay.

        Raises:
            NotFoundError: no such device.
            ConflictError: already decommissioned.
        """
        now = self._ctx.now()
        with self._ctx.write() as s:
            if s.get(db.DeviceDecommission, device_id) is not None:
                raise ConflictError(f"device {device_id!r} is already decommissioned")
            answer, shas = self._revoke_all(s, device_id, reason or "decommissioned")
            assigned = list(
                s.scalars(select(db.Assignment.model).where(db.Assignment.device_id == device_id))
            )
            s.execute(delete(db.Assignment).where(db.Assignment.device_id == device_id))
            s.add(db.DeviceDecommission(device_id=device_id, at=now, by=actor, reason=reason[:512]))
            self._director.remove_desired_states(s, [device_id])
            self._ctx.audit(
                s,
                actor,
                "device.decommission",
                device_id,
                {**answer, "assignments_removed": sorted(assigned), "reason": reason[:512]},
            )
        self._forget(shas)
        self._director.publish()
        return {"device_id": device_id, "decommissioned_at": _iso(now), **answer}

    def _revoke_all(
        self, s: Session, device_id: str, reason: str
    ) -> tuple[dict[str, Any], list[str]]:
        if s.get(db.Device, device_id) is None:
            raise NotFoundError(f"no device {device_id!r}")
        now = self._ctx.now()
        creds = list(
            s.scalars(
                select(db.DeviceCredential).where(
                    db.DeviceCredential.device_id == device_id,
                    db.DeviceCredential.state != CredentialState.REVOKED.value,
                )
            )
        )
        for c in creds:
            c.state = transition(c.state, CredentialState.REVOKED).value
            c.revoked_at, c.revoked_reason = now, reason[:256]
        legacy = list(
            s.scalars(
                select(db.Token).where(
                    db.Token.role == Role.DEVICE.value,
                    db.Token.subject == device_id,
                    db.Token.revoked.is_(False),
                )
            )
        )
        for t in legacy:
            t.revoked = True
        s.execute(
            update(db.BootstrapToken)
            .where(db.BootstrapToken.device_id == device_id, db.BootstrapToken.used_at.is_(None))
            .values(expires_at=now)
        )
        shas = [c.secret_sha256 for c in creds] + [t.token_sha256 for t in legacy]
        return {"revoked": [c.id for c in creds], "tokens": len(legacy)}, shas

    @staticmethod
    def _refuse_decommissioned(s: Session, device_id: str) -> None:
        if s.get(db.DeviceDecommission, device_id) is not None:
            raise ConflictError(f"device {device_id!r} is decommissioned")

    # -- reading ------------------------------------------------------------------------------

    def list(self, device_id: str | None = None) -> list[JSONDict]:
        """Credentials (never their secrets), newest first; of one device or all.

        Raises:
            NotFoundError: ``device_id`` is not enrolled.
        """
        now = self._ctx.now()
        with self._ctx.read() as s:
            query = select(db.DeviceCredential).order_by(
                db.DeviceCredential.device_id, db.DeviceCredential.created_at.desc()
            )
            if device_id is not None:
                if s.get(db.Device, device_id) is None:
                    raise NotFoundError(f"no device {device_id!r}")
                query = query.where(db.DeviceCredential.device_id == device_id)
            return [_view(r, now) for r in s.scalars(query)]

    def media_access(self, site: str) -> dict[str, builtins.list[str]]:
        """For a removable-media bundle (issue 11): each device of ``site`` (decommissioned
        ones left out) with the SHA-256 digests of the credentials a site mirror may accept
        from it offline: every one not revoked, rotating ones until their grace ends, and
        expired ones too (an expired credential only stops talking to the hub, never local
        operation). Digests only, never secrets; the devices' ids are sorted."""
        now = self._ctx.now()
        with self._ctx.read() as s:
            devices = s.scalars(
                select(db.Device.id)
                .where(db.Device.site == site)
                .where(db.Device.id.not_in(select(db.DeviceDecommission.device_id)))
                .order_by(db.Device.id)
            ).all()
            access: dict[str, builtins.list[str]] = {d: [] for d in devices}
            creds = s.scalars(
                select(db.DeviceCredential).where(
                    db.DeviceCredential.device_id.in_(devices),
                    db.DeviceCredential.state != CredentialState.REVOKED.value,
                )
            )
            for c in creds:
                if c.state == CredentialState.ROTATING and (
                    c.grace_until is not None and now >= c.grace_until
                ):
                    continue
                access[c.device_id].append(c.secret_sha256)
            legacy = s.scalars(
                select(db.Token).where(
                    db.Token.role == Role.DEVICE.value,
                    db.Token.subject.in_(devices),
                    db.Token.revoked.is_(False),
                )
            )
            for t in legacy:
                access[t.subject].append(t.token_sha256)
        return {d: sorted(shas) for d, shas in access.items()}

    def describe(self, sha: str) -> JSONDict | None:
        """The credential of this digest (for ``whoami``), or None."""
        now = self._ctx.now()
        with self._ctx.read() as s:
            row = s.scalar(
                select(db.DeviceCredential).where(db.DeviceCredential.secret_sha256 == sha)
            )
            return None if row is None else _view(row, now)
