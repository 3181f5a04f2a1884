"""The hub's telemetry (issue 7): ingest of device batches, summaries, recent records, and
retention (raw windows, hourly roll-ups, device reports). See ADR 0011.

Ingest checks a batch with :func:`modelfleet.telemetry.wire.parse_batch` before anything
touches the database, then stores it in one transaction: a bulk ``INSERT ... ON CONFLICT
DO NOTHING RETURNING seq`` (no ORM object per record), and the device's stream state.
Either every new record of a batch is stored or none is. A record already stored (same
``(device_id, buffer_id, seq)``) is a duplicate, counted and not stored again.

Summaries merge raw windows and roll-ups exactly with :class:`~modelfleet.telemetry.wire.
WindowTotals`: counters and histogram buckets add up to the same integers whether the
windows are still raw or already rolled up (histogram sums are floats, equal up to
rounding). Roll-ups are keyed ``(hour, model, version, role, site, rollout_id)``; a tag
or device filter therefore sees raw windows only, and the answer says when roll-ups in
the range were left out (``"partial": true``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import Table, and_, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from modelfleet.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from modelfleet.hub import db, locks, review
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.context import HubContext
from modelfleet.hub.drift_rollups import DriftRollups
from modelfleet.hub.metrics import HubMetrics
from modelfleet.hub.override_rollups import OverrideRollups
from modelfleet.hub.review_formats import slim
from modelfleet.telemetry.wire import OUTCOME_KEYS, Batch, WindowTotals, parse_batch

__all__ = [
    "MAX_RECENT",
    "SKEW_FLAG_S",
    "SummaryQuery",
    "Telemetry",
    "telemetry_view",
]

log = logging.getLogger("modelfleet.hub")

#: A device whose last batch was sent more than this far from the hub's time is flagged.
SKEW_FLAG_S: Final = 300.0
#: Most records :meth:`Telemetry.recent` answers.
MAX_RECENT: Final = 1000
#: Records rolled up or deleted per retention transaction (short transactions).
_CHUNK: Final = 5000
_INT64_MAX: Final = 2**63 - 1
_MAX_COLUMN: Final = 256
_HOUR: Final = timedelta(hours=1)
#: A stored window record and its hour's time, as the roll-ups take it.
_Window = tuple[Mapping[str, Any], datetime]


def _records_table() -> Table:
    table = db.TelemetryRecord.__table__
    assert isinstance(table, Table)
    return table


@dataclass(frozen=True)
class SummaryQuery:
    """What :meth:`Telemetry.summary` merges: windows whose device-time ``closed_at`` is in
    ``[since, until)`` (a roll-up counts in its hour's start) and that match every filter
    given (None: any)."""

    since: datetime
    until: datetime
    model: str | None = None
    version: str | None = None
    role: str | None = None
    site: str | None = None
    tag: str | None = None
    rollout_id: str | None = None
    device_id: str | None = None

    def echo(self) -> JSONDict:
        """The query as JSON (times ISO 8601 UTC)."""
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "model": self.model,
            "version": self.version,
            "role": self.role,
            "site": self.site,
            "tag": self.tag,
            "rollout_id": self.rollout_id,
            "device_id": self.device_id,
        }


def _utc(at: datetime, what: str) -> datetime:
    try:
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError as e:
        raise InvalidInputError(f"{what} is out of range") from e


def _short(value: Any) -> str | None:
    """A string field fit for an indexed column, else None (it stays in the body)."""
    if isinstance(value, str) and 0 < len(value) <= _MAX_COLUMN and "\x00" not in value:
        return value
    return None


def _device_time(record: Mapping[str, Any]) -> datetime | None:
    value = record.get("closed_at") if record.get("kind") == "window" else record.get("at")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError) as e:
        if record.get("kind") in ("window", "event"):  # checked by parse_batch: only overflow
            raise InvalidInputError(f"record {record.get('seq')}: time out of range") from e
        return None


def telemetry_view(row: db.DeviceTelemetry | None, now: datetime) -> JSONDict | None:
    """The ``"telemetry"`` object of a device (issue 7 contract 2), None before its first
    batch. ``lag_s`` is the hub's time minus the newest window ``closed_at`` received."""
    if row is None:
        return None
    lag = None if row.newest_closed_at is None else (now - row.newest_closed_at).total_seconds()
    return {
        "last_at": _iso(row.last_at),
        "lag_s": lag,
        "buffered": row.buffered,
        "evicted_total": row.evicted_total,
        "clock_skew_s": row.clock_skew_s,
        "skew_flagged": row.skew_flagged,
        "highest_seq": row.highest_seq,
        "buffer_id": row.buffer_id,
    }


class Telemetry:
    """Telemetry ingest, queries and retention.

    Args:
        ctx: the hub's sessions and clock.
        metrics: the counters ingest updates.
        drift: merges the drift counts of stored windows into their roll-ups in the ingest
            transaction (issue 9, :mod:`modelfleet.hub.drift_rollups`); None: not.
        overrides: adds the operator overrides of stored windows into their hourly
            roll-ups in the ingest transaction (ADR 0040, :mod:`modelfleet.hub.
            override_rollups`); None: not.
    """

    def __init__(
        self,
        ctx: HubContext,
        metrics: HubMetrics,
        drift: DriftRollups | None = None,
        overrides: OverrideRollups | None = None,
    ) -> None:
        self._ctx = ctx
        self._metrics = metrics
        self._drift = drift
        self._overrides = overrides

    # -- ingest --------------------------------------------------------------------------

    def ingest(self, device_id: str, body: bytes) -> JSONDict:
        """See ``HubService.ingest_telemetry``."""
        try:
            batch = self._parse(device_id, body)
        except InvalidInputError:
            self._metrics.batches.labels("invalid").inc()
            raise
        now = self._ctx.now()
        samples = review.check_samples(batch)  # issue 9: the review queue's records
        rows, device_times = self._rows(batch, now)
        with self._ctx.telemetry_write() as s:
            site = s.execute(
                select(db.Device.site)
                .where(db.Device.id == device_id)
                .with_for_update(key_share=True)  # batches of one device one at a time
            ).scalar()
            if site is None:
                raise NotFoundError(f"no device {device_id!r}")
            for row in rows:
                row["site"] = site
            stored = self._insert(s, rows)
            if samples:
                limit = self._ctx.config.review_queue_limit
                review.store_samples(s, device_id, samples, stored, site, now, limit)
            self._update_stream(s, batch, now, device_times)
            drift = self._roll_up(s, site, batch, stored, device_times, now)
        self._count(batch, stored, now, device_times)
        for result, n in drift.items():
            if n:
                self._metrics.drift_windows.labels(result).inc(n)
        return {
            "stored": len(stored),
            "duplicates": len(rows) - len(stored),
            "acked_through": max(int(r["seq"]) for r in batch.records),
            "status": "recorded",
        }

    def _roll_up(
        self,
        s: Session,
        site: str,
        batch: Batch,
        stored: set[int],
        window_times: Mapping[int, datetime],
        now: datetime,
    ) -> dict[str, int]:
        """The windows just stored, added into their roll-ups in the ingest transaction:
        their drift counts (issue 9), then their overrides (ADR 0040).

        Returns:
            The drift roll-ups' count of windows per result (for the metrics).
        """

        def carrying(has: Callable[[Mapping[str, Any]], bool]) -> list[_Window]:
            return [
                (r, window_times[r["seq"]])
                for r in batch.records
                if r["seq"] in stored and r["seq"] in window_times and has(r)
            ]

        drift: dict[str, int] = {}
        if self._drift is not None:
            windows = carrying(lambda r: "profile" in r)
            if windows:
                drift = self._drift.add(s, site, windows, now)
        if self._overrides is not None:
            windows = carrying(lambda r: bool(r.get("overrides")))
            if windows:
                self._overrides.add(s, site, windows, now)
        return drift

    def _parse(self, device_id: str, body: bytes) -> Batch:
        limit = self._ctx.config.max_telemetry_bytes
        if len(body) > limit:
            raise PayloadTooLargeError(f"the telemetry batch exceeds the limit of {limit} bytes")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInputError(f"the telemetry batch is not valid JSON: {e}") from e
        batch = parse_batch(doc, device_id)
        for n in (batch.buffered, batch.evicted_total, *(r["seq"] for r in batch.records)):
            if n > _INT64_MAX:
                raise InvalidInputError("a seq or counter of the batch exceeds 2**63 - 1")
        _utc(batch.sent_at, "sent_at")
        return batch

    @staticmethod
    def _rows(batch: Batch, now: datetime) -> tuple[list[dict[str, Any]], dict[int, datetime]]:
        rows: list[dict[str, Any]] = []
        window_times: dict[int, datetime] = {}
        for r in batch.records:
            kind = r["kind"]
            at = _device_time(r)
            if kind == "window" and at is not None:
                window_times[r["seq"]] = at
            rows.append(
                {
                    "device_id": batch.device_id,
                    "buffer_id": batch.buffer_id,
                    "seq": r["seq"],
                    "kind": kind,
                    "model": _short(r.get("model")),
                    "version": _short(r.get("version")),
                    "role": r["role"] if kind == "window" else None,
                    "rollout_id": _short(r.get("rollout_id")),
                    "device_at": at,
                    "received_at": now,
                    "body": orjson.dumps(slim(r)).decode(),
                }
            )
        return rows, window_times

    @staticmethod
    def _insert(s: Session, rows: Sequence[Mapping[str, Any]]) -> set[int]:
        """Insert what is new; the seqs inserted (one multi-row statement per page)."""
        table = _records_table()
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        stmt = (
            insert(table)
            .on_conflict_do_nothing(index_elements=["device_id", "buffer_id", "seq"])
            .returning(table.c.seq)
        )
        return {int(seq) for seq in s.execute(stmt, list(rows)).scalars()}

    @staticmethod
    def _update_stream(
        s: Session, batch: Batch, now: datetime, window_times: Mapping[int, datetime]
    ) -> None:
        skew = (now - _utc(batch.sent_at, "sent_at")).total_seconds()
        top = max(int(r["seq"]) for r in batch.records)
        newest = max(window_times.values(), default=None)
        row = s.get(db.DeviceTelemetry, batch.device_id)
        if row is None:
            row = db.DeviceTelemetry(device_id=batch.device_id, highest_seq=0)
            s.add(row)
        elif row.buffer_id == batch.buffer_id:
            top = max(top, row.highest_seq)
        if row.newest_closed_at is not None and (newest is None or row.newest_closed_at > newest):
            newest = row.newest_closed_at
        row.buffer_id = batch.buffer_id
        row.highest_seq = top
        row.last_at = now
        row.sent_at = batch.sent_at
        row.newest_closed_at = newest
        row.clock_skew_s = skew
        row.skew_flagged = abs(skew) > SKEW_FLAG_S
        row.buffered = batch.buffered
        row.evicted_total = batch.evicted_total

    def _count(
        self, batch: Batch, stored: set[int], now: datetime, window_times: Mapping[int, datetime]
    ) -> None:
        m = self._metrics
        m.batches.labels("stored" if stored else "duplicate").inc()
        m.records.labels("stored").inc(len(stored))
        m.records.labels("duplicate").inc(len(batch.records) - len(stored))
        for seq in stored:
            at = window_times.get(seq)
            if at is not None:
                m.ingest_lag.observe(max(0.0, (now - at).total_seconds()))
        if stored:
            m.count_overrides(r for r in batch.records if r["seq"] in stored)

    # -- queries -------------------------------------------------------------------------

    def summary(self, q: SummaryQuery) -> JSONDict:
        """See ``HubService.telemetry_summary``."""
        since, until = _utc(q.since, "since"), _utc(q.until, "until")
        if until <= since:
            raise InvalidInputError("until must be after since")
        r = db.TelemetryRecord
        u = db.TelemetryRollup
        totals = WindowTotals()
        raw = rollups = skipped = 0
        with self._ctx.read() as s:
            where: list[ColumnElement[bool]] = [
                r.kind == "window",
                r.device_at >= since,
                r.device_at < until,
            ]
            where += self._filters(r, q)
            devices = self._tagged(s, q.tag) if q.tag is not None else None
            if q.device_id is not None:
                devices = [d for d in devices or [q.device_id] if d == q.device_id]
            if devices is not None:
                where.append(r.device_id.in_(devices))
            for (body,) in s.execute(select(r.body).where(*where)):
                totals.add(orjson.loads(body))
                raw += 1
            rwhere = [u.hour >= since, u.hour < until, *self._filters(u, q)]
            if devices is None:
                for body, ids in s.execute(select(u.body, u.device_ids).where(*rwhere)):
                    totals.add(orjson.loads(body))
                    totals.devices.update(orjson.loads(ids))
                    rollups += 1
            else:
                skipped = int(s.execute(select(func.count()).where(*rwhere)).scalar() or 0)
        return self._answer(totals, q, raw, rollups, skipped)

    @staticmethod
    def _filters(
        t: type[db.TelemetryRecord] | type[db.TelemetryRollup], q: SummaryQuery
    ) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        for name in ("model", "version", "role", "site"):
            value = getattr(q, name)
            if value is not None:
                out.append(getattr(t, name) == value)
        if q.rollout_id is not None:
            if t is db.TelemetryRollup:
                out.append(t.rollout_id == q.rollout_id)
            else:
                out.append(t.rollout_id == (q.rollout_id or None))
        return out

    @staticmethod
    def _tagged(s: Session, tag: str) -> list[str]:
        # Tags are a JSON list per device: read (id, tags) and filter here; the fleet's
        # size bounds it, and issue 8's device groups get a table of their own.
        return [d for d, tags in s.execute(select(db.Device.id, db.Device.tags)) if tag in tags]

    @staticmethod
    def _answer(
        totals: WindowTotals, q: SummaryQuery, raw: int, rollups: int, skipped: int
    ) -> JSONDict:
        out = totals.to_record()
        requests = out["requests"]
        n = sum(requests.get(k, 0) for k in OUTCOME_KEYS)
        failed = requests.get("server_error", 0) + requests.get("timeout", 0)
        latency = totals.histograms.get("latency_s")

        def finite(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        out.update(
            {
                "devices": len(totals.devices),
                "error_rate": failed / n if n else None,
                "latency_p50_s": finite(latency.quantile(0.5)) if latency else None,
                "latency_p99_s": finite(latency.quantile(0.99)) if latency else None,
                "sources": {"windows": raw, "rollups": rollups, "rollups_left_out": skipped},
                "partial": skipped > 0,
                "query": q.echo(),
            }
        )
        return out

    def recent(self, device_id: str, limit: int = 50) -> list[JSONDict]:
        """See ``HubService.device_windows``."""
        limit = max(1, min(int(limit), MAX_RECENT))
        r = db.TelemetryRecord
        with self._ctx.read() as s:
            if s.get(db.Device, device_id) is None:
                raise NotFoundError(f"no device {device_id!r}")
            rows = s.execute(
                select(r.body, r.received_at, r.buffer_id)
                .where(r.device_id == device_id)
                .order_by(r.id.desc())
                .limit(limit)
            ).all()
        return [
            {**orjson.loads(body), "buffer_id": buffer_id, "received_at": _iso(at)}
            for body, at, buffer_id in rows
        ]

    # -- retention -----------------------------------------------------------------------

    def apply_retention(self) -> JSONDict:
        """See ``HubService.apply_retention``."""
        cfg = self._ctx.config
        now = self._ctx.now()
        raw_cutoff = now - timedelta(days=cfg.telemetry_raw_days)
        rollup_cutoff = now - timedelta(days=cfg.telemetry_rollup_days)
        budget = cfg.retention_batch
        done: JSONDict = {"rolled_up": 0, "records_deleted": 0, "rollups_deleted": 0,
                          "reports_deleted": 0}  # fmt: skip
        while budget > 0:
            n_rolled, n_deleted = self._roll_up_chunk(raw_cutoff, min(_CHUNK, budget), now)
            done["rolled_up"] += n_rolled
            done["records_deleted"] += n_deleted
            budget -= n_deleted
            if n_deleted < _CHUNK:
                break
        done["rollups_deleted"] = self._delete_chunks(
            db.TelemetryRollup, db.TelemetryRollup.hour < rollup_cutoff, budget
        )
        budget -= done["rollups_deleted"]
        done["reports_deleted"] = self._delete_reports(raw_cutoff, max(budget, 0))
        budget -= done["reports_deleted"]
        done["drift_rollups_deleted"] = self._delete_chunks(
            db.DriftRollup, db.DriftRollup.hour < rollup_cutoff, max(budget, 0)
        )
        budget -= done["drift_rollups_deleted"]
        done["override_rollups_deleted"] = self._delete_chunks(
            db.OverrideRollup, db.OverrideRollup.hour < rollup_cutoff, max(budget, 0)
        )
        budget -= done["override_rollups_deleted"]
        review_cutoff = now - timedelta(days=cfg.review_days)
        done["review_samples_deleted"] = self._delete_review(review_cutoff, max(budget, 0))
        budget -= done["review_samples_deleted"]
        done["more"] = budget <= 0
        deleted = ("records_deleted", "rollups_deleted", "reports_deleted",
                   "drift_rollups_deleted", "override_rollups_deleted",
                   "review_samples_deleted")  # fmt: skip
        if any(done[k] for k in deleted):
            log.info("telemetry retention: %s", done)
        return done

    def _roll_up_chunk(self, cutoff: datetime, limit: int, now: datetime) -> tuple[int, int]:
        r = db.TelemetryRecord
        with self._ctx.telemetry_write(locks.RETENTION) as s:
            rows = s.execute(
                select(
                    r.id,
                    r.kind,
                    r.model,
                    r.version,
                    r.role,
                    r.site,
                    r.rollout_id,
                    r.device_at,
                    r.device_id,
                    r.body,
                )
                .where(r.received_at < cutoff)
                .order_by(r.received_at, r.id)
                .limit(limit)
            ).all()
            if not rows:
                return 0, 0
            groups: dict[tuple[datetime, str, str, str, str, str], list[Any]] = {}
            for row in rows:
                if row.kind != "window" or row.device_at is None:
                    continue  # events and newer kinds are not rolled up
                hour = row.device_at.replace(minute=0, second=0, microsecond=0)
                key = (
                    hour,
                    row.model or "",
                    row.version or "",
                    row.role or "",
                    row.site,
                    row.rollout_id or "",
                )
                groups.setdefault(key, []).append(row)
            rolled = sum(len(g) for g in groups.values())
            for key, members in groups.items():
                self._merge_rollup(s, key, members, now)
            ids = [row.id for row in rows]
            for i in range(0, len(ids), 1000):
                s.execute(delete(r).where(r.id.in_(ids[i : i + 1000])))
            return rolled, len(ids)

    @staticmethod
    def _merge_rollup(
        s: Session,
        key: tuple[datetime, str, str, str, str, str],
        members: Iterable[Any],
        now: datetime,
    ) -> None:
        u = db.TelemetryRollup
        hour, model, version, role, site, rollout_id = key
        existing = s.execute(
            select(u).where(
                and_(
                    u.hour == hour,
                    u.model == model,
                    u.version == version,
                    u.role == role,
                    u.site == site,
                    u.rollout_id == rollout_id,
                )
            )
        ).scalar_one_or_none()
        totals = WindowTotals()
        devices: set[str] = set()
        if existing is not None:
            totals.add(orjson.loads(existing.body))
            devices.update(orjson.loads(existing.device_ids))
        for m in members:
            totals.add(orjson.loads(m.body))
            devices.add(m.device_id)
        body = orjson.dumps(totals.to_record()).decode()
        ids = orjson.dumps(sorted(devices)).decode()
        if existing is None:
            s.add(
                u(
                    hour=hour,
                    model=model,
                    version=version,
                    role=role,
                    site=site,
                    rollout_id=rollout_id,
                    windows=totals.windows,
                    body=body,
                    device_ids=ids,
                    updated_at=now,
                )
            )
        else:
            existing.windows, existing.body = totals.windows, body
            existing.device_ids, existing.updated_at = ids, now
        s.flush()

    def _delete_review(self, cutoff: datetime, budget: int) -> int:
        """Delete review samples received before ``cutoff``, and their labels."""
        r = db.ReviewSample
        total = 0
        while budget - total > 0:
            with self._ctx.telemetry_write(locks.RETENTION) as s:
                rows = s.execute(
                    select(r.id, r.sample_id)
                    .where(r.received_at < cutoff)
                    .order_by(r.id)
                    .limit(min(_CHUNK, budget - total))
                ).all()
                if rows:
                    sample_ids = [row.sample_id for row in rows]
                    s.execute(
                        delete(db.ReviewLabel).where(db.ReviewLabel.sample_id.in_(sample_ids))
                    )
                    s.execute(delete(r).where(r.id.in_([row.id for row in rows])))
            total += len(rows)
            if len(rows) < _CHUNK:
                break
        return total

    def _delete_chunks(
        self,
        table: type[db.TelemetryRollup] | type[db.DriftRollup] | type[db.OverrideRollup],
        condition: ColumnElement[bool],
        budget: int,
    ) -> int:
        total = 0
        while budget - total > 0:
            with self._ctx.telemetry_write(locks.RETENTION) as s:
                ids = list(
                    s.execute(
                        select(table.id).where(condition).limit(min(_CHUNK, budget - total))
                    ).scalars()
                )
                if ids:
                    s.execute(delete(table).where(table.id.in_(ids)))
            total += len(ids)
            if len(ids) < _CHUNK:
                break
        return total

    def _delete_reports(self, cutoff: datetime, budget: int) -> int:
        """Delete reports older than ``cutoff`` but each device's newest."""
        rep = db.DeviceReport
        newest = select(func.max(rep.id)).group_by(rep.device_id)
        total = 0
        while budget - total > 0:
            with self._ctx.telemetry_write(locks.RETENTION) as s:
                ids = list(
                    s.execute(
                        select(rep.id)
                        .where(rep.received_at < cutoff, rep.id.not_in(newest))
                        .order_by(rep.id)
                        .limit(min(_CHUNK, budget - total))
                    ).scalars()
                )
                if ids:
                    s.execute(delete(rep).where(rep.id.in_(ids)))
            total += len(ids)
            if len(ids) < _CHUNK:
                break
        return total
