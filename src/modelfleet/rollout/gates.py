"""Stage gates: a pure verdict over merged telemetry aggregates of a stage and its control.

The controller merges the telemetry windows of the stage's devices (the version under test,
this rollout, since the stage started) and of the control group (the production version the
rollout replaces, same period) into :class:`GroupStats`, and calls :func:`evaluate` with the
streaks of consecutive bad evaluations so far. Nothing here reads a clock or does I/O.

Verdicts per gate (issue 8):

* **HOLD** — too little data: fewer than ``min_devices`` reporting devices or ``min_samples``
  samples in the stage (and, for relative gates, in the control), or no value. A HOLD never
  passes, however long the soak; it leaves the streak as it was.
* **BAD** — over the threshold, fewer than ``consecutive`` times in a row (the streak grows).
* **FAIL** — over the threshold ``consecutive`` times in a row; guard rollbacks and crashes
  over an absolute ``max`` fail at once, with no data minimum (a rollback counts at once).
* **PASS** — enough data and within the threshold; the streak goes back to 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from modelfleet.rollout.plan import GateMetric, GateSpec

__all__ = ["Evaluation", "GateResult", "GroupStats", "Verdict", "evaluate"]


@dataclass(frozen=True)
class GroupStats:
    """Merged window aggregates of one group of devices over the soak so far.

    Attributes:
        devices: distinct devices that sent windows.
        requests: requests served; errors: of them failed inside the server.
        latency_p99_s: 99th percentile of server-side latency in seconds, None without requests.
        guard_rollbacks: local guard rollbacks (counted at once from device reports).
        crashes: crashes and watchdog restarts.
        refusals: requests refused (overload, bad input the model could not take).
        shadow_compared, shadow_disagreed: shadow comparisons and how many disagreed.
        confidence_mean: mean top-class confidence, None without samples.
        confidence_samples: outputs the mean is over.
        drift_score: the combined drift score of the group's drift counts merged over the
            soak against the version's reference profile (issue 9,
            :func:`modelfleet.monitoring.drift.evaluate`: the largest PSI of drifting
            columns, 0 when none); None with insufficient data or no reference profile.
        drift_rows: input rows those counts hold.
        overrides_overridden, overrides_confirmed: answers a human overrode or confirmed,
            as the application reported them to the agents (issue 9).
    """

    devices: int = 0
    requests: int = 0
    errors: int = 0
    latency_p99_s: float | None = None
    guard_rollbacks: int = 0
    crashes: int = 0
    refusals: int = 0
    shadow_compared: int = 0
    shadow_disagreed: int = 0
    confidence_mean: float | None = None
    confidence_samples: int = 0
    drift_score: float | None = None
    drift_rows: int = 0
    overrides_overridden: int = 0
    overrides_confirmed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (stored with the evidence)."""
        return asdict(self)


class Verdict(StrEnum):
    """A gate's (or a whole evaluation's) verdict."""

    PASS = "pass"
    HOLD = "hold"  # too little data; never passes
    BAD = "bad"  # over the threshold, fewer than `consecutive` times in a row
    FAIL = "fail"


@dataclass(frozen=True)
class GateResult:
    """One gate's evidence and verdict.

    Attributes:
        metric: the gate's metric.
        value: the stage's value, None without data.
        control: the control's value (relative gates), None without data or for absolute gates.
        limit: the threshold the value was held against, None when it could not be computed.
        devices, samples: the stage's reporting devices and samples behind the value.
        verdict: see the module docstring.
        streak: consecutive bad evaluations including this one (0 after a PASS).
        reason: one human-readable line.
    """

    metric: GateMetric
    value: float | None
    control: float | None
    limit: float | None
    devices: int
    samples: int
    verdict: Verdict
    streak: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        out = asdict(self)
        out["metric"] = self.metric.value
        out["verdict"] = self.verdict.value
        return out


