"""The hub's review queue (issue 9, ADR 0020): samples of suspect windows in, labels in,
exports out, and the accuracy that labels reveal.

* **In, exactly once.** Telemetry ingest (:mod:`modelfleet.hub.telemetry`) checks each
  ``review_sample`` record of a batch (:func:`check_samples`, before its transaction) and,
  in the batch's transaction, stores the records it stored for the first time
  (:func:`store_samples`): ingest is exactly-once per ``(device_id, buffer_id, seq)``, and
  the queue is unique per ``sample_id`` besides. The raw telemetry record keeps the sample
  without its tensors (:func:`~modelfleet.hub.review_formats.slim`).
* **Bounded.** At most ``review_queue_limit`` pending samples per model; the batch that
  fills the queue records :data:`~modelfleet.hub.events.REVIEW_QUEUE_FULL` in its own
  transaction (once per filling: pending going from below the limit to the limit); samples
  past the limit are dropped (logged) until imported labels make room.
* **Out.** :meth:`ReviewQueue.list`, :meth:`ReviewQueue.export` (JSONL or Label Studio
  tasks), :meth:`ReviewQueue.import_labels` (JSONL or Label Studio's export),
  :meth:`ReviewQueue.metrics` (per version, site or day).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson
from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelfleet.catalog.schema import OutputDecision
from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db, events
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.context import HubContext
from modelfleet.hub.review_formats import (
    RECORD_KIND,
    check_sample,
    classification_metrics,
    label_studio_tasks,
    parse_labels,
    predicted_class,
)
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.telemetry.wire import Batch

__all__ = [
    "EXPORT_FORMATS",
    "MAX_LIST",
    "ReviewQuery",
    "ReviewQueue",
    "check_samples",
    "store_samples",
]

log = logging.getLogger("modelfleet.hub")

#: Most samples one list or export answers.
MAX_LIST: Final = 10_000
#: Export and import formats.
EXPORT_FORMATS: Final = ("jsonl", "label-studio")
STATUSES: Final = ("pending", "labelled")
GROUPS: Final = ("version", "site", "day")


def check_samples(batch: Batch) -> dict[int, dict[str, Any]]:
    """The queue columns of every ``review_sample`` record of a checked batch, by seq.

    Raises:
        InvalidInputError: a malformed review sample (the whole batch is refused, as a
            malformed window refuses it).
    """
    out: dict[int, dict[str, Any]] = {}
    for r in batch.records:
        if r.get("kind") != RECORD_KIND:
            continue
        try:
            out[int(r["seq"])] = check_sample(r)
        except InvalidInputError as e:
            raise InvalidInputError(f"record seq {r['seq']}: {e}") from e
    return out


def store_samples(
    s: Session,
    device_id: str,
    samples: Mapping[int, Mapping[str, Any]],
    stored: set[int],
    site: str,
    now: datetime,
    limit: int,
) -> int:
    """Queue the samples whose records this batch stored for the first time, in the
    batch's transaction. Returns how many were queued.

    A model's queue holds at most ``limit`` pending samples; the insert that reaches it
    records ``review.queue_full`` (payload ``{model, pending, limit}``).
    """
    fresh = [(seq, row) for seq, row in sorted(samples.items()) if seq in stored]
    if not fresh:
        return 0
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for _, row in fresh:
        by_model.setdefault(str(row["model"]), []).append(row)
    t = db.ReviewSample
    table = t.__table__
    assert isinstance(table, Table)
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    queued = 0
    for model, rows in by_model.items():
        pending = int(
            s.execute(select(func.count()).where(t.model == model, t.status == "pending")).scalar()
            or 0
        )
        room = max(0, limit - pending)
        if len(rows) > room:
            log.warning(
                "review queue of %s is full (%d pending): %d samples dropped",
                model,
                pending,
                len(rows) - room,
            )
        values = [
            {**row, "device_id": device_id, "site": site, "received_at": now, "status": "pending"}
            for row in rows[:room]
        ]
        if not values:
            continue
        stmt = (
            insert(table).on_conflict_do_nothing(index_elements=["sample_id"]).returning(table.c.id)
        )
        n = len(list(s.execute(stmt, values).scalars()))
        queued += n
        if pending < limit <= pending + n:
            events.record_event(
                s,
                events.REVIEW_QUEUE_FULL,
                model,
                {"model": model, "pending": pending + n, "limit": limit},
                now,
            )
    return queued


@dataclass(frozen=True)
class ReviewQuery:
    """Which samples: all filters given must match (None: any). ``since``/``until``
    bound the window's device-time close, ``[since, until)``."""

    model: str | None = None
    version: str | None = None
    site: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}")
        if not 1 <= self.limit <= MAX_LIST:
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidInputError("until must be after since")


