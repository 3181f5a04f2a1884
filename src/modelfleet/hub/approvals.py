"""Release approvals (issue 10, ADR 0027): release keys, requests and threshold signatures.

Once a release key is registered, every new package version (and every version not yet
published) gets a *release request*: the canonical bytes of its release role (see
:mod:`modelfleet.trust.release`), fixed when the request opens. Approvers fetch them, check
and sign them on their own machine, and post the signature; the hub verifies it against
the registered public key. When signatures of ``threshold`` distinct release keys are in
(``release_threshold``, or ``safety_release_threshold`` for a safety-classified model),
the request is approved in the same transaction as the signature and its audit entry, and
after the commit the catalog delegates the version to its role with those keys and that
threshold. Until then the catalog does not list the version at all, and the hub refuses
to assign it (:func:`refuse_unapproved`: a deploy, a rollout or its next stage, a rollback
onto it) — every device would refuse it as "not in the catalog".

Versions that were published before any release key existed stay listed by the hub's own
targets key (they have no request).

A removed release key (``release-key remove``, ADR 0027 amendment) signs nothing more: its
signatures on pending requests are dropped and the requests recount; the versions it
helped approve stay approved (their delegation is already signed and is not re-signed).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
from securesystemslib.signer import Key
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.errors import ConflictError, InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.config import HubConfig
from modelfleet.hub.context import HubContext
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.release import (
    build_release_bytes,
    public_key_from_pem,
    release_role_name,
    verify_release_signature,
)
from modelfleet.trust.repository import ExpiryPolicy

__all__ = ["APPROVED", "PENDING", "REVOKED", "Approvals", "refuse_unapproved", "refuse_unsigned"]

PENDING, APPROVED, REVOKED = "pending", "approved", "revoked"
_MAX_LABEL = 256

_log = logging.getLogger(__name__)


def refuse_unapproved(s: Session, config: HubConfig, name: str, version: int) -> None:
    """Refuse to assign a version whose release request is still pending (issue 10).

    A version with no request (published before any release key existed) or an approved
    one passes; a revoked one is refused by its callers' own ``revoked`` check.

    Args:
        s: the caller's transaction.
        config: for the thresholds.
        name: the model.
        version: the version about to be assigned.

    Raises:
        ConflictError: the version awaits release signatures; the message says how many
            are in, how many are needed and the command that adds one.
    """
    req = _request_of(s, name, version)
    if req is None or req.state != PENDING:
        return
    model = s.scalars(select(db.Model).where(db.Model.name == name)).one()
    need = _threshold_of(config, model)
    have = len(_signed_by(s, req))
    raise ConflictError(
        f"{name} v{version} awaits release approval: {have} of {need} release signatures "
        f"(`modelfleet approve {name} {version} --key FILE`)"
    )


def refuse_unsigned(trust: HubTrust, name: str, version: int) -> None:
    """Refuse to assign a version the signed catalog does not list yet because the
    catalog's targets key is offline and its next targets waits for the ceremony
    (issue 10, ADR 0043). With an online targets key this never refuses.

    Raises:
        ConflictError: the version waits for the offline targets signature; the message
            names the three commands of the ceremony.
    """
    if not trust.catalog_targets_offline() or trust.catalog_lists(name, version):
        return
    staged = trust.staged_catalog_targets()
    waiting = f" (targets version {staged['version']})" if staged is not None else ""
    raise ConflictError(
        f"{name} v{version} is not in the signed catalog yet: the catalog's targets key is "
        f"offline and the next targets{waiting} waits for its signature (`modelfleet keys "
        "export-targets --out FILE`, `keys sign-targets` on the offline machine, then "
        "`keys apply-targets --signed FILE`)"
    )


class Approvals:
    """Release keys and the signatures that make a version installable.

    Args:
        ctx: the hub's sessions, clock, config and audit log.
        catalog: version lookups and the signed target fields.
        trust: the catalog repository the approved roles are delegated in.
        expiry: lifetimes; a release role lives as long as the catalog's targets.
    """

    def __init__(
        self,
        ctx: HubContext,
        catalog: Catalog,
        trust: HubTrust,
        expiry: ExpiryPolicy | None = None,
    ) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._trust = trust
        self._lifetime = (expiry or ExpiryPolicy()).lifetimes("catalog")["targets"]

    # -- release keys --------------------------------------------------------------------

    def add_key(self, pem: bytes, label: str, actor: str) -> JSONDict:
        """Register a public release key (a private key file's public half is taken).

        Every version not yet published or revoked then needs release signatures too.
        Audited as ``release-key.add``.

        Returns:
            ``{"keyid", "label", "added_at", "added_by", "gated": [versions]}``.

        Raises:
            InvalidInputError: not a PEM ed25519 key, or a label over 256 characters.
            ConflictError: the key is already registered.
        """
        key = public_key_from_pem(pem)
        if len(label) > _MAX_LABEL:
            raise InvalidInputError(f"the label is longer than {_MAX_LABEL} characters")
        now = self._ctx.now()
        with self._ctx.write() as s:
            if s.get(db.ReleaseKey, key.keyid) is not None:
                raise ConflictError(f"release key {key.keyid} is already registered")
            s.add(
                db.ReleaseKey(
                    keyid=key.keyid, key=key.to_dict(), label=label, added_at=now, added_by=actor
                )
            )
            s.flush()
            gated = self._gate_unpublished(s)
            self._ctx.audit(
                s,
                actor,
                "release-key.add",
                key.keyid,
                {"label": label, "gated": gated},
            )
        return {
            "keyid": key.keyid,
            "label": label,
            "added_at": _iso(now),
            "added_by": actor,
            "gated": gated,
        }

    def list_keys(self) -> list[JSONDict]:
        """The registered release keys: ``[{"keyid", "label", "added_at", "added_by"}]``."""
        with self._ctx.read() as s:
            rows = s.scalars(select(db.ReleaseKey).order_by(db.ReleaseKey.added_at))
            return [
                {
                    "keyid": k.keyid,
                    "label": k.label,
                    "added_at": _iso(k.added_at),
                    "added_by": k.added_by,
                }
                for k in rows
            ]

    def remove_key(self, keyid: str, actor: str) -> JSONDict:
        """Retire a release key (admin; ADR 0027 amendment): it signs nothing from now on.

        Its signatures on pending requests are dropped and those requests recount toward
        their threshold (none is approved by the removal: fewer signatures never reach it).
        Versions it helped approve stay approved: their delegation, which lists the key,
        is already signed and is not re-signed (revoke a version to withdraw it). Approved
        requests a crash left undelegated are delegated first, with the key still known.
        Audited as ``release-key.remove``.

        Returns:
            ``{"keyid", "label", "removed_by", "keys_left", "recounted": [{"version",
            "signatures", "threshold"}]}`` (``version`` is ``NAME/N``).

        Raises:
            NotFoundError: no such key.
            ConflictError: the keys left would be fewer than a pending request's threshold
                (every pending version would become unapprovable); add a key first, or
                revoke those versions.
        """
        self.publish()  # an approval a crash left undelegated still needs this key's dict
        with self._ctx.write() as s:
            row = s.get(db.ReleaseKey, keyid) if isinstance(keyid, str) else None
            if row is None:
                raise NotFoundError(f"no release key {keyid!r} at this hub")
            left = (
                s.scalar(
                    select(func.count())
                    .select_from(db.ReleaseKey)
                    .where(db.ReleaseKey.keyid != keyid)
                )
                or 0
            )
            pending = s.execute(
                select(db.ReleaseRequest, db.Model)
                .join(db.Model, db.Model.name == db.ReleaseRequest.model)
                .where(db.ReleaseRequest.state == PENDING)
                .order_by(db.ReleaseRequest.model, db.ReleaseRequest.version)
            ).all()
            stuck = [
                f"{req.model}/{req.version} (needs {_threshold_of(self._ctx.config, m)})"
                for req, m in pending
                if left < _threshold_of(self._ctx.config, m)
            ]
            if stuck:
                raise ConflictError(
                    f"removing release key {keyid} would leave {left} release key(s): "
                    f"{', '.join(stuck[:10])}{' ...' if len(stuck) > 10 else ''} could never "
                    "be approved; add a key first (`modelfleet release-key add`) or revoke "
                    "those versions"
                )
            recounted: list[JSONDict] = []
            for req, m in pending:
                sig = s.scalars(
                    select(db.ReleaseSignature).where(
                        db.ReleaseSignature.request_id == req.id,
                        db.ReleaseSignature.keyid == keyid,
                    )
                ).first()
                if sig is None:
                    continue
                s.delete(sig)
                s.flush()
                recounted.append(
                    {
                        "version": f"{req.model}/{req.version}",
                        "signatures": len(_signed_by(s, req) - {keyid}),
                        "threshold": _threshold_of(self._ctx.config, m),
                    }
                )
            label = row.label
            s.delete(row)
            s.flush()
            self._ctx.audit(
                s,
                actor,
                "release-key.remove",
                keyid,
                {"label": label, "keys_left": left, "recounted": recounted},
            )
        return {
            "keyid": keyid,
            "label": label,
            "removed_by": actor,
            "keys_left": left,
            "recounted": recounted,
        }

    # -- requests ------------------------------------------------------------------------

    def gate(self, s: Session, name: str, row: db.ModelVersion) -> None:
        """Open a release request for a just-registered version when release keys exist
        (the :data:`~modelfleet.hub.catalog.ReleaseGate` of the catalog)."""
        if s.scalar(select(func.count()).select_from(db.ReleaseKey)):
            self._open(s, name, row)

    def request(self, name: str, version: int) -> JSONDict:
        """What approvers need to sign a version, and how far its approval is.

        Returns:
            ``{"model", "version", "role", "state", "threshold", "signatures": [{"keyid",
            "label", "actor", "at"}], "release_keys": [{"keyid", "label"}], "signed"
            (base64 of the canonical bytes to sign), "installable"}``.

        Raises:
            NotFoundError: no such version.
            InvalidInputError: the version needs no release signatures (listed by the
                hub's key before release keys existed).
        """
        with self._ctx.read() as s:
            self._catalog.version_row(s, name, version)
            req = self._request_row(s, name, version)
            if req is None:
                raise InvalidInputError(
                    f"{name} version {version} needs no release signatures: it has no "
                    "release request (no release key was registered before it was published)"
                )
            return self._view(s, name, req)

    def approve(self, name: str, version: int, keyid: str, signature: str, actor: str) -> JSONDict:
        """Add one release signature; at the threshold the version becomes installable.

        The signature is verified over the request's canonical bytes with the registered
        key before it is stored (audited as ``release.sign``; reaching the threshold as
        ``release.approve``). Signing again with the same key replaces its signature.

        Returns:
            The request (see :meth:`request`).

        Raises:
            NotFoundError: no such version.
            InvalidInputError: no release request, an unknown key, a signature that does
                not verify, or a revoked version.
        """
        now = self._ctx.now()
        with self._ctx.write() as s:
            model = self._catalog.model_row(s, name)
            v = self._catalog.version_row(s, name, version)
            req = self._request_row(s, name, version)
            if req is None:
                raise InvalidInputError(f"{name} version {version} needs no release signatures")
            if v.revoked or req.state == REVOKED:
                raise InvalidInputError(f"{name} version {version} is revoked")
            key_row = s.get(db.ReleaseKey, keyid) if isinstance(keyid, str) else None
            if key_row is None:
                raise InvalidInputError(f"release key {keyid!r} is not registered at this hub")
            verify_release_signature(_key(key_row), req.signed, keyid, signature)
            old = s.scalars(
                select(db.ReleaseSignature).where(
                    db.ReleaseSignature.request_id == req.id, db.ReleaseSignature.keyid == keyid
                )
            ).first()
            if old is not None:
                old.signature, old.actor, old.at = signature, actor, now
            else:
                s.add(
                    db.ReleaseSignature(
                        request_id=req.id, keyid=keyid, signature=signature, actor=actor, at=now
                    )
                )
            s.flush()
            threshold = self._threshold(model)
            signed_by = self._valid_keyids(s, req)
            self._ctx.audit(
                s,
                actor,
                "release.sign",
                f"{name}/{version}",
                {"keyid": keyid, "signatures": len(signed_by), "threshold": threshold},
            )
            if req.state == PENDING and len(signed_by) >= threshold:
                req.state, req.decided_at = APPROVED, now
                req.keyids = sorted(k.keyid for k in s.scalars(select(db.ReleaseKey)))
                req.threshold = threshold
                self._ctx.audit(
                    s,
                    actor,
                    "release.approve",
                    f"{name}/{version}",
                    {"keyids": sorted(signed_by), "threshold": threshold},
                )
        self.publish()
        return self.request(name, version)

    def mark_revoked(self, s: Session, name: str, version: int) -> None:
        """In a revocation's transaction: the version's request can no longer be approved."""
        req = self._request_row(s, name, version)
        if req is not None and req.state != REVOKED:
            req.state, req.decided_at = REVOKED, self._ctx.now()

    # -- signing (after the commit) ------------------------------------------------------

    def publish(self) -> list[str]:
        """Make the catalog delegate every approved, unrevoked version and none revoked.

        Idempotent; called after every approval and revocation and at start-up (a crash
        after the commit is repaired then).

        Returns:
            The roles delegated now.

        Raises:
            StorageError: the metadata could not be written.
        """
        with self._ctx.read() as s:
            rows = s.execute(
                select(db.ReleaseRequest, db.ModelVersion.revoked)
                .join(db.Model, db.Model.name == db.ReleaseRequest.model)
                .join(
                    db.ModelVersion,
                    (db.ModelVersion.model_id == db.Model.id)
                    & (db.ModelVersion.version == db.ReleaseRequest.version),
                )
                .where(db.ReleaseRequest.state != PENDING)
            ).all()
            work = [
                (req, revoked, self._role_file(s, req), self._keys(s, req.keyids))
                for req, revoked in rows
            ]
        done: list[str] = []
        delegated = set(self._trust.delegated_releases())
        for req, revoked, data, keys in work:
            role = release_role_name(req.model, req.version)
            if revoked or req.state == REVOKED:
                if role in delegated:
                    self._trust.revoke_package(req.model, req.version)
                continue
            if role in delegated:
                continue
            try:
                if self._trust.delegate_release(req.model, req.version, keys, req.threshold, data):
                    done.append(role)
            except (InvalidInputError, ConflictError) as e:
                _log.error("approved release %s cannot be delegated: %s", role, e)
        return done

    # -- internals -----------------------------------------------------------------------

    def _open(self, s: Session, name: str, row: db.ModelVersion) -> db.ReleaseRequest:
        expires = self._ctx.now().replace(microsecond=0) + self._lifetime
        signed = build_release_bytes(
            name,
            row.version,
            (row.length, row.sha256, self._catalog.target_custom(name, row)),
            (row.manifest_length, row.manifest_sha256),
            expires,
        )
        req = db.ReleaseRequest(
            model=name,
            version=row.version,
            signed=signed,
            state=PENDING,
            keyids=[],
            threshold=0,
            created_at=self._ctx.now(),
        )
        s.add(req)
        return req

    def _gate_unpublished(self, s: Session) -> list[str]:
        rows = s.execute(
            select(db.Model.name, db.ModelVersion)
            .join(db.ModelVersion, db.ModelVersion.model_id == db.Model.id)
            .where(db.ModelVersion.published.is_(False), db.ModelVersion.revoked.is_(False))
        ).all()
        out = []
        for name, v in rows:
            if self._request_row(s, name, v.version) is None:
                self._open(s, name, v)
                out.append(f"{name}/{v.version}")
        return out

    def _request_row(self, s: Session, name: str, version: int) -> db.ReleaseRequest | None:
        return _request_of(s, name, version)

    def _threshold(self, model: db.Model) -> int:
        return _threshold_of(self._ctx.config, model)

    def _valid_keyids(self, s: Session, req: db.ReleaseRequest) -> set[str]:
        return _signed_by(s, req)

    def _keys(self, s: Session, keyids: list[Any]) -> list[Key]:
        rows = s.scalars(select(db.ReleaseKey).where(db.ReleaseKey.keyid.in_(list(keyids))))
        return [_key(r) for r in rows]

    def _role_file(self, s: Session, req: db.ReleaseRequest) -> bytes:
        sigs = s.scalars(
            select(db.ReleaseSignature).where(db.ReleaseSignature.request_id == req.id)
        )
        signatures = [{"keyid": g.keyid, "sig": g.signature} for g in sigs if g.keyid in req.keyids]
        return orjson.dumps({"signed": orjson.loads(req.signed), "signatures": signatures})

    def _view(self, s: Session, name: str, req: db.ReleaseRequest) -> JSONDict:
        keys = {k.keyid: k.label for k in s.scalars(select(db.ReleaseKey))}
        sigs = s.scalars(
            select(db.ReleaseSignature)
            .where(db.ReleaseSignature.request_id == req.id)
            .order_by(db.ReleaseSignature.at)
        )
        model = self._catalog.model_row(s, name)
        role = release_role_name(name, req.version)
        return {
            "model": name,
            "version": req.version,
            "role": role,
            "state": req.state,
            "threshold": req.threshold if req.state == APPROVED else self._threshold(model),
            "signatures": [_signature(g, keys) for g in sigs],
            "release_keys": [{"keyid": k, "label": lbl} for k, lbl in sorted(keys.items())],
            "signed": base64.b64encode(req.signed).decode(),
            "installable": req.state == APPROVED and role in self._trust.delegated_releases(),
        }


def _request_of(s: Session, name: str, version: int) -> db.ReleaseRequest | None:
    return s.scalars(
        select(db.ReleaseRequest).where(
            db.ReleaseRequest.model == name, db.ReleaseRequest.version == version
        )
    ).first()


def _threshold_of(config: HubConfig, model: db.Model) -> int:
    if model.safety_classified:
        return config.safety_release_threshold
    return config.release_threshold


def _signed_by(s: Session, req: db.ReleaseRequest) -> set[str]:
    """Key ids of registered release keys with a stored signature (each verified when
    posted); a removed key's signatures no longer count."""
    known = set(s.scalars(select(db.ReleaseKey.keyid)))
    return {
        k
        for k in s.scalars(
            select(db.ReleaseSignature.keyid).where(db.ReleaseSignature.request_id == req.id)
        )
        if k in known
    }


def _signature(g: db.ReleaseSignature, labels: dict[str, str]) -> JSONDict:
    return {"keyid": g.keyid, "label": labels.get(g.keyid, ""), "actor": g.actor, "at": _iso(g.at)}


def _key(row: db.ReleaseKey) -> Key:
    try:
        return Key.from_dict(row.keyid, dict(row.key))
    except (KeyError, ValueError, TypeError) as e:  # a corrupt row: refuse, never crash
        raise InvalidInputError(f"release key {row.keyid} is unusable: {e}") from e