@dataclass(frozen=True)
class Evaluation:
    """All gates of a stage at one moment.

    ``verdict``: FAIL if any gate fails, else PASS only if every gate passes, else HOLD (some
    gate holds or is bad). An evaluation with no gates holds.
    """

    verdict: Verdict
    results: tuple[GateResult, ...]

    @property
    def streaks(self) -> dict[str, int]:
        """metric -> streak after this evaluation (what the next call takes)."""
        return {r.metric.value: r.streak for r in self.results}

    @property
    def reason(self) -> str:
        """The reasons of the gates that did not pass, joined; ``"all gates pass"`` otherwise."""
        if not self.results:
            return "no gates"
        failing = [r.reason for r in self.results if r.verdict is not Verdict.PASS]
        return "; ".join(failing) if failing else "all gates pass"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: verdict, reason and every result."""
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "results": [r.to_dict() for r in self.results],
        }


def evaluate(
    gates: Sequence[GateSpec],
    stage: GroupStats,
    control: GroupStats | None,
    streaks: Mapping[str, int],
) -> Evaluation:
    """Evaluate every gate of a stage.

    Values per metric: ``latency_p99`` the p99 in seconds; ``error_rate`` errors / requests;
    ``guard_rollbacks`` and ``crashes`` the count for an absolute ``max``, the count per
    reporting device for a relative gate; ``refusals`` refusals / requests;
    ``shadow_disagreement`` disagreed / compared; ``confidence_shift`` the absolute difference
    of the stage's and the control's mean confidence (always needs the control);
    ``drift_score`` the stage's combined drift score over the soak (absolute ``max`` only).
    ``override_rate`` overridden / (overridden + confirmed), the share of the answers a human
    judged that they overrode (issue 9, ADR 0021).
    Samples are requests, except shadow comparisons, confidence samples, drift rows and
    judged answers (overridden + confirmed) for those metrics.

    Args:
        gates: the plan's gates.
        stage: the stage's devices on the version under test.
        control: the control group on the production version, None when unknown.
        streaks: metric value -> consecutive bad evaluations so far (missing = 0).

    Returns:
        The evaluation; its :attr:`Evaluation.streaks` are the streaks to pass next time.
    """
    results = tuple(_gate(g, stage, control, streaks.get(g.metric.value, 0)) for g in gates)
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        verdict = Verdict.FAIL
    elif results and verdicts == {Verdict.PASS}:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.HOLD
    return Evaluation(verdict, results)


_COUNTS = frozenset({GateMetric.GUARD_ROLLBACKS, GateMetric.CRASHES})


def _samples(metric: GateMetric, g: GroupStats) -> int:
    if metric is GateMetric.SHADOW_DISAGREEMENT:
        return g.shadow_compared
    if metric is GateMetric.CONFIDENCE_SHIFT:
        return g.confidence_samples
    if metric is GateMetric.DRIFT_SCORE:
        return g.drift_rows
    if metric is GateMetric.OVERRIDE_RATE:
        return g.overrides_overridden + g.overrides_confirmed
    return g.requests


def _value(metric: GateMetric, g: GroupStats, per_device: bool) -> float | None:
    """The group's own value of a metric (confidence: its mean), None without data."""
    if metric is GateMetric.LATENCY_P99:
        return g.latency_p99_s
    if metric in _COUNTS:
        n = g.guard_rollbacks if metric is GateMetric.GUARD_ROLLBACKS else g.crashes
        if not per_device:
            return float(n)
        return n / g.devices if g.devices else None
    if metric is GateMetric.SHADOW_DISAGREEMENT:
        return g.shadow_disagreed / g.shadow_compared if g.shadow_compared else None
    if metric is GateMetric.CONFIDENCE_SHIFT:
        return g.confidence_mean if g.confidence_samples else None
    if metric is GateMetric.DRIFT_SCORE:
        return g.drift_score
    if metric is GateMetric.OVERRIDE_RATE:
        judged = g.overrides_overridden + g.overrides_confirmed
        return g.overrides_overridden / judged if judged else None
    part = g.errors if metric is GateMetric.ERROR_RATE else g.refusals
    return part / g.requests if g.requests else None


def _enough(spec: GateSpec, g: GroupStats) -> str:
    """Why a group has too little data for the gate, or "" when it has enough."""
    if g.devices < spec.min_devices:
        return f"{g.devices} reporting devices < {spec.min_devices}"
    samples = _samples(spec.metric, g)
    if samples < spec.min_samples:
        return f"{samples} samples < {spec.min_samples}"
    return ""


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"


def _gate(spec: GateSpec, stage: GroupStats, control: GroupStats | None, streak: int) -> GateResult:
    m = spec.metric
    samples = _samples(m, stage)
    # Values first, shown as evidence even when the verdict holds for data.
    ctl: float | None = None
    limit: float | None = spec.max
    if m is GateMetric.CONFIDENCE_SHIFT:
        mean = _value(m, stage, per_device=False)
        ctl = None if control is None else _value(m, control, per_device=False)
        value = None if mean is None or ctl is None else abs(mean - ctl)
    else:
        value = _value(m, stage, per_device=spec.relative)
        if spec.relative:
            ctl = None if control is None else _value(m, control, per_device=True)
            ratio = 1.0 if spec.max_ratio is None else spec.max_ratio
            limit = None if ctl is None else ctl * ratio + (spec.max_delta or 0.0)
    needs_control = spec.relative or m is GateMetric.CONFIDENCE_SHIFT

    def result(verdict: Verdict, new_streak: int, reason: str) -> GateResult:
        return GateResult(
            m, value, ctl, limit, stage.devices, samples, verdict, new_streak, f"{m}: {reason}"
        )

    if m in _COUNTS and spec.max is not None and value is not None and value > spec.max:
        # A guard rollback or crash counts at once: no data minimum, no streak to wait for.
        return result(Verdict.FAIL, streak + 1, f"{value:g} > max {spec.max:g}, fails at once")
    short = _enough(spec, stage)
    if short:
        return result(Verdict.HOLD, streak, f"holding for data: {short}")
    if needs_control:
        why = "no control group" if control is None else _enough(spec, control)
        if why or ctl is None:
            return result(Verdict.HOLD, streak, f"holding for control: {why or 'no value'}")
    if value is None or limit is None:
        return result(Verdict.HOLD, streak, "holding for data: no value")
    if value <= limit:
        return result(Verdict.PASS, 0, f"{_fmt(value)} <= {_fmt(limit)}")
    bad = streak + 1
    over = f"{_fmt(value)} > {_fmt(limit)}"
    if bad >= spec.consecutive:
        return result(Verdict.FAIL, bad, f"{over}, {bad} times in a row")
    return result(Verdict.BAD, bad, f"{over} ({bad} of {spec.consecutive} in a row)")
