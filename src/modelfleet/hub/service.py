"""The hub's operations: enrol devices, register versions, deploy, roll back, audit.

No HTTP in here: the API layer is a thin adapter over :class:`HubService`, a facade over
small collaborators that each own one concern:

* :class:`~modelfleet.hub.context.HubContext` - sessions, the write lock, the audit log;
* :class:`~modelfleet.hub.catalog.Catalog` - blobs, models, versions;
* :class:`~modelfleet.hub.fleet.Fleet` - tokens, devices, reports;
* :class:`~modelfleet.hub.deployments.Deployments` - deploy and rollback (pure rules);
* :class:`~modelfleet.hub.director.Director` - desired states, signing after the commit;
* :class:`~modelfleet.hub.audit_chain.AuditChain` - audit pages, verification, the signed
  head (ADR 0016);
* :class:`~modelfleet.hub.upkeep.Upkeep` - TUF serving, re-signing, GC, telemetry
  retention;
* :class:`~modelfleet.hub.telemetry.Telemetry` - telemetry ingest, summaries, retention;
* :class:`~modelfleet.hub.review.ReviewQueue` - review samples, labels, exports (issue 9);
* :class:`~modelfleet.hub.metrics.HubMetrics` - the ``/metrics`` registry;
* :class:`~modelfleet.hub.rollouts.Rollouts` - staged rollouts, operator commands, approval;
* :class:`~modelfleet.hub.controller.RolloutController` - the rollouts' ticks (issue 8);
* :class:`~modelfleet.hub.drift.Drift` - drift reports and states (issue 9);
* :class:`~modelfleet.hub.override_states.OverrideStates` - override-rate states (ADR 0040);
* :class:`~modelfleet.hub.webhooks.Webhooks` - webhook subscriptions and deliveries (issue 9).

Every state change commits together with its audit entry in one database transaction;
the TUF metadata is signed from the database *after* the commit, and whatever a crash
left unsigned is signed at start-up (see :mod:`modelfleet.hub.director`).

Return values are JSON-ready dicts (the same shapes the REST API serves):

* version: ``{"model", "version", "sha256", "length", "manifest_sha256",
  "manifest_length", "opset", "ir_version", "schema", "lineage", "smoke_vectors",
  "created_at", "created_by", "published", "revoked", "model_path", "manifest_path",
  "deployments": [{"device_id", "role": "production"|"candidate", "mode", "share",
  "rollout_id"}]}``
* model: ``{"name", "description", "created_at", "created_by", "latest_version",
  "versions": [version]}``
* device: ``{"id", "site", "tags", "created_at", "last_seen", "report",
  "assignments": [{"model", "production", "candidate", "previous", "mode", "share",
  "slo", "rollout_id"}], "desired_state": {"serial", "sha256", "length", "issued_at"}
  | None, "telemetry": {"last_at", "lag_s", "buffered", "evicted_total", "clock_skew_s",
  "skew_flagged", "highest_seq", "buffer_id"} | None}``
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelfleet.audit.log import AuditQuery
from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, StorageError
from modelfleet.hub import db
from modelfleet.hub._reports import report_changes
from modelfleet.hub._values import ALL_DEVICES, JSONDict, load_npy
from modelfleet.hub.approvals import Approvals
from modelfleet.hub.audit_anchor import WITNESS_NAME, WitnessFile, load_audit_signer
from modelfleet.hub.audit_chain import AuditChain
from modelfleet.hub.auth import Principal, Role, hash_token
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.config import HubConfig
from modelfleet.hub.context import HubContext
from modelfleet.hub.controller import RolloutController
from modelfleet.hub.deployments import Deployments
from modelfleet.hub.director import Director
from modelfleet.hub.drift import Drift
from modelfleet.hub.drift_rollups import DriftRollups, ProfileCache
from modelfleet.hub.fleet import Fleet
from modelfleet.hub.home import init_home
from modelfleet.hub.metrics import FleetGauges, HubMetrics, read_fleet_gauges
from modelfleet.hub.override_rollups import OverrideRollups
from modelfleet.hub.override_states import OverrideSettings, OverrideStates
from modelfleet.hub.review import ReviewQueue
from modelfleet.hub.revocation import Revocations
from modelfleet.hub.rollouts import Rollouts
from modelfleet.hub.telemetry import SummaryQuery, Telemetry
from modelfleet.hub.tuf_versions import DbRoleCounters
from modelfleet.hub.upkeep import GC_GRACE_S, Upkeep
from modelfleet.hub.webhooks import Webhooks
from modelfleet.monitoring.override_rate import OverridePolicy
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.rollout.desired_state import Mode
from modelfleet.trust._sign_pool import default_workers
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.keys import pin_handler

__all__ = ["ALL_DEVICES", "HubService", "init_home", "load_npy", "report_changes"]

_log = logging.getLogger(__name__)


def _override_settings(config: HubConfig) -> OverrideSettings:
    """The override-rate layer's settings from the hub config (ADR 0040)."""
    return OverrideSettings(
        policy=OverridePolicy(
            expected_rate=config.override_expected_rate, min_judged=config.override_min_judged
        )
    )


