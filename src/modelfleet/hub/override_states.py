"""The override-rate state per (model, site) at the hub (issue 9, ADR 0040): a drift layer
of its own, beside the input drift of :mod:`.drift`.

:meth:`OverrideStates.advance`, run by the hub's upkeep round right after
:meth:`~modelfleet.hub.drift.Drift.advance` on the injected clock, steps one
:func:`modelfleet.monitoring.override_rate.step_hour` (the one CUSUM of
:mod:`modelfleet.monitoring.sequential`) per (model, site) per *closed* hour — an hour is
closed ``grace_s`` (600 s) after it ends — with that hour's override roll-up
(:mod:`.override_rollups`) of the version with the most judged answers at the site then.
Hours are stepped in order, each once: the state row keeps the last hour stepped
(``period``) and is locked while it is stepped, so two upkeep rounds (or replicas) never
step an hour twice. Hours with no judged answer have no roll-up and are no step; an hour
with fewer than ``min_judged`` is skipped (insufficient data).

When the serving version changes the state starts afresh and its **baseline** is fixed:
the previous version's rate at the site over the ``baseline_days`` before that hour
(:func:`~modelfleet.monitoring.override_rate.baseline_of`), else the configured expected
rate. A change of state records :data:`~modelfleet.hub.events.OVERRIDES_STATE_CHANGED` in
the same transaction (webhooks deliver it, signed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError
from modelfleet.hub import db, events
from modelfleet.hub._hourly_states import list_states, locked_state_row, step_keys
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.context import HubContext
from modelfleet.hub.drift_rollups import hour_of
from modelfleet.hub.override_rollups import read_override_hours, version_totals
from modelfleet.monitoring.override_rate import (
    Baseline,
    BaselineSource,
    OverridePolicy,
    baseline_of,
    excess,
    rate_of,
    step_hour,
)
from modelfleet.monitoring.sequential import DriftState, SequentialState, reset

__all__ = ["OverrideSettings", "OverrideStates", "state_view"]


@dataclass(frozen=True)
class OverrideSettings:
    """How the hub steps the override-rate states.

    Attributes:
        policy: minimum judged answers, expected rate, noise margin, CUSUM rule.
        grace_s: seconds after an hour ends before it is stepped (late windows).
        lookback_h: hours back an upkeep round looks for hours not stepped yet.
        baseline_days: days before a version's first hour read for the previous version.
    """

    policy: OverridePolicy = field(default_factory=OverridePolicy)
    grace_s: float = 600.0
    lookback_h: int = 48
    baseline_days: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.grace_s <= 86400:
            raise InvalidInputError("grace_s must be between 0 and 86400 seconds")
        if not 1 <= self.lookback_h <= 24 * 400:
            raise InvalidInputError("lookback_h must be between 1 and 9600 hours")
        if not 1 <= self.baseline_days <= 400:
            raise InvalidInputError("baseline_days must be between 1 and 400")


def _number(version: str) -> int | None:
    return int(version) if version.isdigit() and len(version) < 12 else None


def _dominant(versions: Mapping[str, tuple[int, int]]) -> str:
    """The version with the most judged answers (ties: the highest number)."""
    return max(versions, key=lambda v: (sum(versions[v]), _number(v) or -1, v))


def state_view(row: db.OverrideStateRow) -> JSONDict:
    """A state row as the API answers it."""
    return {
        "model": row.model,
        "site": row.site,
        "version": row.version,
        "state": row.state,
        "statistic": row.statistic,
        "hours": row.hours,
        "skipped": row.skipped,
        "high_hours": row.high_hours,
        "last_rate": row.last_rate,
        "last_excess": row.last_excess,
        "last_judged": row.last_judged,
        "baseline": {
            "rate": row.baseline_rate,
            "source": row.baseline_source,
            "version": row.baseline_version,
            "judged": row.baseline_judged,
        },
        "period": _iso(row.period) if row.period is not None else None,
        "changed_at": _iso(row.changed_at),
        "updated_at": _iso(row.updated_at),
    }


class OverrideStates:
    """Override-rate states over the override roll-ups.

    Args:
        ctx: the hub's sessions and clock.
        settings: policy, grace, lookback, baseline range.
    """

    def __init__(self, ctx: HubContext, settings: OverrideSettings | None = None) -> None:
        self._ctx = ctx
        self.settings = settings or OverrideSettings()

    def states(self, model: str | None = None, site: str | None = None) -> list[JSONDict]:
        """See ``HubService.override_states``."""
        return list_states(self._ctx, db.OverrideStateRow, state_view, model, site)

    def advance(self) -> JSONDict:
        """Step every (model, site) over its closed hours not stepped yet (see the module
        docstring); what the upkeep round runs.

        Returns:
            ``{"steps": hours stepped, "changes": [{"model", "site", "from", "to", "hour"}]}``.

        Raises:
            StorageError: the database failed (what committed stays consistent).
        """
        now = self._ctx.now()
        cutoff = hour_of(now - timedelta(seconds=self.settings.grace_s))
        start = cutoff - timedelta(hours=self.settings.lookback_h)
        per_key: dict[tuple[str, str], dict[datetime, dict[str, tuple[int, int]]]] = {}
        with self._ctx.read() as s:
            for h in read_override_hours(s, start, cutoff):
                hours = per_key.setdefault((h.model, h.site), {})
                hours.setdefault(h.hour, {})[h.version] = (h.overridden, h.confirmed)
            t = db.OverrideStateRow
            stepped = {(m, si): p for m, si, p in s.execute(select(t.model, t.site, t.period))}
        return step_keys(
            per_key, stepped, lambda key, hours: self._advance_key(key, hours, now),
            "override states",
        )  # fmt: skip

    def _advance_key(
        self,
        key: tuple[str, str],
        hours: Mapping[datetime, Mapping[str, tuple[int, int]]],
        now: datetime,
    ) -> tuple[int, list[JSONDict]]:
        model, site = key
        policy = self.settings.policy
        changes: list[JSONDict] = []
        steps = 0
        with self._ctx.telemetry_write() as s:
            row = _locked_state(s, model, site, now)
            for hour in sorted(hours):
                if row.period is not None and hour <= row.period:
                    continue  # stepped already (this round's read was older)
                versions = hours[hour]
                version = _dominant(versions)
                overridden, confirmed = versions[version]
                before = DriftState(row.state)
                if row.version == version:
                    state, baseline = _state_of(row), _baseline_of(row)
                else:  # a new version at the site: start afresh against the one before
                    state, baseline = reset(), self._baseline(s, model, site, version, hour)
                after = step_hour(state, overridden, confirmed, baseline, policy)
                rate = rate_of(overridden, confirmed)
                score = excess(overridden, confirmed, baseline, policy)
                _store(row, version, after, baseline, rate, score, overridden + confirmed)
                row.period, row.updated_at = hour, now
                steps += 1
                if after.state is not before:
                    row.changed_at = now
                    payload = {
                        "model": model,
                        "site": site,
                        "version": _number(version),
                        "from": before.value,
                        "to": after.state.value,
                        "rate": rate,
                        "judged": overridden + confirmed,
                        "baseline": baseline.to_dict(),
                        "excess": score,
                        "statistic": after.statistic,
                        "hour": _iso(hour),
                        "at": _iso(now),
                    }
                    events.record_event(
                        s, events.OVERRIDES_STATE_CHANGED, f"{model}/{site}", payload, now
                    )
                    changes.append({"model": model, "site": site, "from": before.value,
                                    "to": after.state.value, "hour": _iso(hour)})  # fmt: skip
        return steps, changes

    def _baseline(
        self, s: Session, model: str, site: str, version: str, hour: datetime
    ) -> Baseline:
        """The baseline of ``version`` from its first hour ``hour`` on (module docstring)."""
        serving = _number(version)
        history: dict[int, tuple[int, int]] = {}
        if serving is not None:
            since = hour - timedelta(days=self.settings.baseline_days)
            for v, counts in version_totals(s, model, site, since, hour).items():
                number = _number(v)
                if number is not None and number < serving:
                    history[number] = counts
        return baseline_of(serving, history, self.settings.policy)


def _state_of(row: db.OverrideStateRow) -> SequentialState:
    return SequentialState(
        state=DriftState(row.state),
        statistic=row.statistic,
        windows=row.hours,
        skipped=row.skipped,
        drift_windows=row.high_hours,
        last_score=row.last_excess,
    )


def _baseline_of(row: db.OverrideStateRow) -> Baseline:
    return Baseline(
        rate=row.baseline_rate,
        source=BaselineSource(row.baseline_source),
        version=row.baseline_version,
        judged=row.baseline_judged,
    )


def _store(
    row: db.OverrideStateRow, version: str, st: SequentialState, baseline: Baseline,
    rate: float | None, score: float | None, judged: int,
) -> None:  # fmt: skip
    row.version = version
    row.state = st.state.value
    row.statistic = st.statistic
    row.hours = st.windows
    row.skipped = st.skipped
    row.high_hours = st.drift_windows
    row.last_rate = rate
    row.last_excess = score
    row.last_judged = judged
    row.baseline_rate = baseline.rate
    row.baseline_source = baseline.source.value
    row.baseline_version = baseline.version
    row.baseline_judged = baseline.judged


def _locked_state(s: Session, model: str, site: str, now: datetime) -> db.OverrideStateRow:
    fresh = {
        "version": "",
        "state": DriftState.STABLE.value,
        "statistic": 0.0,
        "hours": 0,
        "skipped": 0,
        "high_hours": 0,
        "last_rate": None,
        "last_excess": None,
        "last_judged": 0,
        "baseline_rate": 0.0,
        "baseline_source": BaselineSource.EXPECTED.value,
        "baseline_version": None,
        "baseline_judged": 0,
        "period": None,
        "changed_at": now,
        "updated_at": now,
    }
    return locked_state_row(s, db.OverrideStateRow, model, site, fresh)
