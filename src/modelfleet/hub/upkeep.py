"""The hub's upkeep: the trust root and TUF files it serves, re-signing before expiry,
blob garbage collection, and moving the audit checkpoint file forward.

:meth:`Upkeep.refresh_expiring` is the periodic round (the API's background task calls
it): it first signs committed changes the metadata lacks
(:meth:`~modelfleet.hub.director.Director.repair`), then re-signs roles close to expiry,
then collects garbage at most once per :data:`GC_INTERVAL_S`, then runs one bounded round
of telemetry retention (:meth:`~modelfleet.hub.telemetry.Telemetry.apply_retention`), then
steps the drift states over closed hours (:meth:`~modelfleet.hub.drift.Drift.advance`) and
the override-rate states beside them (:meth:`~modelfleet.hub.override_states.
OverrideStates.advance`, ADR 0040), then
copies the audit chain's signed head to the home's checkpoint file
(:meth:`~modelfleet.hub.audit_chain.AuditChain.advance_witness`, ADR 0016).
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from pathlib import Path

from modelfleet.catalog.artefacts import FileArtefactStore, is_sha256
from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub._values import JSONDict
from modelfleet.hub.audit_chain import AuditChain
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.context import HubContext
from modelfleet.hub.director import Director
from modelfleet.hub.drift import Drift
from modelfleet.hub.override_states import OverrideStates
from modelfleet.hub.telemetry import Telemetry
from modelfleet.hub.webhooks import Webhooks
from modelfleet.trust.bundle import REPOSITORIES
from modelfleet.trust.hub_trust import HubTrust

__all__ = ["GC_GRACE_S", "GC_INTERVAL_S", "Upkeep"]

log = logging.getLogger(__name__)

GC_GRACE_S = 3600.0
"""Unreferenced blobs younger than this are kept: an upload waits for its registration."""

GC_INTERVAL_S = 3600.0
"""How often the upkeep round collects garbage."""

_MAX_LOGGED = 100


class Upkeep:
    """TUF serving and housekeeping.

    Args:
        ctx: the hub's sessions, clock and audit log.
        store: the artefact store.
        trust: the signed repositories.
        catalog: which blobs versions and desired states reference.
        director: signs what the database has and the metadata lacks.
        telemetry: applies the telemetry and report retention each round.
        audit_chain: moves the audit checkpoint file forward each round (None: not).
        drift: steps the drift states over closed hours each round (None: not; issue 9).
        webhooks: their retention runs with the telemetry's (None: not).
        overrides: steps the override-rate states over closed hours each round, right
            after the drift states (None: not; ADR 0040).
    """

    def __init__(
        self,
        ctx: HubContext,
        store: FileArtefactStore,
        trust: HubTrust,
        catalog: Catalog,
        director: Director,
        telemetry: Telemetry,
        audit_chain: AuditChain | None = None,
        drift: Drift | None = None,
        webhooks: Webhooks | None = None,
        overrides: OverrideStates | None = None,
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._trust = trust
        self._catalog = catalog
        self._director = director
        self._telemetry = telemetry
        self._audit_chain = audit_chain
        self._drift = drift
        self._webhooks = webhooks
        self._overrides = overrides
        self._last_gc: float | None = None

    def apply_retention(self) -> JSONDict:
        """One bounded retention round: telemetry (see ``HubService.apply_retention``),
        then the events outbox and webhook deliveries older than ``event_days``."""
        done = self._telemetry.apply_retention()
        if self._webhooks is not None:
            cfg = self._ctx.config
            cutoff = self._ctx.now() - timedelta(days=cfg.event_days)
            gone = self._webhooks.apply_retention(cutoff, cfg.retention_batch)
            if any(gone.values()):
                log.info("webhook retention: %s", gone)
            done.update(gone)
        return done

    # -- TUF -----------------------------------------------------------------------------

    def trust_root(self) -> bytes:
        """The trust-root bundle devices bootstrap from."""
        return self._trust.trust_root_bundle()

    def refresh_expiring(self) -> list[str]:
        """One upkeep round: repair, re-sign roles close to expiry, maybe collect garbage,
        then one bounded round of telemetry retention, then the audit checkpoint file.

        Returns:
            ``"<repo>/<role>"`` of each role re-signed for expiry, and
            ``"director/devices: N"`` when N devices' own roles were (audited as
            ``tuf.refresh``).

        Raises:
            StorageError: the metadata or the database could not be written.
        """
        self._director.repair()
        done = self._trust.refresh_expiring()
        if done:
            self._director.forget_versions()
        devices = self._director.refresh_expiring()
        if devices:
            done.append(f"director/devices: {devices}")
        if done:
            with self._ctx.write() as s:
                self._ctx.audit(s, "system:refresh", "tuf.refresh", "tuf", {"roles": done})
        mono = self._ctx.clock.monotonic()
        if self._last_gc is None or mono - self._last_gc >= GC_INTERVAL_S:
            self._last_gc = mono
            self.collect_garbage(older_than_s=GC_GRACE_S)
        self.apply_retention()  # bounded; what is left goes in the next round
        if self._drift is not None:
            self._drift.advance()
        if self._overrides is not None:
            self._overrides.advance()
        if self._audit_chain is not None:
            self._audit_chain.advance_witness()
        return done

    def tuf_metadata(self, repo: str, filename: str) -> Path:
        """See ``HubService.tuf_metadata``."""
        path = self._trust.metadata_path(repo, filename)
        if path is None or not path.is_file():
            raise NotFoundError(f"no metadata {repo}/{filename}")
        return path

    def director_target(self, url_path: str) -> bytes:
        """See ``HubService.director_target``."""
        dirname, _, filename = url_path.rpartition("/")
        prefix, _, device_id = dirname.partition("/")
        digest, _, basename = filename.partition(".")
        if prefix != "devices" or not device_id or "/" in device_id:
            raise NotFoundError(f"no target director/{url_path}")
        if basename != "desired-state.json" or not is_sha256(digest):
            raise NotFoundError(f"no target director/{url_path}")
        return self._director.target(device_id, digest)

    def tuf_target(self, repo: str, url_path: str) -> Path:
        """See ``HubService.tuf_target``."""
        digest = self._trust.target_digest(repo, url_path)
        if digest is None:
            raise NotFoundError(f"no target {repo}/{url_path}")
        return self._store.path(digest)

    # -- garbage -------------------------------------------------------------------------

    def collect_garbage(self, *, older_than_s: float = GC_GRACE_S) -> JSONDict:
        """Delete blobs nothing references that are older than ``older_than_s`` (defect 5).

        Referenced: every version's model and manifest, every device's current desired
        state, and whatever either signed repository lists now. Age is the blob file's
        modification time against the hub's clock. Unfinished uploads in the store's
        staging folder older than the grace period go too.

        Returns:
            ``{"deleted": [digest, ...] (at most 100 shown), "deleted_count", "freed_bytes",
            "kept_recent", "staging_removed"}``; audited as ``blob.gc`` when anything went.

        Raises:
            InvalidInputError: ``older_than_s`` is negative or not finite.
            StorageError: the database or the store failed.
        """
        if not (isinstance(older_than_s, (int, float)) and math.isfinite(older_than_s)):
            raise InvalidInputError("older_than_s must be a finite number of seconds")
        if older_than_s < 0:
            raise InvalidInputError("older_than_s must not be negative")
        cutoff = self._ctx.now().timestamp() - float(older_than_s)
        listed: set[str] = set()
        for repo in REPOSITORIES:
            r = self._trust.repository(repo)
            for p in r.target_paths():
                tf = r.target(p)
                if tf is not None and "sha256" in tf.hashes:
                    listed.add(tf.hashes["sha256"])
        deleted: list[str] = []
        freed = kept_recent = 0
        # In a write transaction: no registration or deployment can start referencing a
        # blob between the check and the deletion.
        with self._ctx.write() as s:
            keep = self._catalog.referenced_blobs(s) | listed | self._director.listed_blobs(s)
            for digest, mtime in list(self._store.blobs()):
                if digest in keep:
                    continue
                if mtime >= cutoff:
                    kept_recent += 1
                    continue
                try:
                    size = self._store.path(digest).stat().st_size
                except (NotFoundError, OSError):
                    continue
                if self._store.delete(digest):
                    deleted.append(digest)
                    freed += size
            staging = self._store.stale_staging(cutoff)
            for f in staging:
                f.unlink(missing_ok=True)
            result: JSONDict = {
                "deleted": sorted(deleted)[:_MAX_LOGGED],
                "deleted_count": len(deleted),
                "freed_bytes": freed,
                "kept_recent": kept_recent,
                "staging_removed": len(staging),
            }
            if deleted or staging:
                self._ctx.audit(s, "system:gc", "blob.gc", "artefacts", result)
        return result
