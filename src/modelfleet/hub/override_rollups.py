"""Operator overrides summed exactly at ingest into hourly roll-ups (issue 9, ADR 0040).

Every telemetry window carries the answers a human overrode or confirmed (``"overrides":
{"overridden", "confirmed"}``, ADR 0021). Telemetry ingest calls :meth:`OverrideRollups.add`
in its own transaction with the windows it has just stored (never a duplicate: ingest is
exactly-once by ``(device, buffer, seq)``), and this module adds their counts into one row
per ``(model, version, site, hour)`` of their device-time ``closed_at``. The override-rate
state (:mod:`.override_states`) then reads a handful of rows per hour instead of every raw
window, and the roll-ups outlive the raw records (``telemetry_rollup_days``).

Windows without a judged answer add nothing (no row for a model whose application never
reports overrides); shadow windows cannot be overridden (ADR 0021) and are skipped.

Concurrency: one ``INSERT ... ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` per key,
keys in sorted order, on SQLite and PostgreSQL alike: two replicas ingesting for one site
add to the same row atomically (the database holds the row lock for the statement) and,
taking keys in one order, never deadlock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelfleet.hub import db
from modelfleet.hub.drift_rollups import hour_of

__all__ = ["OverrideHour", "OverrideRollups", "read_override_hours", "version_totals"]

log = logging.getLogger("modelfleet.hub")

#: A window claiming more judged answers than this is not rolled up (a 64-bit sum must
#: not overflow; no device judges four billion answers in a window).
MAX_PER_WINDOW: Final = 2**32


@dataclass(frozen=True)
class OverrideHour:
    """One stored roll-up as the state reads it."""

    model: str
    site: str
    hour: datetime
    version: str
    overridden: int
    confirmed: int


def _counts(record: Mapping[str, Any]) -> tuple[int, int] | None:
    """(overridden, confirmed) of a window with a judged answer, else None."""
    doc = record.get("overrides")
    if not isinstance(doc, Mapping):
        return None
    o, c = doc.get("overridden", 0), doc.get("confirmed", 0)
    if type(o) is not int or type(c) is not int or o < 0 or c < 0 or o + c == 0:
        return None  # checked by the wire format already; defensive
    if o + c > MAX_PER_WINDOW:
        log.warning("overrides: a window of %s judges %d answers; not rolled up",
                    record.get("device_id"), o + c)  # fmt: skip
        return None
    return o, c


class OverrideRollups:
    """The roll-up writer that telemetry ingest calls (see the module docstring)."""

    def add(
        self,
        s: Session,
        site: str,
        windows: Iterable[tuple[Mapping[str, Any], datetime]],
        now: datetime,
    ) -> int:
        """Add the overrides of newly stored windows of one device (at ``site``) into their
        roll-ups, in the caller's transaction.

        Args:
            s: the ingest transaction.
            site: the device's site.
            windows: ``(record, closed_at)``: each a parsed window record that ingest has
                just stored (never a duplicate), with its aware device-time ``closed_at``.
            now: hub time (``updated_at``).

        Returns:
            The windows rolled up.
        """
        groups: dict[tuple[str, str, datetime], list[int]] = {}
        for r, at in windows:
            model, version = r.get("model"), r.get("version")
            if r.get("role") == "shadow" or not isinstance(model, str):
                continue
            if not isinstance(version, str):
                continue
            counts = _counts(r)
            if counts is None:
                continue
            total = groups.setdefault((model, version, hour_of(at)), [0, 0, 0])
            total[0] += 1
            total[1] += counts[0]
            total[2] += counts[1]
        if not groups:
            return 0
        table = db.OverrideRollup.__table__
        assert isinstance(table, Table)
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        for key in sorted(groups):  # one lock order for every writer: no deadlock
            model, version, hour = key
            n, overridden, confirmed = groups[key]
            stmt = insert(table).values(
                model=model,
                version=version,
                site=site,
                hour=hour,
                windows=n,
                overridden=overridden,
                confirmed=confirmed,
                updated_at=now,
            )
            t = table.c
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["model", "version", "site", "hour"],
                    set_={
                        "windows": t.windows + stmt.excluded.windows,
                        "overridden": t.overridden + stmt.excluded.overridden,
                        "confirmed": t.confirmed + stmt.excluded.confirmed,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
            )
        return sum(g[0] for g in groups.values())


def read_override_hours(s: Session, since: datetime, until: datetime) -> list[OverrideHour]:
    """Every roll-up whose hour starts in ``[since, until)``, in key order."""
    u = db.OverrideRollup
    return [
        OverrideHour(m, si, h, v, int(o), int(c))
        for m, si, h, v, o, c in s.execute(
            select(u.model, u.site, u.hour, u.version, u.overridden, u.confirmed)
            .where(u.hour >= since, u.hour < until, u.windows > 0)
            .order_by(u.model, u.site, u.hour, u.version)
        )
    ]


def version_totals(
    s: Session,
    model: str,
    site: str,
    since: datetime,
    until: datetime,
    versions: Sequence[str] | None = None,
) -> dict[str, tuple[int, int]]:
    """(overridden, confirmed) per version of ``model`` at ``site`` over the hours starting
    in ``[since, until)`` (only ``versions`` when given)."""
    u = db.OverrideRollup
    where = [u.model == model, u.site == site, u.hour >= since, u.hour < until]
    if versions is not None:
        where.append(u.version.in_(list(versions)))
    q = (
        select(u.version, func.sum(u.overridden), func.sum(u.confirmed))
        .where(*where)
        .group_by(u.version)
    )
    return {str(v): (int(o or 0), int(c or 0)) for v, o, c in s.execute(q)}
