"""Revocation (issue 10, ADR 0027): a version leaves the catalog and the devices using it
fall back, by the one rollback rule.

:func:`fall_back` is pure: it applies :func:`~modelfleet.rollout.assignment.roll_back`
until the slots no longer serve the revoked version (a candidate is dropped; a production
goes back to its previous version), and never lands on another revoked version. A device
with no earlier approved version is *stranded*: its assignment stays, the catalog no
longer lists the version, and the device keeps serving what it runs (its own pinned
previous version where it has one).

:class:`Revocations` is the shell: one transaction marks the version revoked, moves the
assignments, stages the devices' desired states and writes one audit entry with the
reason, ticket and every move; after the commit the catalog and the director are signed.
"""

from __future__ import annotations

import secrets
from collections.abc import Set
from dataclasses import replace
from enum import StrEnum

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict
from modelfleet.hub.approvals import Approvals
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.context import HubContext
from modelfleet.hub.director import Director
from modelfleet.hub.rollout_apply import apply_step, progress_of
from modelfleet.rollout.assignment import RollbackKind, Slots, roll_back
from modelfleet.rollout.desired_state import Mode
from modelfleet.rollout.plan import parse_plan
from modelfleet.rollout.stages import TERMINAL, operator

__all__ = ["MAX_REASON", "Fallback", "Revocations", "fall_back"]

MAX_REASON = 1024


class Fallback(StrEnum):
    """What a revocation did to one device's slots."""

    NONE = "none"  # the version was not serving there (at most the rollback target)
    CANDIDATE_DROPPED = "candidate-dropped"  # production keeps serving
    PREVIOUS = "previous"  # production went back to the previous version
    STRANDED = "stranded"  # no earlier approved version: the assignment stays


def fall_back(slots: Slots[int], revoked: Set[int]) -> tuple[Slots[int], Fallback]:
    """The slots after revoking every version in ``revoked`` (pure).

    Returns:
        ``(slots, what happened)``. A revoked previous version is forgotten (never a
        rollback target); production never moves onto a revoked version.
    """
    current, outcome = slots, Fallback.NONE
    for _ in range(2):  # at most: drop the candidate, then move production back
        if current.candidate not in revoked and current.production not in revoked:
            break
        done = roll_back(current)
        if done is None or (done.kind is RollbackKind.PRODUCTION and done.to in revoked):
            outcome = Fallback.STRANDED
            break
        current = done.slots
        outcome = (
            Fallback.PREVIOUS
            if done.kind is RollbackKind.PRODUCTION
            else Fallback.CANDIDATE_DROPPED
        )
    if current.previous is not None and current.previous in revoked:
        current = replace(current, previous=None)
    return current, outcome


class Revocations:
    """Revoke a version: catalog, assignments, desired states and audit in one go.

    Args:
        ctx: sessions, clock and audit log.
        catalog: version rows.
        director: stages and signs the moved devices' desired states.
        approvals: the version's release request and role.
    """

    def __init__(
        self, ctx: HubContext, catalog: Catalog, director: Director, approvals: Approvals
    ) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._director = director
        self._approvals = approvals

    def revoke(
        self, name: str, version: int, *, reason: str, actor: str, ticket: str | None
    ) -> JSONDict:
        """Remove ``name`` ``version`` from the catalog and move its devices off it.

        Audited as ``model.revoke`` with the reason, the ticket and every device's move.
        Revoking again moves nothing new (the entry is written again).

        Returns:
            ``{"moved": {device: {"from": {...}, "to": {...}, "fallback"}},
            "stranded": [device ids], "aborted_rollouts": [rollout ids]}``: every
            unfinished rollout of the version is aborted in the same transaction.

        Raises:
            NotFoundError: no such version.
            InvalidInputError: a reason over :data:`MAX_REASON` characters.
            StorageError: the database failed, or the signing after the commit (it is
                redone at the next change or start-up).
        """
        if len(reason) > MAX_REASON:
            raise InvalidInputError(f"the reason is longer than {MAX_REASON} characters")
        now = self._ctx.now()
        rollout_id = f"revoke-{secrets.token_hex(4)}"
        with self._ctx.write() as s:
            model = self._catalog.model_row(s, name)
            row = self._catalog.version_row(s, name, version)
            row.revoked = True
            self._approvals.mark_revoked(s, name, version)
            s.flush()
            revoked = set(
                s.scalars(
                    select(db.ModelVersion.version).where(
                        db.ModelVersion.model_id == model.id, db.ModelVersion.revoked.is_(True)
                    )
                )
            )
            a = db.Assignment
            rows = s.scalars(
                select(a)
                .where(
                    a.model == name,
                    or_(
                        a.production_version == version,
                        a.candidate_version == version,
                        a.previous_version == version,
                    ),
                )
                .order_by(a.device_id)
            ).all()
            moved: dict[str, JSONDict] = {}
            stranded: list[str] = []
            for asg in rows:
                before = Slots(
                    asg.production_version,
                    asg.candidate_version,
                    asg.previous_version,
                    Mode(asg.mode),
                    asg.share,
                )
                after, outcome = fall_back(before, revoked)
                if outcome is Fallback.STRANDED:
                    stranded.append(asg.device_id)
                if after == before or after.production is None:
                    continue
                if (after.production, after.candidate) == (before.production, before.candidate):
                    # Only the rollback target went: the desired state is unchanged.
                    asg.previous_version = after.previous
                    continue
                asg.production_version, asg.candidate_version = after.production, after.candidate
                asg.previous_version, asg.mode, asg.share = (
                    after.previous,
                    after.mode.value,
                    after.share,
                )
                asg.rollout_id, asg.updated_at = rollout_id, now
                moved[asg.device_id] = {
                    "from": {"production": before.production, "candidate": before.candidate},
                    "to": {"production": after.production, "candidate": after.candidate},
                    "fallback": outcome.value,
                }
            self._director.stage(s, list(moved))
            aborted = self._abort_rollouts(s, name, version, reason, actor, ticket)
            self._ctx.audit(
                s,
                actor,
                "model.revoke",
                f"{name}/{version}",
                {
                    "reason": reason,
                    "moved": moved,
                    "stranded": stranded,
                    "rollout_id": rollout_id,
                    "aborted_rollouts": aborted,
                },
                ticket,
            )
        self._director.publish()
        self._approvals.publish()
        return {"moved": moved, "stranded": stranded, "aborted_rollouts": aborted}

    def _abort_rollouts(
        self,
        s: Session,
        name: str,
        version: int,
        reason: str,
        actor: str,
        ticket: str | None,
    ) -> list[str]:
        """Abort every unfinished rollout of the revoked version, in the revocation's
        transaction (each audited as ``rollout-abort``): a revoked version never starts
        another stage. Devices keep what the revocation left them."""
        rows = s.scalars(
            select(db.Rollout)
            .where(
                db.Rollout.model == name,
                db.Rollout.version == version,
                db.Rollout.state.not_in([t.value for t in TERMINAL]),
            )
            .order_by(db.Rollout.id)
        ).all()
        now = self._ctx.now()
        why = f"version revoked: {reason}" if reason else "version revoked"
        for row in rows:
            plan = parse_plan(row.plan)
            step = operator(plan, progress_of(row), "abort", now, reason=why)
            apply_step(
                self._ctx,
                self._director,
                s,
                row,
                plan,
                step,
                actor=actor,
                action="rollout-abort",
                ticket=ticket,
                details={"command": "abort", "operator_reason": why},
            )
        return [row.id for row in rows]
