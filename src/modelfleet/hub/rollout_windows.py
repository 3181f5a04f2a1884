"""Running telemetry totals of a rollout's groups, read incrementally (issue 8).

A gate compares everything a stage's devices sent since the stage started. Reading and
merging every window again at each evaluation costs what the soak has accumulated — at
10,000 devices and 60 s windows, 600,000 windows after an hour. :class:`RunningTotals` keeps
the merge (:class:`~modelfleet.telemetry.wire.WindowTotals`, exact) and reads only the records
stored since its last read: those with an id above its high-water mark, less a margin of
:data:`MARGIN` ids that it looks at again (ids only; it remembers which it merged), because
on PostgreSQL a transaction that took lower ids may commit after a higher one was read.

With a reference profile (:attr:`RunningTotals.profile`, set for a stage whose version has
one), the windows' drift counts (``"profile"``, issue 9) are merged too, counts only
(:func:`~modelfleet.monitoring.profile_counts.merge_wire` without sketches: the combined
drift verdict reads none), into :attr:`RunningTotals.drift`; counts that do not fit the
profile are left out and counted (``drift_refused``).

The totals are in memory, per controller process; a new controller (restart, another lease
holder) reads the group once from the start. Only raw windows are read: telemetry retention
rolls them up after ``telemetry_raw_days`` (14), longer than any soak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from modelfleet.errors import InvalidInputError
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict
from modelfleet.monitoring.drift import DriftPolicy, evaluate
from modelfleet.monitoring.profile import ReferenceProfile
from modelfleet.monitoring.profile_counts import ProfileWindow, merge_wire
from modelfleet.telemetry.wire import WindowTotals

__all__ = ["CRASH_EVENTS", "MARGIN", "GroupKey", "RunningTotals", "summary_of"]

CRASH_EVENTS: Final = frozenset({"crash", "restart", "watchdog_restart"})
"""Telemetry event names counted as crashes and watchdog restarts (the ``crashes`` gate)."""

MARGIN: Final = 20_000
"""Record ids below the high-water mark read again each time (in-flight inserts)."""


@dataclass(frozen=True)
class GroupKey:
    """Which windows a group merges: closed at or after ``since`` with these fields."""

    model: str
    version: str
    since: datetime
    role: str | None = None
    rollout_id: str | None = None


@dataclass
class RunningTotals:
    """The merged windows of one group, brought up to date by :meth:`update`."""

    key: GroupKey
    totals: WindowTotals = field(default_factory=WindowTotals)
    high: int = 0
    recent: set[int] = field(default_factory=set)

    crashes: int = 0
    profile: ReferenceProfile | None = None
    drift: ProfileWindow | None = None
    drift_refused: int = 0

    def update(self, s: Session) -> None:
        """Merge the group's records stored since the last call (all of them the first time):
        its windows, and its crash/restart events (:data:`CRASH_EVENTS`; events have no role)."""
        r = db.TelemetryRecord
        k = self.key
        window = r.kind == "window"
        if k.role is not None:
            window = and_(window, r.role == k.role)
        where: list[ColumnElement[bool]] = [
            or_(window, r.kind == "event"),
            r.model == k.model,
            r.version == k.version,
            r.device_at >= k.since,
            r.id > max(0, self.high - MARGIN),
        ]
        if k.rollout_id is not None:
            where.append(r.rollout_id == k.rollout_id)
        # Ids first (no bodies): the margin's records were mostly merged already.
        new = [i for i in s.scalars(select(r.id).where(*where)) if i not in self.recent]
        for start in range(0, len(new), 1000):
            chunk = new[start : start + 1000]
            counts: list[object] = []
            for record_id, kind, body in s.execute(
                select(r.id, r.kind, r.body).where(r.id.in_(chunk))
            ):
                record = orjson.loads(body)
                if kind == "window":
                    self.totals.add(record)
                    if isinstance(record.get("profile"), dict) and record.get("role") != "shadow":
                        counts.append(record["profile"])
                elif record.get("event") in CRASH_EVENTS:
                    self.crashes += 1
                self.recent.add(record_id)
                self.high = max(self.high, record_id)
            if counts and self.profile is not None:
                self._merge_drift(self.profile, counts)
        floor = self.high - MARGIN
        self.recent = {i for i in self.recent if i > floor}

    def _merge_drift(self, profile: ReferenceProfile, docs: list[object]) -> None:
        """Merge windows' drift counts; a window whose counts do not fit is left out."""
        try:
            merged = merge_wire(docs, profile, sketches=False)
        except InvalidInputError:
            good = []
            for d in docs:
                try:
                    merge_wire([d], profile, sketches=False)
                    good.append(d)
                except InvalidInputError:
                    self.drift_refused += 1
            if not good:
                return
            merged = merge_wire(good, profile, sketches=False)
        if self.drift is None:
            self.drift = merged
        else:
            self.drift.merge(merged)


def summary_of(running: RunningTotals) -> JSONDict:
    """The fields of a telemetry summary that gates read (see ``Telemetry.summary``), and
    ``"crashes"``, ``"drift_score"`` and ``"drift_rows"`` (the combined drift of the merged
    drift counts; None and 0 without a profile or counts)."""
    totals = running.totals
    out = totals.to_record()
    out["crashes"] = running.crashes
    latency = totals.histograms.get("latency_s")
    p99 = latency.quantile(0.99) if latency is not None else None
    out["devices"] = len(totals.devices)
    out["latency_p99_s"] = p99 if p99 is not None and math.isfinite(p99) else None
    out["drift_score"], out["drift_rows"] = None, 0
    if running.profile is not None and running.drift is not None:
        report = evaluate(running.profile, running.drift, DriftPolicy())
        out["drift_score"], out["drift_rows"] = report.score, report.rows
    return out