class HubService:
    """The hub's operations over its database, artefact store and TUF repositories.

    Args:
        config: the hub config; its home must be initialised (see :func:`init_home`).
        clock: time source for records and signatures.
        migrate_db: bring the database schema up to date first.

    Raises:
        ConfigError: the home is not initialised, its keys/metadata are unusable, or its
            TUF root is older than one already published.
        StorageError: the database cannot be reached or migrated, or the metadata lacks
            committed changes and cannot be signed.
    """

    def __init__(self, config: HubConfig, clock: Clock, *, migrate_db: bool = True) -> None:
        paths = config.paths
        if not paths.is_initialised():
            raise ConfigError(
                f"{paths.root} is not an initialised hub home; run `modelfleet init HOME`"
            )
        self.config = config
        self.clock = clock
        self.paths = paths
        self.engine = db.make_engine(config.database_url)
        try:
            if migrate_db:
                db.migrate(self.engine)
            sessions = db.make_sessionmaker(self.engine)
            self.context = HubContext(
                config,
                clock,
                self.engine,
                sessions,
                audit_signer=load_audit_signer(paths.keys, config.key_passphrase),  # issue 10
            )
            self.audit_chain = AuditChain(self.context, WitnessFile(paths.root / WITNESS_NAME))
            self.store = FileArtefactStore(paths.artefacts)
            self.trust = HubTrust.open(
                paths.tuf,
                paths.keys,
                clock,
                expiry=config.expiry,  # issue 11: per-site lifetimes
                counters=DbRoleCounters(sessions),
                signing_workers=default_workers(),
                passphrase=config.key_passphrase,  # issue 10: keys
                secrets=pin_handler(config.hsm_pin),
            )
            self.catalog = Catalog(self.context, self.store)
            self.director = Director(self.context, self.store, self.trust, self.catalog)
            self.deployments = Deployments(self.context, self.catalog, self.director)
            self.fleet = Fleet(self.context, self.deployments, self.director)
            self.metrics = HubMetrics(self._read_gauges, clock, config.metrics_cache_s)
            self.profiles = ProfileCache(self.store)
            self.drift = Drift(self.context, self.profiles)
            self.overrides = OverrideStates(self.context, _override_settings(config))
            self.telemetry = Telemetry(
                self.context, self.metrics, DriftRollups(self.profiles), OverrideRollups()
            )
            self.review = ReviewQueue(self.context, self._version_manifest)
            self.webhooks = Webhooks(self.context)
            self.upkeep = Upkeep(
                self.context,
                self.store,
                self.trust,
                self.catalog,
                self.director,
                self.telemetry,
                audit_chain=self.audit_chain,
                drift=self.drift,
                webhooks=self.webhooks,
                overrides=self.overrides,
            )
            self.rollouts = Rollouts(self.context, self.catalog, self.director)
            self.controller = RolloutController(self.context, self.director, profiles=self.profiles)
            # --- issue 10: approvals ---
            self.approvals = Approvals(self.context, self.catalog, self.trust, config.expiry)
            self.catalog.release_gate = self.approvals.gate
            self.revocations = Revocations(
                self.context, self.catalog, self.director, self.approvals
            )
            # --- end issue 10: approvals ---
            behind = self.trust.behind()
            if behind:
                _log.warning(
                    "the TUF store is older than what was published (%s); the next "
                    "signing goes above the published versions (ADR 0007)",
                    "; ".join(behind),
                )
            self.director.repair()
            self.approvals.publish()  # issue 10: approved releases a crash left unsigned
            self.audit_chain.adopt()
        except BaseException:
            if hasattr(self, "trust"):
                self.trust.close()
            self.engine.dispose()
            raise

    init_home = staticmethod(init_home)

    def close(self) -> None:
        """Write pending ``last_seen`` times, release database connections and stop
        signing processes."""
        try:
            self.fleet.flush_seen()
        except StorageError as e:  # closing must not fail on it
            _log.warning("last_seen of recent check-ins not written: %s", e)
        self.webhooks.close()
        self.trust.close()
        self.engine.dispose()

    def _read_gauges(self) -> FleetGauges:
        self.fleet.flush_seen()
        with self.context.read() as s:
            return read_fleet_gauges(s, self.clock.now(), self.config.stale_after_s)

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the hub's metrics (``GET /metrics``)."""
        return self.metrics.render()

    # -- tokens and devices --------------------------------------------------------------

    def create_token(self, role: Role | str, subject: str, actor: str) -> str:
        """Mint a token; only its hash is stored.

        Args:
            role: the token's role.
            subject: who holds it (a user name, or the device id for ``device``).
            actor: who asks (for the audit log).

        Returns:
            The token; it cannot be recovered later.

        Raises:
            InvalidInputError: unknown role or empty subject.
            NotFoundError: a device token for an unknown device.
        """
        return self.fleet.create_token(role, subject, actor)

    def authenticate(self, token: str | None) -> Principal:
        """Who holds ``token`` (a valid token's answer is reused for up to
        :data:`~modelfleet.hub.fleet.TOKEN_CACHE_TTL_S`: a revocation takes that long at most).

        Raises:
            UnauthenticatedError: no token, or not a valid, unrevoked one.
        """
        return self.fleet.authenticate(token)

    def add_device(
        self,
        device_id: str,
        site: str | None = "",
        tags: Sequence[str] | None = None,
        actor: str = "system",
        ticket: str | None = None,
    ) -> tuple[JSONDict, str]:
        """Enrol a device and mint its token.

        Returns:
            ``(device, token)``; the token is shown only this once.

        Raises:
            InvalidInputError: a malformed id, site or tags.
            ConflictError: the id is taken.
        """
        return self.fleet.add_device(device_id, site, tags, actor, ticket)

    def list_devices(self) -> list[JSONDict]:
        """Every device with its assignments, desired state and last report."""
        return self.fleet.list_devices()

    def get_device(self, device_id: str) -> JSONDict:
        """One device (see :meth:`list_devices`).

        Raises:
            NotFoundError: no such device.
        """
        return self.fleet.get_device(device_id)

    def record_report(self, device_id: str, report: Mapping[str, Any] | bytes) -> JSONDict:
        """Store a device's check-in report and apply the rollbacks it reports.

        ``report`` is the decoded object or its JSON bytes as received (the API passes
        bytes: they are parsed once).

        The report is kept as sent (the agent sends its state: ``applied_serial``,
        ``models`` ``{name: {"active"|"previous"|"candidate": {"version", ...} | None,
        "mode", "share"}}``, ``last_refusal``, ``events``, ``rollbacks``, ...). What the
        hub reads of it (see :func:`report_changes`) goes to the audit log when it
        changed. Each ``rollbacks`` event (issue 6 contract 2) is applied at most once,
        when the hub's assignment still matches it (audited as ``device-rollback``); the
        device's new desired state is signed after the commit. Stale events are recorded
        and ignored.

        Returns:
            ``{"applied_rollbacks": [event id, ...], "tuf": {"catalog": {"root", "timestamp"},
            "director": {"root", "timestamp"}}}``: the report's events applied now or
            earlier, and the current TUF versions (the director's timestamp is this
            device's own): an agent holding exactly these skips its TUF refresh (issue 8).

        Raises:
            NotFoundError: no such device.
            InvalidInputError: the report is not a JSON object (or not JSON).
            PayloadTooLargeError: the report exceeds ``max_report_bytes``.
        """
        outcome = self.fleet.record_report(device_id, report)
        self.metrics.checkins.inc()
        return outcome

    # --- issue 10: credentials ---

    def check_in(self, token: str | None, device_id: str, body: bytes | str) -> JSONDict:
        """The check-in as the bare ASGI route does it: token, permission, size, report
        (see :meth:`~modelfleet.hub.fleet.Fleet.check_in`; ``body`` as a string is why its
        size is refused)."""
        outcome = self.fleet.check_in(token, device_id, body)
        self.metrics.checkins.inc()
        return outcome

    def create_bootstrap_token(
        self,
        device_id: str,
        actor: str,
        *,
        site: str = "",
        tags: Sequence[str] = (),
        ttl_s: float | None = None,
    ) -> JSONDict:
        """A one-time bootstrap token enrolling ``device_id`` (ADR 0026); shown once."""
        return self.fleet.credentials.create_bootstrap(
            device_id, actor, site=site, tags=tags, ttl_s=ttl_s
        )

    def enrol_device(self, bootstrap_token: str | None, device_id: str | None) -> JSONDict:
        """Exchange a bootstrap token for the device's credential (once); a new device is
        enrolled and its empty director repository signed."""
        answer, new_device = self.fleet.credentials.enrol(bootstrap_token, device_id)
        if new_device:
            self.director.publish()
        return answer

    def rotate_credential(self, token: str | None, device_id: str) -> JSONDict:
        """A device renews its own credential (also an expired one, within the renewal
        window); the old one stays valid for the grace window."""
        return self.fleet.credentials.rotate(token, device_id)

    def revoke_credential(self, credential_id: str, actor: str, reason: str = "") -> JSONDict:
        """Revoke one device credential."""
        return self.fleet.credentials.revoke_credential(credential_id, actor, reason)

    def revoke_device(self, device_id: str, actor: str, reason: str = "") -> JSONDict:
        """Revoke every credential and token of a device."""
        return self.fleet.credentials.revoke_device(device_id, actor, reason)

    def decommission_device(self, device_id: str, actor: str, reason: str = "") -> JSONDict:
        """Revoke a device's credentials, remove its assignments and desired state."""
        return self.fleet.credentials.decommission(device_id, actor, reason)

    def media_access(self, site: str) -> dict[str, list[str]]:
        """Each device of ``site`` with the digests of its usable credentials (issue 11:
        what a removable-media bundle tells an offline site mirror)."""
        return self.fleet.credentials.media_access(site)

    def device_credentials(self, device_id: str | None = None) -> list[JSONDict]:
        """Device credentials (never their secrets), of one device or all."""
        return self.fleet.credentials.list(device_id)

    def credential_of(self, token: str) -> JSONDict | None:
        """The stored credential of a device credential string, or None."""
        return self.fleet.credentials.describe(hash_token(token))

    # --- end issue 10: credentials ---

    # -- telemetry -----------------------------------------------------------------------

    def ingest_telemetry(self, device_id: str, body: bytes) -> JSONDict:
        """Store a telemetry batch (wire format v1, :mod:`modelfleet.telemetry.wire`)
        sent by ``device_id``, in one transaction: every new record or none.

        Records already stored (same ``(device_id, buffer_id, seq)``) are duplicates:
        counted, not stored again, and a batch of only duplicates is still accepted (an
        agent killed after the hub stored but before it deleted can clear its buffer).
        The device's stream state is kept: last batch time, clock skew (hub time minus
        ``sent_at``, flagged beyond 300 s), highest seq, reported ``buffered`` and
        ``evicted_total``, newest window ``closed_at``.

        Args:
            device_id: the sending device (the caller checked the token).
            body: the batch JSON bytes as received.

        Returns:
            ``{"stored", "duplicates", "acked_through" (the batch's highest seq),
            "status": "recorded"}``.

        Raises:
            PayloadTooLargeError: over ``max_telemetry_bytes``; nothing stored.
            InvalidInputError: not JSON, or any record malformed; nothing stored.
            NotFoundError: no such device.
            StorageError: the database failed; nothing stored (the agent retries).
        """
        return self.telemetry.ingest(device_id, body)

    def telemetry_summary(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        model: str | None = None,
        version: str | None = None,
        role: str | None = None,
        site: str | None = None,
        tag: str | None = None,
        rollout_id: str | None = None,
        device_id: str | None = None,
    ) -> JSONDict:
        """Windows merged exactly over raw records and hourly roll-ups (what the rollout
        gates of issue 8 call in-process).

        A window counts when its device-time ``closed_at`` is in ``[since, until)``; a
        roll-up when its hour starts in it (so whole-hour ranges give the same totals
        before and after roll-up). Filters left None match anything; ``rollout_id=""``
        matches windows outside any rollout. ``tag`` and ``device_id`` filters see raw
        windows only (roll-ups are not kept per device; ADR 0011): then roll-ups in the
        range are left out and ``"partial"`` is True.

        Args:
            since: start (default: ``until`` minus 24 hours); naive times are UTC.
            until: end, exclusive (default: now).

        Returns:
            :meth:`WindowTotals.to_record` (``windows``, ``requests``, ``guard``,
            ``shadow``, ``cascade``, ``refusals``, ``updates``, histograms) plus
            ``"devices"`` (distinct), ``"error_rate"`` ((server errors + timeouts) /
            requests, None without requests), ``"latency_p50_s"``, ``"latency_p99_s"``
            (upper bucket edges; None when empty or above the last edge),
            ``"sources": {"windows", "rollups", "rollups_left_out"}``, ``"partial"`` and
            ``"query"`` (the query echoed).

        Raises:
            InvalidInputError: ``until`` is not after ``since``.
            StorageError: the database failed.
        """
        end = until if until is not None else self.clock.now()
        start = since if since is not None else end - timedelta(hours=24)
        query = SummaryQuery(
            since=start,
            until=end,
            model=model,
            version=version,
            role=role,
            site=site,
            tag=tag,
            rollout_id=rollout_id,
            device_id=device_id,
        )
        return self.telemetry.summary(query)

    # -- drift (issue 9) -----------------------------------------------------------------

    def drift_report(
        self,
        model: str,
        *,
        version: str | None = None,
        site: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> JSONDict:
        """The explained drift of one model version over a time range (ADR 0019): its
        drift roll-ups whose hour starts in ``[since, until)``, at ``site`` or every site,
        merged and evaluated against the version's reference profile.

        Args:
            model: the model.
            version: the version (decimal string); None: the version with the most rows
                in the range (the newest version when none has any).
            site: one site; None: all sites merged.
            since: start (default: ``until`` minus 24 hours); naive times are UTC.
            until: end, exclusive (default: now).

        Returns:
            ``{"model", "version", "site", "since", "until", "reference_profile",
            "rollups", "windows", "sites", "sketched", "versions" (rows per version in
            the range), "message", "score", "verdict" (drift | no_drift |
            insufficient_data), "band", "rows", "drifted", "tested", "rule", "policy",
            "inputs", "outputs" (per column: verdict, p_value, adjusted_p, psi and
            "results": every test's value, threshold, verdict, bins, epsilon, n),
            "prediction": {"verdict", "drifted"}, "overrides": {"overridden",
            "confirmed", "judged", "rate"}}``: the last is the operator-override layer,
            the answers of that version (at that site) a human overrode or confirmed in
            the range, as the agents counted them (rate None when none was judged). A
            version without a reference profile answers ``insufficient_data`` with
            ``"message"`` saying drift is not computed.

        Raises:
            InvalidInputError: a bad range (until not after since, over 400 days) or
                version.
            NotFoundError: no such model or version.
        """
        report = self.drift.report(model, version=version, site=site, since=since, until=until)
        report["overrides"] = self._override_layer(model, report, site)
        return report

    def _override_layer(self, model: str, report: JSONDict, site: str | None) -> JSONDict:
        """Overrides of the report's version over its range (ADR 0021), from telemetry."""
        version = report.get("version")
        counts: Mapping[str, Any] = {}
        if version is not None:
            totals = self.telemetry_summary(
                since=datetime.fromisoformat(str(report["since"])),
                until=datetime.fromisoformat(str(report["until"])),
                model=model,
                version=str(version),
                site=site,
            )
            counts = totals.get("overrides") or {}
        overridden, confirmed = int(counts.get("overridden", 0)), int(counts.get("confirmed", 0))
        judged = overridden + confirmed
        return {
            "overridden": overridden,
            "confirmed": confirmed,
            "judged": judged,
            "rate": overridden / judged if judged else None,
        }

    def drift_states(self, model: str | None = None, site: str | None = None) -> list[JSONDict]:
        """The sequential drift state of each (model, site) (filters: None matches any):
        ``[{"model", "site", "version", "state" (stable | warning | drifting),
        "statistic", "windows", "skipped", "drift_windows", "last_score", "last_rows",
        "period" (the last hour stepped), "changed_at", "updated_at"}]``."""
        return self.drift.states(model, site)

    def advance_drift(self) -> JSONDict:
        """Step the drift states over closed hours (the upkeep round runs it); see
        :meth:`modelfleet.hub.drift.Drift.advance`."""
        return self.drift.advance()

    def override_states(self, model: str | None = None, site: str | None = None) -> list[JSONDict]:
        """The override-rate state of each (model, site) (ADR 0040; filters: None matches
        any): ``[{"model", "site", "version", "state" (stable | warning | drifting),
        "statistic", "hours" (counted), "skipped" (too few judged answers), "high_hours"
        (hours above the baseline beyond noise), "last_rate", "last_excess", "last_judged",
        "baseline": {"rate", "source" (previous_version | expected), "version", "judged"},
        "period" (the last hour stepped), "changed_at", "updated_at"}]``."""
        return self.overrides.states(model, site)

    def advance_overrides(self) -> JSONDict:
        """Step the override-rate states over closed hours (the upkeep round runs it); see
        :meth:`modelfleet.hub.override_states.OverrideStates.advance`."""
        return self.overrides.advance()

    def device_windows(self, device_id: str, limit: int = 50) -> list[JSONDict]:
        """A device's most recent raw telemetry records, newest first (at most
        ``limit``, capped at 1000): each as sent, plus ``"buffer_id"`` and
        ``"received_at"`` (hub time).

        Raises:
            NotFoundError: no such device.
        """
        return self.telemetry.recent(device_id, limit)

    def apply_retention(self) -> JSONDict:
        """One bounded retention round (the upkeep round runs it): raw records received
        more than ``telemetry_raw_days`` ago are deleted, windows among them merged into
        their hourly roll-up first; roll-ups older than ``telemetry_rollup_days`` and
        device reports older than ``telemetry_raw_days`` (but each device's newest) are
        deleted; so are drift and override roll-ups older than ``telemetry_rollup_days`` and review
        samples (with their labels) received more than ``review_days`` ago. At most
        ``retention_batch`` rows per round in all, in short transactions; replicas take
        turns (advisory lock).

        Returns:
            ``{"rolled_up", "records_deleted", "rollups_deleted", "reports_deleted",
            "drift_rollups_deleted", "override_rollups_deleted", "review_samples_deleted", "more",
            "webhook_deliveries_deleted", "events_deleted"}`` (``more``: the budget ran out;
            the next round goes on). The last two: the outbox and webhook deliveries
            older than ``event_days`` (:meth:`Webhooks.apply_retention`).

        Raises:
            StorageError: the database failed (what committed stays consistent).
        """
        return self.upkeep.apply_retention()

    # -- blobs and versions --------------------------------------------------------------

    def put_blob(self, chunks: Iterable[bytes], actor: str) -> tuple[str, int]:
        """Stream a blob into the artefact store.

        Returns:
            ``(sha256, length)``.

        Raises:
            InvalidInputError: the upload is empty; nothing is stored.
            PayloadTooLargeError: more than ``max_upload_bytes``; nothing is kept.
            StorageError: the store is not writable.
        """
        return self.catalog.put_blob(chunks, actor)

    def register_version(
        self,
        name: str,
        model: bytes | str,
        sample_input: np.ndarray | str | None = None,
        *,
        actor: str,
        lineage: Mapping[str, Any] | None = None,
        ticket: str | None = None,
        decisions: Mapping[str, Mapping[str, Any]] | None = None,
        reference_profile: Mapping[str, Any] | None = None,
        anomaly_scorer: Mapping[str, Any] | None = None,
        target: Mapping[str, Any] | None = None,
    ) -> JSONDict:
        """Register the next immutable version of ``name`` (creating the model if new).

        The model is checked (ONNX, loadable by ONNX Runtime, tensor signature) and
        smoke vectors are recorded before anything is stored. A refused registration
        deletes the uploaded blobs it named when no version references them (audited
        as ``blob.discard``).

        Args:
            name: model name.
            model: ONNX bytes, or the sha256 of an uploaded blob.
            sample_input: rows to record smoke vectors from (array, or the sha256 of an
                uploaded ``.npy`` blob); generated from the schema if None.
            actor: who registers (for the audit log).
            lineage: free-form provenance (dataset digest, run id, commit...).
            ticket: change ticket.
            decisions: what each output decides, overriding the inferred ones, e.g.
                ``{"score": {"kind": "regression", "rtol": 0.05}}`` (kinds: label,
                argmax, regression, ignore); signed into the manifest.
            reference_profile: the drift reference profile the SDK built from the
                reference rows (``PackageProfile.to_dict``), signed into the manifest;
                None: drift will not be computed (the answer's ``drift`` says so).
            anomaly_scorer: the optional anomaly scorer
                (``AnomalyScorerSpec.to_dict``: ONNX bytes, digest, threshold), checked
                and signed into the manifest (issue 9).
            target: what the package needs of a device (issue 10): ``{"hardware": [tags
                all required], "execution_providers": [any one required]}``, signed into
                the manifest; devices that do not fit refuse it.

        Returns:
            The version (see the module docstring), plus ``drift``: the profile's digest
            and columns, or ``{"reference_profile": None, "message": …}``.

        Raises:
            InvalidModelError: not ONNX or not loadable; no version is created.
            InvalidInputError: a bad name, blob digest or sample input.
            SmokeTestError: the model does not reproduce its own outputs.
        """
        answer = self.catalog.register_version(
            name,
            model,
            sample_input,
            actor=actor,
            lineage=lineage,
            ticket=ticket,
            decisions=decisions,
            reference_profile=reference_profile,
            anomaly_scorer=anomaly_scorer,
            target=target,
        )
        if self.trust.catalog_targets_offline():
            # Staged now for the offline targets ceremony (ADR 0043), not at first deploy.
            self.director.publish()
        return answer

    def revoke_version(
        self,
        name: str,
        version: int,
        actor: str,
        ticket: str | None = None,
        reason: str = "",
    ) -> JSONDict:
        """Remove a version from the signed catalog; devices refuse it from then on.

        Devices using it fall back by the rollback rule (issue 10, ADR 0027): a candidate
        is dropped, a production goes back to its previous version; a device with no
        earlier unrevoked version keeps its assignment ("stranded"). Audited as
        ``model.revoke`` with ``reason``, the ticket and every move.

        Returns:
            The version (see the module docstring) plus ``fallback``: ``{"moved": {device:
            {"from", "to", "fallback"}}, "stranded": [device ids]}``.

        Raises:
            NotFoundError: no such version.
            InvalidInputError: a reason over 1024 characters.
            StorageError: the catalog could not be re-signed (it is at the next change).
        """
        fallback = self.revocations.revoke(name, version, reason=reason, actor=actor, ticket=ticket)
        return {**self.catalog.get_version(name, version), "fallback": fallback}

    def list_models(self) -> list[JSONDict]:
        """Every model: ``{"name", "description", "created_at", "latest_version", "versions"}``
        (``versions`` is the count)."""
        return self.catalog.list_models()

    def get_model(self, name: str) -> JSONDict:
        """A model and all its versions.

        Raises:
            NotFoundError: no such model.
        """
        return self.catalog.get_model(name)

    def get_version(self, name: str, version: int) -> JSONDict:
        """One version, with the devices it is deployed to and in which role.

        Raises:
            NotFoundError: no such model or version.
        """
        return self.catalog.get_version(name, version)

    def _version_manifest(self, name: str, version: int) -> PackageManifest:
        """The stored manifest of a version (the review queue reads its decisions)."""
        return PackageManifest.from_json(self.catalog.manifest_bytes(name, version))

    def manifest_bytes(self, name: str, version: int) -> bytes:
        """The stored package manifest JSON of a version.

        Raises:
            NotFoundError: no such model or version.
        """
        return self.catalog.manifest_bytes(name, version)

    # -- deployments ---------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        version: int,
        devices: Sequence[str] | Literal["all"],
        mode: Mode | str = Mode.FULL,
        share: float = 0.0,
        slo: Mapping[str, float] | None = None,
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """Assign a version to devices; commit, then sign their new desired states.

        ``full`` makes the version production (the old production is kept as the
        rollback target); ``split`` and ``shadow`` keep each device's production and add
        the version as candidate, taking ``share`` of the requests (split) or a
        mirrored sample of that share (shadow). The transitions are
        :func:`modelfleet.rollout.assignment.deploy`.

        Args:
            name, version: the package to deploy.
            devices: device ids, or ``"all"`` for every enrolled device.
            mode: ``full``, ``split`` or ``shadow``.
            share: candidate share in (0, 1] for split/shadow; ignored for full.
            slo: the device guard's SLO policy, e.g. ``{"p99_ms": 50, "error_rate": 0.01}``.
            actor: who deploys; ticket: change ticket.

        Returns:
            ``{"model", "version", "mode", "share", "slo", "rollout_id", "devices":
            [{"device_id", "production", "candidate", "mode", "share", "serial",
            "desired_state_sha256", "desired_state_length"}]}``

        Raises:
            NotFoundError: unknown model, version or device.
            InvalidInputError: bad mode/share/slo, a revoked version, or split/shadow on
                a device without a production version of this model.
            StorageError: the database failed, or signing after the commit failed (the
                committed deployment is signed at the next change or start-up).
        """
        return self.deployments.deploy(
            name, version, devices, mode, share, slo, actor=actor, ticket=ticket
        )

    def rollback(
        self,
        name: str,
        devices: Sequence[str] | Literal["all"],
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """Point devices back at their last good version of ``name`` (a new director
        assignment with a higher serial, never a metadata rollback).

        The rule is :func:`modelfleet.rollout.assignment.roll_back`: a device with a
        candidate drops it and keeps its production; a device without one goes back to
        the production it had before the last full deploy, and has no previous after.

        Args:
            devices: device ids, or ``"all"`` for every device that has ``name``.

        Returns:
            ``{"model", "rollout_id", "devices": [{"device_id", "production",
            "candidate", "mode", "share", "serial", "desired_state_sha256",
            "desired_state_length"}]}``

        Raises:
            NotFoundError: unknown model or device.
            InvalidInputError: a device has nothing of ``name`` to roll back to.
        """
        return self.deployments.rollback(name, devices, actor=actor, ticket=ticket)

    def set_model_safety(
        self, name: str, safety_classified: bool, *, actor: str, ticket: str | None = None
    ) -> JSONDict:
        """Mark a model safety-classified (or not): its rollouts then need a change ticket
        and a second person's approval (issue 8). Audited as ``model.safety``.

        Returns:
            The model (see :meth:`get_model`), with ``safety_classified``.

        Raises:
            NotFoundError: no such model.
        """
        return self.catalog.set_safety_classified(name, safety_classified, actor, ticket)

    # -- rollouts (issue 8) --------------------------------------------------------------

    def create_rollout(self, plan: object, *, actor: str) -> JSONDict:
        """Create a rollout from a plan document (the YAML shape after ``safe_load``, or
        ``RolloutPlan.to_dict()``; see :mod:`modelfleet.rollout.plan`).

        The selector is resolved to the enrolled devices now and each device's cohort
        stored. A safety-classified model's rollout needs ``change.ticket`` and waits in
        ``awaiting_approval`` for :meth:`approve_rollout`; any other is ``running`` and the
        controller starts its first stage. Audited as ``rollout-create``.

        Returns:
            The rollout's view (see :mod:`modelfleet.hub.rollouts`).

        Raises:
            InvalidInputError: a bad plan, no matching device, a revoked version, no ticket
                for a safety-classified model, split/shadow on a device without production.
            NotFoundError: unknown model, version, or an explicitly named device.
            ConflictError: a target device is in an unfinished rollout of the same model.
        """
        return self.rollouts.create(plan, actor)

    def list_rollouts(
        self, *, state: str | None = None, model: str | None = None, limit: int = 100
    ) -> list[JSONDict]:
        """Rollouts, newest first: summaries (see :mod:`modelfleet.hub.rollouts`).

        Raises:
            InvalidInputError: an unknown state.
        """
        return self.rollouts.list_rollouts(state, model, limit)

    def get_rollout(self, rollout_id: str) -> JSONDict:
        """One rollout's view: stage, devices per state, the last gate evaluation, history.

        Raises:
            NotFoundError: no such rollout.
        """
        return self.rollouts.get(rollout_id)

    def rollout_evaluations(self, rollout_id: str, limit: int = 50) -> list[JSONDict]:
        """A rollout's stored gate evaluations with their evidence, newest first.

        Raises:
            NotFoundError: no such rollout.
        """
        return self.rollouts.evaluations(rollout_id, limit)

    def rollout_command(
        self,
        rollout_id: str,
        command: str,
        *,
        actor: str,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> JSONDict:
        """An operator's ``pause``, ``resume``, ``promote``, ``rollback`` or ``abort``
        (:func:`modelfleet.rollout.stages.operator`), applied and audited in one
        transaction (``rollout-<command>``), signed after the commit.

        Returns:
            The rollout's view.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the command is not allowed in the rollout's state.
            InvalidInputError: an unknown command.
        """
        return self.rollouts.command(rollout_id, command, actor, reason, ticket)

    def approve_rollout(
        self,
        rollout_id: str,
        approver: Principal,
        *,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> JSONDict:
        """Approve a safety-classified model's rollout (``rollout-approve``): it runs from
        then on, and the controller starts its first stage in the change window.

        Raises:
            ForbiddenError: the principal lacks the approver role, or created the rollout.
            ConflictError: the rollout is not awaiting approval.
            NotFoundError: no such rollout.
        """
        return self.rollouts.approve(rollout_id, approver, reason, ticket)

    def tick_rollouts(self) -> list[JSONDict]:
        """One controller pass over the running rollouts (the ``hub serve`` thread calls it
        while this process holds the controller lease).

        Returns:
            ``[{"rollout_id", "action", "stage", "state", "reason"}]`` for each rollout changed.
        """
        return self.controller.tick()

    # -- audit and upkeep ----------------------------------------------------------------

    def audit(self, after_seq: int = 0, limit: int = 100) -> list[JSONDict]:
        """Audit entries with ``seq > after_seq``, oldest first, at most ``limit``
        (capped by ``audit_page_limit``): ``{"seq", "at", "actor", "action", "subject",
        "ticket", "details", "prev_hash", "hash"}``."""
        return self.audit_chain.entries(after_seq, limit)

    def audit_page(self, query: AuditQuery) -> JSONDict:
        """One page of the audit log: newest first below ``query.before_seq`` (or oldest
        first above ``query.after_seq``), filtered by time, subject, actor and action.

        Returns:
            ``{"entries": [entry], "next_before_seq": int | None, "next_after_seq": int |
            None}``; the cursor is set when another page follows (pass it back as
            ``before_seq`` / ``after_seq``). ``limit`` is capped by ``audit_page_limit``.

        Raises:
            InvalidInputError: both cursors given, or a naive ``since``.
        """
        return self.audit_chain.page(query)

    def audit_verify(self) -> JSONDict:
        """Check the chain against its signed head and the home's checkpoint file.

        Returns:
            ``{"ok", "entries", "head": {"seq", "hash"}, "problem": {"seq", "kind",
            "detail"} | None, "keyid"}``: ``entries`` checked good, ``head`` the recorded
            head (the last entry when there is no head record); kinds are those of
            :class:`~modelfleet.audit.verify.ProblemKind` (edited, inserted, deleted,
            truncated, head, rolled-back). A clean check moves the checkpoint file forward.
        """
        return self.audit_chain.verify()

    def verify_audit(self) -> int | None:
        """The ``seq`` of the audit chain's first problem, or None if it is intact
        (see :meth:`audit_verify` for the whole report)."""
        problem = self.audit_chain.verify()["problem"]
        return None if problem is None else int(problem["seq"])

    def audit_anchor(self) -> JSONDict:
        """The chain's signed head for an export: ``{"checkpoint": {"seq", "hash", "at",
        "keyid", "signature"} | None, "public_key": {"keytype", "keyid", "public"},
        "witness": checkpoint | None}``."""
        return self.audit_chain.anchor()

    def trust_root(self) -> bytes:
        """The trust-root bundle devices bootstrap from."""
        return self.upkeep.trust_root()

    def refresh_expiring(self) -> list[str]:
        """The periodic upkeep round: sign committed changes the metadata lacks, re-sign
        TUF roles close to expiry, and collect garbage (at most hourly).

        Returns:
            ``"<repo>/<role>"`` of each role re-signed for expiry.
        """
        self.fleet.flush_seen()
        return self.upkeep.refresh_expiring()

    def collect_garbage(self, *, older_than_s: float = GC_GRACE_S) -> JSONDict:
        """Delete unreferenced blobs older than ``older_than_s`` seconds.

        Returns:
            ``{"deleted", "deleted_count", "freed_bytes", "kept_recent",
            "staging_removed"}`` (see :meth:`Upkeep.collect_garbage`).

        Raises:
            InvalidInputError: a negative or non-finite ``older_than_s``.
        """
        return self.upkeep.collect_garbage(older_than_s=older_than_s)

    def tuf_metadata(self, repo: str, filename: str) -> Path:
        """The metadata file behind ``GET /tuf/<repo>/metadata/<filename>``.

        Raises:
            NotFoundError: unknown repository or file.
        """
        return self.upkeep.tuf_metadata(repo, filename)

    def tuf_target(self, repo: str, url_path: str) -> Path:
        """The blob behind ``GET /tuf/<repo>/targets/<dir>/<sha256>.<name>``.

        Raises:
            NotFoundError: the path is not a target listed now with that hash.
        """
        return self.upkeep.tuf_target(repo, url_path)

    def tuf_device_metadata(self, device_id: str, filename: str) -> bytes:
        """The bytes behind ``GET /tuf/director/devices/<id>/metadata/<filename>``: the
        director's shared root, or the device's own timestamp, snapshot or targets
        (issue 8, ADR 0014).

        Raises:
            NotFoundError: no such file for this device.
        """
        return self.director.metadata(device_id, filename)

    def director_target(self, url_path: str) -> bytes:
        """The desired-state bytes behind
        ``GET /tuf/director/targets/devices/<id>/<sha256>.desired-state.json``.

        Raises:
            NotFoundError: not what the device's signed targets lists now.
        """
        return self.upkeep.director_target(url_path)
