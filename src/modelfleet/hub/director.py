"""Desired states and signing: the database first, the TUF metadata after the commit.

A change to what devices should run is two steps (issue 6, "sign after commit"):

1. :meth:`Director.stage`, inside the change's transaction, builds each device's new
   desired state from its assignments, stores the blob and bumps the device's serial in
   ``desired_states``; it commits with the change and its audit entry.
2. :meth:`Director.publish`, after the commit, makes the signed repositories say what the
   database says: the catalog lists every published, unrevoked version, then the director
   lists every device's current desired state. The database is read under the metadata
   lock, so a slower writer never signs an older state over a newer one.

A crash between the two leaves the database ahead of the metadata, never behind: the
director cannot list a serial the database would reissue with other content.
:meth:`publish` signs whatever is missing, so it repairs that on the next change, at
start-up (``HubService`` calls :meth:`repair`), and on each upkeep round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.hub import db
from modelfleet.hub.catalog import CATALOG_PREFIX, Catalog
from modelfleet.hub.context import HubContext
from modelfleet.rollout.desired_state import (
    ArtefactRef,
    DesiredState,
    Mode,
    desired_state_target_path,
)
from modelfleet.rollout.desired_state import Assignment as DesiredAssignment
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.repository import TargetSpec

__all__ = ["DIRECTOR_PREFIX", "Director", "StagedState"]

DIRECTOR_PREFIX = "devices/"
"""Every director target path starts with this (see :func:`desired_state_target_path`)."""

StagedState = tuple[str, int, int]
"""``(sha256, length, serial)`` of a device's desired state."""

_log = logging.getLogger(__name__)


class Director:
    """Builds desired states in the database and signs both repositories from it.

    Args:
        ctx: the hub's sessions and clock.
        store: where desired-state blobs go.
        trust: the signed repositories.
        catalog: version lookups, and what the catalog repository must list.
    """

    def __init__(
        self, ctx: HubContext, store: FileArtefactStore, trust: HubTrust, catalog: Catalog
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._trust = trust
        self._catalog = catalog

    def stage(self, s: Session, device_ids: Iterable[str]) -> dict[str, StagedState]:
        """Build and store each device's next desired state from its assignments (in the
        caller's transaction; nothing is signed).

        Returns:
            ``{device id: (sha256, length, serial)}``.
        """
        now = self._ctx.now()
        refs: dict[tuple[str, int], ArtefactRef] = {}

        def ref(model: str, version: int) -> ArtefactRef:
            if (model, version) not in refs:
                v = self._catalog.version_row(s, model, version)
                refs[model, version] = ArtefactRef(
                    model, version, v.sha256, v.length, v.manifest_sha256, v.manifest_length
                )
            return refs[model, version]

        s.flush()
        out: dict[str, StagedState] = {}
        for device_id in device_ids:
            rows = s.scalars(
                select(db.Assignment)
                .where(db.Assignment.device_id == device_id)
                .order_by(db.Assignment.model)
            ).all()
            assignments = tuple(
                DesiredAssignment(
                    model=a.model,
                    production=ref(a.model, a.production_version),
                    candidate=ref(a.model, a.candidate_version)
                    if a.candidate_version is not None
                    else None,
                    mode=Mode(a.mode),
                    share=a.share,
                    slo={k: float(v) for k, v in a.slo.items()},
                    rollout_id=a.rollout_id,
                )
                for a in rows
            )
            state_row = s.get(db.DeviceState, device_id)
            serial = state_row.serial + 1 if state_row else 1
            raw = DesiredState(
                device_id=device_id,
                serial=serial,
                assignments=assignments,
                issued_at=now.astimezone(UTC).isoformat(),
            ).to_json()
            digest = self._store.put_bytes(raw)
            if state_row is None:
                s.add(
                    db.DeviceState(
                        device_id=device_id,
                        serial=serial,
                        sha256=digest,
                        length=len(raw),
                        issued_at=now,
                    )
                )
            else:
                state_row.serial, state_row.sha256 = serial, digest
                state_row.length, state_row.issued_at = len(raw), now
            out[device_id] = (digest, len(raw), serial)
        return out

    def publish(self) -> list[str]:
        """Sign what the database says, after its commit: the catalog first (desired states
        name its targets), then the director. Idempotent; signs nothing when in step.

        Returns:
            The repositories that got a new targets version (``"catalog"``, ``"director"``).

        Raises:
            StorageError: the database cannot be read or the metadata written; the
                committed change is signed by the next successful :meth:`publish`.
        """
        done = []
        if self._trust.sync("catalog", CATALOG_PREFIX, self._catalog_targets):
            done.append("catalog")
        if self._trust.sync("director", DIRECTOR_PREFIX, self._director_targets):
            done.append("director")
        return done

    def repair(self) -> list[str]:
        """:meth:`publish`, logging what was behind (at start-up and each upkeep round)."""
        done = self.publish()
        if done:
            _log.warning("signed committed changes the TUF metadata lacked: %s", ", ".join(done))
        return done

    def _catalog_targets(self) -> dict[str, TargetSpec]:
        with self._ctx.read() as s:
            return self._catalog.signed_targets(s)

    def _director_targets(self) -> dict[str, TargetSpec]:
        with self._ctx.read() as s:
            return {
                desired_state_target_path(r.device_id): (r.length, r.sha256, None)
                for r in s.scalars(select(db.DeviceState))
            }