class ReviewQueue:
    """Queries, exports, label imports and metrics of the review queue.

    Args:
        ctx: the hub's sessions and clock.
        manifest_of: the verified manifest of ``(model, version)`` (the catalog's), for the
            output decisions that say which output is the answered class.
    """

    def __init__(self, ctx: HubContext, manifest_of: Any) -> None:
        self._ctx = ctx
        self._manifest_of = manifest_of
        self._decisions: dict[tuple[str, str], Mapping[str, OutputDecision]] = {}

    def _decisions_of(self, model: str, version: str) -> Mapping[str, OutputDecision]:
        key = (model, version)
        got = self._decisions.get(key)
        if got is None:
            try:
                manifest: PackageManifest = self._manifest_of(model, int(version))
                got = manifest.effective_decisions()
            except (NotFoundError, ValueError, InvalidInputError):
                got = {}
            self._decisions[key] = got
        return got

    def _select(self, s: Session, q: ReviewQuery) -> list[tuple[db.ReviewSample, str | None]]:
        t, lab = db.ReviewSample, db.ReviewLabel
        stmt = select(t, lab.label).outerjoin(lab, lab.sample_id == t.sample_id)
        for name in ("model", "version", "site", "status"):
            value = getattr(q, name)
            if value is not None:
                stmt = stmt.where(getattr(t, name) == value)
        if q.since is not None:
            stmt = stmt.where(t.at >= q.since)
        if q.until is not None:
            stmt = stmt.where(t.at < q.until)
        return [(row, label) for row, label in s.execute(stmt.order_by(t.id).limit(q.limit))]

    def _view(self, row: db.ReviewSample, label: str | None, full: bool) -> JSONDict:
        body = orjson.loads(row.body)
        out: JSONDict = {
            "sample_id": row.sample_id,
            "model": row.model,
            "version": row.version,
            "site": row.site,
            "device_id": row.device_id,
            "role": row.role,
            "at": _iso(row.at),
            "received_at": _iso(row.received_at),
            "status": row.status,
            "reasons": row.reasons.split(","),
            "anomaly_score": row.anomaly_score,
            "request_id": body.get("request_id"),
            "prediction": predicted_class(
                body.get("outputs") or {}, self._decisions_of(row.model, row.version)
            ),
            "label": label,
        }
        if full:
            out["rollout_id"] = body.get("rollout_id")
            out["inputs"] = body.get("inputs")
            out["outputs"] = body.get("outputs")
        return out

    def list(self, q: ReviewQuery) -> list[JSONDict]:
        """Samples matching ``q``, oldest first, without their tensors."""
        with self._ctx.read() as s:
            return [self._view(r, label, False) for r, label in self._select(s, q)]

    def counts(self, model: str | None = None) -> JSONDict:
        """``{"pending", "labelled"}`` per model (or for one)."""
        t = db.ReviewSample
        stmt = select(t.model, t.status, func.count()).group_by(t.model, t.status)
        if model is not None:
            stmt = stmt.where(t.model == model)
        out: dict[str, dict[str, int]] = {}
        with self._ctx.read() as s:
            for m, status, n in s.execute(stmt):
                out.setdefault(m, {"pending": 0, "labelled": 0})[status] = int(n)
        return {"models": out, "limit": self._ctx.config.review_queue_limit}

    def export(self, q: ReviewQuery, fmt: str) -> bytes:
        """The samples matching ``q`` with their tensors: JSONL (one sample a line) or
        Label Studio import JSON (a list of tasks).

        Raises:
            InvalidInputError: an unknown format.
        """
        if fmt not in EXPORT_FORMATS:
            raise InvalidInputError(f"unknown export format {fmt!r} (jsonl or label-studio)")
        with self._ctx.read() as s:
            samples = [self._view(r, label, True) for r, label in self._select(s, q)]
        if fmt == "jsonl":
            return b"".join(orjson.dumps(x) + b"\n" for x in samples)
        return orjson.dumps(label_studio_tasks(samples))

    def import_labels(self, body: bytes, fmt: str) -> JSONDict:
        """Store the labels of an import (the latest import of a sample wins); each
        labelled sample leaves the pending queue.

        Returns:
            ``{"imported", "unknown" (sample ids not in the queue), "unlabelled"}``.

        Raises:
            InvalidInputError: not that format.
        """
        labels, unlabelled = parse_labels(body, fmt)
        latest = dict(labels)
        now = self._ctx.now()
        t, lab = db.ReviewSample, db.ReviewLabel
        imported = 0
        with self._ctx.telemetry_write() as s:
            ids = list(latest)
            known: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                known.update(s.execute(select(t.sample_id).where(t.sample_id.in_(chunk))).scalars())
            for sid in sorted(known):
                row = s.get(lab, sid)
                if row is None:
                    s.add(lab(sample_id=sid, label=latest[sid], source=fmt, imported_at=now))
                else:
                    row.label, row.source, row.imported_at = latest[sid], fmt, now
                imported += 1
            for i in range(0, len(ids), 500):
                chunk = [x for x in ids[i : i + 500] if x in known]
                if chunk:
                    s.query(t).filter(t.sample_id.in_(chunk)).update(
                        {t.status: "labelled"}, synchronize_session=False
                    )
        return {"imported": imported, "unknown": len(latest) - imported, "unlabelled": unlabelled}

    def metrics(
        self,
        model: str,
        by: Literal["version", "site", "day"] = "version",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> JSONDict:
        """Accuracy, macro precision and recall of ``model``'s labelled samples against
        the model's answers, per version, site or UTC day (of the window's close).

        Raises:
            InvalidInputError: an unknown grouping.
        """
        if by not in GROUPS:
            raise InvalidInputError(f"group by one of {', '.join(GROUPS)}")
        t, lab = db.ReviewSample, db.ReviewLabel
        stmt = select(t, lab.label).join(lab, lab.sample_id == t.sample_id).where(t.model == model)
        if since is not None:
            stmt = stmt.where(t.at >= since)
        if until is not None:
            stmt = stmt.where(t.at < until)
        groups: dict[str, list[tuple[str, str]]] = {}
        unscored = 0
        with self._ctx.read() as s:
            for row, label in s.execute(stmt):
                body = orjson.loads(row.body)
                predicted = predicted_class(
                    body.get("outputs") or {}, self._decisions_of(row.model, row.version)
                )
                if predicted is None:
                    unscored += 1
                    continue
                key = {
                    "version": row.version,
                    "site": row.site,
                    "day": row.at.date().isoformat(),
                }[by]
                groups.setdefault(key, []).append((predicted, label))
        rows = [{by: k, **classification_metrics(v)} for k, v in groups.items()]
        rows.sort(key=lambda r: (int(r[by]) if by == "version" and r[by].isdigit() else 0, r[by]))
        return {
            "model": model,
            "by": by,
            "groups": rows,
            "overall": classification_metrics(p for v in groups.values() for p in v),
            "without_class": unscored,
            "averaging": "macro over the classes in labels or answers; zero_division=0",
        }
