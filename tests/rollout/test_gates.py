"""Stage gates (rollout.gates): too little data holds, relative gates need a control, streaks."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.rollout.gates import GroupStats, Verdict, evaluate
from modelfleet.rollout.plan import DEFAULT_GATES, GateMetric, GateSpec

HEALTHY = GroupStats(
    devices=10,
    requests=10_000,
    errors=10,
    latency_p99_s=0.010,
    shadow_compared=1_000,
    shadow_disagreed=20,
    confidence_mean=0.90,
    confidence_samples=10_000,
)


def one(
    spec: GateSpec,
    stage: GroupStats,
    control: GroupStats | None = HEALTHY,
    streak: int = 0,
) -> tuple[Verdict, int, str]:
    ev = evaluate([spec], stage, control, {spec.metric.value: streak})
    (r,) = ev.results
    assert ev.verdict is (r.verdict if r.verdict is not Verdict.BAD else Verdict.HOLD)
    return r.verdict, r.streak, r.reason


@pytest.mark.parametrize(
    ("spec", "stage", "verdict"),
    [
        # error_rate: 10/10,000 = 0.001 on control
        (GateSpec(GateMetric.ERROR_RATE, max_delta=0.01), replace(HEALTHY, errors=100), "pass"),
        (GateSpec(GateMetric.ERROR_RATE, max_delta=0.01), replace(HEALTHY, errors=200), "bad"),
        (GateSpec(GateMetric.ERROR_RATE, max=0.005), replace(HEALTHY, errors=50), "pass"),
        (GateSpec(GateMetric.ERROR_RATE, max=0.005), replace(HEALTHY, errors=51), "bad"),
        # latency: 10 ms on control
        (
            GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2),
            replace(HEALTHY, latency_p99_s=0.012),
            "pass",
        ),
        (
            GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2),
            replace(HEALTHY, latency_p99_s=0.0121),
            "bad",
        ),
        (
            GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2, max_delta=0.001),
            replace(HEALTHY, latency_p99_s=0.0129),
            "pass",
        ),
        (GateSpec(GateMetric.LATENCY_P99, max=0.05), replace(HEALTHY, latency_p99_s=0.06), "bad"),
        # refusals are a rate per request
        (GateSpec(GateMetric.REFUSALS, max=0.01), replace(HEALTHY, refusals=100), "pass"),
        (GateSpec(GateMetric.REFUSALS, max=0.01), replace(HEALTHY, refusals=101), "bad"),
        # shadow disagreement over comparisons
        (GateSpec(GateMetric.SHADOW_DISAGREEMENT, max=0.05), HEALTHY, "pass"),
        (
            GateSpec(GateMetric.SHADOW_DISAGREEMENT, max=0.05),
            replace(HEALTHY, shadow_disagreed=60),
            "bad",
        ),
        # confidence shift: |stage mean - control mean|
        (
            GateSpec(GateMetric.CONFIDENCE_SHIFT, max=0.05),
            replace(HEALTHY, confidence_mean=0.86),
            "pass",
        ),
        (
            GateSpec(GateMetric.CONFIDENCE_SHIFT, max=0.05),
            replace(HEALTHY, confidence_mean=0.96),
            "bad",
        ),
        # crashes relative: per reporting device, against the control's per-device rate
        (
            GateSpec(GateMetric.CRASHES, max_ratio=2.0, max_delta=0.1),
            replace(HEALTHY, crashes=1),
            "pass",
        ),
        (
            GateSpec(GateMetric.CRASHES, max_ratio=2.0, max_delta=0.1),
            replace(HEALTHY, crashes=2),
            "bad",
        ),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_thresholds(spec: GateSpec, stage: GroupStats, verdict: str) -> None:
    assert one(spec, stage)[0] == Verdict(verdict)


@pytest.mark.parametrize(
    "stage",
    [
        GroupStats(),
        replace(HEALTHY, devices=2),
        replace(HEALTHY, requests=499, errors=0),
        replace(HEALTHY, requests=0, errors=0, latency_p99_s=None),
    ],
    ids=["nothing", "too-few-devices", "too-few-samples", "no-requests"],
)
def test_too_little_data_holds_and_never_passes(stage: GroupStats) -> None:
    spec = GateSpec(GateMetric.ERROR_RATE, max=1.0, min_devices=3, min_samples=500)
    verdict, streak, reason = one(spec, stage, streak=1)
    assert verdict is Verdict.HOLD and streak == 1  # a HOLD leaves the streak alone
    assert "holding for data" in reason


def test_holding_never_passes_whatever_the_streaks_say() -> None:
    rng = random.Random(8)
    for _ in range(500):
        stage = GroupStats(
            devices=rng.randint(0, 2),
            requests=rng.randint(0, 99),
            errors=0,
            latency_p99_s=rng.choice([None, 0.001]),
        )
        streaks = {g.metric.value: rng.randint(0, 5) for g in DEFAULT_GATES}
        ev = evaluate(DEFAULT_GATES, stage, HEALTHY, streaks)
        assert ev.verdict is not Verdict.PASS


@pytest.mark.parametrize(
    "control",
    [
        None,
        GroupStats(),
        replace(HEALTHY, devices=0),
        replace(HEALTHY, requests=50, confidence_samples=50),
    ],
    ids=["no-control", "empty-control", "control-no-devices", "control-few-samples"],
)
def test_relative_gates_hold_without_control_data(control: GroupStats | None) -> None:
    for spec in (
        GateSpec(GateMetric.ERROR_RATE, max_delta=0.01),
        GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2),
        GateSpec(GateMetric.CONFIDENCE_SHIFT, max=0.1),
    ):
        verdict, _, reason = one(spec, HEALTHY, control)
        assert verdict is Verdict.HOLD and "holding for control" in reason, spec


def test_absolute_gates_need_no_control() -> None:
    assert one(GateSpec(GateMetric.ERROR_RATE, max=0.01), HEALTHY, None)[0] is Verdict.PASS


def test_a_bad_streak_fails_after_consecutive_evaluations_and_a_pass_resets_it() -> None:
    spec = GateSpec(GateMetric.ERROR_RATE, max=0.001, consecutive=3)
    bad = replace(HEALTHY, errors=500)
    streaks: dict[str, int] = {}
    verdicts = []
    for stage in (bad, bad, HEALTHY, bad, bad, bad):
        ev = evaluate([spec], stage, None, streaks)
        verdicts.append(ev.results[0].verdict.value)
        streaks = ev.streaks
    assert verdicts == ["bad", "bad", "pass", "bad", "bad", "fail"]
    assert streaks == {"error_rate": 3}


def test_a_hold_between_bad_evaluations_keeps_the_streak() -> None:
    spec = GateSpec(GateMetric.ERROR_RATE, max=0.001, consecutive=2)
    ev = evaluate([spec], replace(HEALTHY, errors=500), None, {})
    ev = evaluate([spec], GroupStats(), None, ev.streaks)
    assert ev.results[0].verdict is Verdict.HOLD and ev.streaks == {"error_rate": 1}
    ev = evaluate([spec], replace(HEALTHY, errors=500), None, ev.streaks)
    assert ev.verdict is Verdict.FAIL


@pytest.mark.parametrize("metric", [GateMetric.GUARD_ROLLBACKS, GateMetric.CRASHES])
def test_a_guard_rollback_or_crash_fails_at_once_without_data(metric: GateMetric) -> None:
    spec = GateSpec(metric, max=0, min_devices=5, min_samples=10_000, consecutive=3)
    stage = GroupStats(devices=1, requests=3, **{metric.value: 1})
    verdict, streak, reason = one(spec, stage, None)
    assert verdict is Verdict.FAIL and streak == 1 and "at once" in reason


def test_no_guard_rollback_still_needs_data_to_pass() -> None:
    spec = GateSpec(GateMetric.GUARD_ROLLBACKS, max=0)
    assert one(spec, GroupStats(devices=1, requests=10))[0] is Verdict.HOLD
    assert one(spec, GroupStats(devices=1, requests=100))[0] is Verdict.PASS


def test_evaluation_fails_if_any_fails_and_passes_only_if_all_pass() -> None:
    gates = DEFAULT_GATES
    assert evaluate(gates, HEALTHY, HEALTHY, {}).verdict is Verdict.PASS
    slow = replace(HEALTHY, latency_p99_s=1.0)
    assert evaluate(gates, slow, HEALTHY, {}).verdict is Verdict.HOLD  # one BAD: holding
    assert evaluate(gates, slow, HEALTHY, {"latency_p99": 1}).verdict is Verdict.FAIL
    rolled = replace(HEALTHY, guard_rollbacks=1)
    ev = evaluate(gates, rolled, None, {})  # relative gates hold, the rollback fails
    assert ev.verdict is Verdict.FAIL
    assert [r.verdict.value for r in ev.results] == ["hold", "hold", "fail"]
    assert evaluate([], HEALTHY, HEALTHY, {}).verdict is Verdict.HOLD


def test_evidence_is_json_and_names_inputs_values_and_limits() -> None:
    spec = GateSpec(GateMetric.ERROR_RATE, max_delta=0.01)
    ev = evaluate([spec], replace(HEALTHY, errors=300), HEALTHY, {})
    doc = json.loads(json.dumps(ev.to_dict()))
    (r,) = doc["results"]
    assert doc["verdict"] == "hold" and r["verdict"] == "bad"
    assert r["metric"] == "error_rate" and r["value"] == pytest.approx(0.03)
    assert r["control"] == pytest.approx(0.001) and r["limit"] == pytest.approx(0.011)
    assert (r["devices"], r["samples"], r["streak"]) == (10, 10_000, 1)
    assert "0.03 > 0.011" in r["reason"] and doc["reason"] == r["reason"]
    assert json.loads(json.dumps(HEALTHY.to_dict()))["requests"] == 10_000


def test_a_holding_gate_still_shows_its_current_value() -> None:
    spec = GateSpec(GateMetric.ERROR_RATE, max=0.5, min_samples=500)
    r = evaluate([spec], GroupStats(devices=1, requests=10, errors=1), None, {}).results[0]
    assert r.verdict is Verdict.HOLD and r.value == pytest.approx(0.1) and r.samples == 10


counts = st.integers(min_value=0, max_value=5_000)
group_stats = st.builds(
    GroupStats,
    devices=st.integers(min_value=0, max_value=50),
    requests=counts,
    errors=counts,
    latency_p99_s=st.none() | st.floats(min_value=0, max_value=5),
    guard_rollbacks=st.integers(min_value=0, max_value=3),
    crashes=st.integers(min_value=0, max_value=3),
    refusals=counts,
    shadow_compared=counts,
    shadow_disagreed=counts,
    confidence_mean=st.none() | st.floats(min_value=0, max_value=1),
    confidence_samples=counts,
)
metrics = st.sampled_from([m for m in GateMetric if m is not GateMetric.DRIFT_SCORE])
limits = st.floats(min_value=0, max_value=2)


@st.composite
def gate_specs(draw: st.DrawFn) -> GateSpec:
    metric = draw(metrics)
    relative = metric is not GateMetric.CONFIDENCE_SHIFT and draw(st.booleans())
    return GateSpec(
        metric,
        max=None if relative else draw(limits),
        max_ratio=draw(st.floats(min_value=1, max_value=3)) if relative else None,
        max_delta=draw(st.none() | limits) if relative else None,
        min_devices=draw(st.integers(min_value=1, max_value=20)),
        min_samples=draw(st.integers(min_value=0, max_value=3_000)),
        consecutive=draw(st.integers(min_value=1, max_value=4)),
    )


@settings(max_examples=400)
@given(
    spec=gate_specs(),
    stage=group_stats,
    control=st.none() | group_stats,
    streak=st.integers(min_value=0, max_value=5),
)
def test_a_gate_passes_only_on_enough_data_within_its_limit(
    spec: GateSpec, stage: GroupStats, control: GroupStats | None, streak: int
) -> None:
    (r,) = evaluate([spec], stage, control, {spec.metric.value: streak}).results
    if r.verdict is Verdict.PASS:
        assert stage.devices >= spec.min_devices and r.samples >= spec.min_samples
        assert r.value is not None and r.limit is not None and r.value <= r.limit
        assert r.streak == 0
        if spec.relative or spec.metric is GateMetric.CONFIDENCE_SHIFT:
            assert control is not None and control.devices >= spec.min_devices
    elif r.verdict is Verdict.HOLD:
        assert r.streak == streak
    elif r.verdict is Verdict.BAD:
        assert r.streak == streak + 1 < spec.consecutive
    else:
        assert r.streak == streak + 1
        at_once = spec.metric in (GateMetric.GUARD_ROLLBACKS, GateMetric.CRASHES)
        assert r.streak >= spec.consecutive or (at_once and not spec.relative)
