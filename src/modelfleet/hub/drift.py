"""Drift at the hub (issue 9, ADR 0019): explained reports over the roll-ups, and the
sequential drift state per (model, site) with its events.

**Reports** (:meth:`Drift.report`): the roll-ups (:mod:`.drift_rollups`) of one model version
whose hour starts in ``[since, until)``, at one site or all, merged (counts and sketches)
and evaluated against the version's reference profile with
:func:`modelfleet.monitoring.drift.evaluate`: per column every test's value, bins,
epsilon, threshold and verdict, inputs and outputs (prediction drift) apart, and the
combined score. Fewer rows than the policy's minimum give ``insufficient_data``.

**States** (:meth:`Drift.advance`, run by the hub's upkeep round on the injected clock):
one step of :func:`modelfleet.monitoring.sequential.step` per (model, site) per *closed*
hour — an hour is closed ``grace_s`` (600 s) after it ends, so windows still in flight
count — with that hour's roll-up of the version that served most rows at the site then
(evaluated on counts only: the combined verdict reads no sketch). Hours are stepped in
order, each once: the state row keeps the last hour stepped (``period``), and is locked
while it is stepped, so two upkeep rounds (or replicas) never step an hour twice. Windows
arriving after their hour was stepped still land in the roll-up (reports see them), not
in the state. A new dominant version starts the state afresh (:func:`sequential.reset`).
Hours with no roll-up are no step (no data is not "no drift"). A change of state records
:data:`~modelfleet.hub.events.DRIFT_STATE_CHANGED` in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db, events
from modelfleet.hub._hourly_states import list_states, locked_state_row, step_keys
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.catalog import NO_DRIFT_MESSAGE
from modelfleet.hub.context import HubContext
from modelfleet.hub.drift_rollups import ProfileCache, hour_of, merge_rollups, read_rollups
from modelfleet.hub.metrics import DRIFT_STATE_VALUES
from modelfleet.monitoring.drift import (
    DriftPolicy,
    DriftReport,
    FeatureDrift,
    Verdict,
    evaluate,
)
from modelfleet.monitoring.sequential import (
    DriftState,
    SequentialPolicy,
    SequentialState,
    reset,
    step,
)

__all__ = ["MAX_RANGE", "STATE_VALUES", "Drift", "DriftSettings", "report_view"]


#: The gauge value of each drift state (``modelfleet_drift_state``).
STATE_VALUES: Final[Mapping[str, int]] = DRIFT_STATE_VALUES
#: The longest range one report merges.
MAX_RANGE: Final = timedelta(days=400)
_HOUR: Final = timedelta(hours=1)


@dataclass(frozen=True)
class DriftSettings:
    """How the hub evaluates drift.

    Attributes:
        policy: thresholds and minimum counts of every report and state step.
        sequential: the CUSUM rule of the states.
        grace_s: seconds after an hour ends before it is stepped (late windows).
        lookback_h: hours back an upkeep round looks for hours not stepped yet (bounds
            the round after a long outage; older hours are never stepped).
    """

    policy: DriftPolicy = field(default_factory=DriftPolicy)
    sequential: SequentialPolicy = field(default_factory=SequentialPolicy)
    grace_s: float = 600.0
    lookback_h: int = 48

    def __post_init__(self) -> None:
        if not 0 <= self.grace_s <= 86400:
            raise InvalidInputError("grace_s must be between 0 and 86400 seconds")
        if not 1 <= self.lookback_h <= 24 * 400:
            raise InvalidInputError("lookback_h must be between 1 and 9600 hours")


def _features(features: tuple[FeatureDrift, ...], group: str) -> list[JSONDict]:
    return [f.to_dict() for f in features if f.group == group]


def report_view(report: DriftReport) -> JSONDict:
    """A report as the API answers it: the combined verdict, then ``inputs`` and
    ``outputs`` apart (each column's verdict and every test's explained result), and
    ``prediction``: the outputs' own verdict (``drift`` when an output column drifts,
    ``insufficient_data`` when none had enough rows; None without outputs)."""
    whole = report.to_dict()
    outputs = [f for f in report.features if f.group == "outputs"]
    prediction: str | None = None
    if outputs:
        if all(f.verdict is Verdict.INSUFFICIENT_DATA for f in outputs):
            prediction = Verdict.INSUFFICIENT_DATA.value
        elif any(f.verdict is Verdict.DRIFT for f in outputs):
            prediction = Verdict.DRIFT.value
        else:
            prediction = Verdict.NO_DRIFT.value
    del whole["features"]
    whole["inputs"] = _features(report.features, "inputs")
    whole["outputs"] = _features(report.features, "outputs")
    whole["prediction"] = {
        "verdict": prediction,
        "drifted": [d for d in report.drifted if d.startswith("outputs/")],
    }
    return whole


def _state_view(row: db.DriftStateRow) -> JSONDict:
    return {
        "model": row.model,
        "site": row.site,
        "version": row.version,
        "state": row.state,
        "statistic": row.statistic,
        "windows": row.windows,
        "skipped": row.skipped,
        "drift_windows": row.drift_windows,
        "last_score": row.last_score,
        "last_rows": row.last_rows,
        "period": _iso(row.period) if row.period is not None else None,
        "changed_at": _iso(row.changed_at),
        "updated_at": _iso(row.updated_at),
    }


class Drift:
    """Drift reports and states over the roll-ups.

    Args:
        ctx: the hub's sessions and clock.
        profiles: the versions' reference profiles.
        settings: policies, grace and lookback.
    """

    def __init__(
        self, ctx: HubContext, profiles: ProfileCache, settings: DriftSettings | None = None
    ) -> None:
        self._ctx = ctx
        self._profiles = profiles
        self.settings = settings or DriftSettings()

    # -- reports -------------------------------------------------------------------------

    def report(
        self,
        model: str,
        *,
        version: str | None = None,
        site: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> JSONDict:
        """See ``HubService.drift_report``."""
        end = until if until is not None else self._ctx.now()
        start = since if since is not None else end - timedelta(hours=24)
        try:  # naive times are UTC, as in the telemetry summaries
            start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
            start, end = start.astimezone(UTC), end.astimezone(UTC)
        except OverflowError as e:
            raise InvalidInputError("since or until is out of range") from e
        if end <= start:
            raise InvalidInputError("until must be after since")
        if end - start > MAX_RANGE:
            raise InvalidInputError(f"a drift report spans at most {MAX_RANGE.days} days")
        if version is not None and not (version.isdigit() and len(version) < 12):
            raise InvalidInputError(f"version must be a positive integer, got {version!r}")
        sites = None if site is None else [site]
        with self._ctx.read() as s:
            numbers = self._versions_of(s, model)
            versions = self._rows_per_version(s, model, start, end, sites)
            chosen = version if version is not None else self._dominant(versions, numbers)
            if chosen is None:
                return self._empty(model, None, site, start, end, versions, "no versions")
            if int(chosen) not in numbers:
                raise NotFoundError(f"model {model!r} has no version {chosen}")
            package = self._profiles.get(s, model, chosen)
            if package is None:
                return self._empty(model, chosen, site, start, end, versions, NO_DRIFT_MESSAGE)
            rows = read_rollups(s, model, chosen, start, end, sites)
        merged = merge_rollups(package, rows)
        report = evaluate(package.profile, merged, self.settings.policy)
        return {
            "model": model,
            "version": int(chosen),
            "site": site,
            "since": _iso(start),
            "until": _iso(end),
            "reference_profile": package.digest,
            "rollups": len(rows),
            "windows": merged.windows,
            "sites": sorted({r.site for r in rows}),
            "sketched": merged.sketched
            and any(sk is not None for g in merged.sketches.values() for sk in g),
            "versions": versions,
            "message": None,
            **report_view(report),
        }

    @staticmethod
    def _versions_of(s: Session, model: str) -> set[int]:
        row = s.scalars(select(db.Model).where(db.Model.name == model)).first()
        if row is None:
            raise NotFoundError(f"no model {model!r}")
        return set(
            s.scalars(select(db.ModelVersion.version).where(db.ModelVersion.model_id == row.id))
        )

    @staticmethod
    def _rows_per_version(
        s: Session, model: str, since: datetime, until: datetime, sites: list[str] | None
    ) -> dict[str, int]:
        u = db.DriftRollup
        where = [u.model == model, u.hour >= since, u.hour < until]
        if sites is not None:
            where.append(u.site.in_(sites))
        per = select(u.version, func.sum(u.rows)).where(*where).group_by(u.version)
        return {str(v): int(n) for v, n in s.execute(per)}

    @staticmethod
    def _dominant(versions: Mapping[str, int], numbers: set[int]) -> str | None:
        """The version with the most rows in the range, else the newest version."""
        if versions:
            return max(versions, key=lambda v: (versions[v], _number(v)))
        return str(max(numbers)) if numbers else None

    def _empty(
        self, model: str, version: str | None, site: str | None, since: datetime,
        until: datetime, versions: Mapping[str, int], message: str,
    ) -> JSONDict:  # fmt: skip
        return {
            "model": model,
            "version": None if version is None else int(version),
            "site": site,
            "since": _iso(since),
            "until": _iso(until),
            "reference_profile": None,
            "rollups": 0,
            "windows": 0,
            "sites": [],
            "sketched": False,
            "versions": dict(versions),
            "message": message,
            "score": None,
            "verdict": Verdict.INSUFFICIENT_DATA.value,
            "band": None,
            "rows": 0,
            "drifted": [],
            "tested": 0,
            "inputs": [],
            "outputs": [],
            "prediction": {"verdict": None, "drifted": []},
        }

    # -- states --------------------------------------------------------------------------

    def states(self, model: str | None = None, site: str | None = None) -> list[JSONDict]:
        """See ``HubService.drift_states``."""
        return list_states(self._ctx, db.DriftStateRow, _state_view, model, site)

    def advance(self) -> JSONDict:
        """Step every (model, site) over its closed hours not stepped yet (see the module
        docstring); what the upkeep round runs.

        Returns:
            ``{"steps": hours stepped, "changes": [{"model", "site", "from", "to"}]}``.

        Raises:
            StorageError: the database failed (what committed stays consistent).
        """
        now = self._ctx.now()
        cutoff = hour_of(now - timedelta(seconds=self.settings.grace_s))
        start = cutoff - timedelta(hours=self.settings.lookback_h)
        u = db.DriftRollup
        per_key: dict[tuple[str, str], dict[datetime, dict[str, int]]] = {}
        with self._ctx.read() as s:
            for model, site, hour, version, rows in s.execute(
                select(u.model, u.site, u.hour, u.version, u.rows).where(
                    u.hour >= start, u.hour < cutoff, u.windows > 0
                )
            ):
                per_key.setdefault((model, site), {}).setdefault(hour, {})[version] = int(rows)
            stepped = {
                (m, si): p
                for m, si, p in s.execute(
                    select(db.DriftStateRow.model, db.DriftStateRow.site, db.DriftStateRow.period)
                )
            }
        return step_keys(
            per_key, stepped, lambda key, hours: self._advance_key(key, hours, now),
            "drift states",
        )  # fmt: skip

    def _advance_key(
        self, key: tuple[str, str], hours: Mapping[datetime, Mapping[str, int]], now: datetime
    ) -> tuple[int, list[JSONDict]]:
        model, site = key
        changes: list[JSONDict] = []
        steps = 0
        with self._ctx.telemetry_write() as s:
            row = self._locked_state(s, model, site, now)
            for hour in sorted(hours):
                if row.period is not None and hour <= row.period:
                    continue  # stepped already (this round's read was older)
                versions = hours[hour]
                version = max(versions, key=lambda v: (versions[v], _number(v)))
                score, rows = self._hour_score(s, model, version, site, hour)
                before = DriftState(row.state)
                state = self._state_of(row) if row.version == version else reset()
                after = step(state, score, rows, self.settings.sequential)
                self._store(row, version, after, rows, hour, now)
                steps += 1
                if after.state is not before:
                    row.changed_at = now
                    payload = {
                        "model": model,
                        "site": site,
                        "version": _number(version),
                        "from": before.value,
                        "to": after.state.value,
                        "score": score,
                        "statistic": after.statistic,
                        "at": _iso(now),
                    }
                    events.record_event(
                        s, events.DRIFT_STATE_CHANGED, f"{model}/{site}", payload, now
                    )
                    changes.append({"model": model, "site": site, "from": before.value,
                                    "to": after.state.value, "hour": _iso(hour)})  # fmt: skip
        return steps, changes

    def _hour_score(
        self, s: Session, model: str, version: str, site: str, hour: datetime
    ) -> tuple[float | None, int]:
        """The combined score and rows of one roll-up (None: insufficient data, or the
        version has no profile)."""
        package = self._profiles.get(s, model, version)
        if package is None:
            return None, 0
        rows = read_rollups(s, model, version, hour, hour + _HOUR, [site])
        merged = merge_rollups(package, rows, sketches=False)
        report = evaluate(package.profile, merged, self.settings.policy)
        return report.score, merged.rows

    @staticmethod
    def _state_of(row: db.DriftStateRow) -> SequentialState:
        return SequentialState(
            state=DriftState(row.state),
            statistic=row.statistic,
            windows=row.windows,
            skipped=row.skipped,
            drift_windows=row.drift_windows,
            last_score=row.last_score,
        )

    @staticmethod
    def _store(
        row: db.DriftStateRow, version: str, st: SequentialState, rows: int, hour: datetime,
        now: datetime,
    ) -> None:  # fmt: skip
        row.version = version
        row.state = st.state.value
        row.statistic = st.statistic
        row.windows = st.windows
        row.skipped = st.skipped
        row.drift_windows = st.drift_windows
        row.last_score = st.last_score
        row.last_rows = rows
        row.period = hour
        row.updated_at = now

    @staticmethod
    def _locked_state(s: Session, model: str, site: str, now: datetime) -> db.DriftStateRow:
        fresh = reset()
        values = {
            "version": "",
            "state": fresh.state.value,
            "statistic": 0.0,
            "windows": 0,
            "skipped": 0,
            "drift_windows": 0,
            "last_score": None,
            "last_rows": 0,
            "period": None,
            "changed_at": now,
            "updated_at": now,
        }
        return locked_state_row(s, db.DriftStateRow, model, site, values)


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1
