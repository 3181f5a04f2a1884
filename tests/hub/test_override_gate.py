"""The override rate (issue 9): window counters from the agents, merged exactly at the hub,
read by an ``override_rate`` rollout gate and counted on the hub's ``/metrics``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import orjson
import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hub.controller import group_stats
from modelfleet.hub.service import HubService
from modelfleet.rollout.gates import GroupStats, Verdict, evaluate
from modelfleet.rollout.plan import GateMetric, GateSpec, parse_plan
from modelfleet.telemetry.wire import merge_windows
from tests.hub._rollouts import ADMIN, OPERATOR, assigned, enrol_fleet, plan
from tests.hub._telemetry import batch, window

GATE = {"metric": "override_rate", "max": 0.2, "min_devices": 1, "min_samples": 10}


def _stats(overridden: int, confirmed: int, devices: int = 2) -> GroupStats:
    return GroupStats(
        devices=devices,
        requests=1000,
        overrides_overridden=overridden,
        overrides_confirmed=confirmed,
    )


@pytest.mark.parametrize(
    ("overridden", "confirmed", "verdict", "value"),
    [
        (1, 9, Verdict.PASS, 0.1),
        (2, 8, Verdict.PASS, 0.2),  # at the limit
        (3, 7, Verdict.BAD, 0.3),  # over, once of two
        (1, 5, Verdict.HOLD, 1 / 6),  # 6 judged answers < min_samples 10
        (0, 0, Verdict.HOLD, None),  # nobody judged anything: no value, never a pass
    ],
)
def test_the_override_rate_gate_judges_the_share_of_judged_answers_overridden(
    overridden: int, confirmed: int, verdict: Verdict, value: float | None
) -> None:
    spec = GateSpec(GateMetric.OVERRIDE_RATE, max=0.2, min_samples=10, consecutive=2)
    result = evaluate([spec], _stats(overridden, confirmed), None, {}).results[0]
    assert result.verdict is verdict, result.reason
    assert result.value == (None if value is None else pytest.approx(value))
    assert result.samples == overridden + confirmed


def test_a_relative_override_rate_gate_compares_with_the_control() -> None:
    spec = GateSpec(GateMetric.OVERRIDE_RATE, max_delta=0.05, min_samples=10, consecutive=1)
    control = _stats(10, 90)
    ok = evaluate([spec], _stats(14, 86), control, {}).results[0]
    worse = evaluate([spec], _stats(40, 60), control, {}).results[0]
    assert ok.verdict is Verdict.PASS and ok.limit == pytest.approx(0.15)
    assert worse.verdict is Verdict.FAIL and worse.control == pytest.approx(0.1)


def test_plans_accept_the_override_rate_gate_and_round_trip() -> None:
    parsed = parse_plan(plan(gates=[GATE]))
    assert parsed.gates[0].metric is GateMetric.OVERRIDE_RATE
    assert parse_plan(parsed.to_dict()) == parsed
    with pytest.raises(InvalidInputError, match="needs a threshold"):
        parse_plan(plan(gates=[{"metric": "override_rate"}]))


def test_window_counters_merge_into_the_gate_stats_exactly() -> None:
    at = ManualClock().now()
    records = [
        window(i, f"d{i % 3}", at, overrides={"overridden": i, "confirmed": 10 - i})
        for i in range(1, 7)
    ]
    summary = merge_windows(records).to_record()
    summary["devices"] = 3
    stats = group_stats(summary)
    assert (stats.overrides_overridden, stats.overrides_confirmed) == (21, 39)


# -- end to end: a rollout held by its override gate --------------------------------------


@pytest.fixture
def fleet(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> Iterator[tuple[HubService, list[str]]]:
    ids = enrol_fleet(service, 20)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    yield service, ids


def _round(
    service: HubService,
    clock: ManualClock,
    ids: list[str],
    seqs: Counter[str],
    overridden: Callable[[int], int],
) -> None:
    """One window per device and served version; of 20 judged answers, ``overridden(v)``
    were overridden."""
    closed = clock.now() - timedelta(seconds=1)
    for device in ids:
        records = []
        for a in service.get_device(device)["assignments"]:
            rid = a["rollout_id"] if str(a["rollout_id"]).startswith("ro-") else None
            served = [(a["production"], "production")]
            if a["candidate"] is not None:
                served.append((a["candidate"], "candidate"))
            for version, role in served:
                seqs[device] += 1
                n = overridden(version)
                records.append(
                    window(
                        seqs[device], device, closed, version=str(version), role=role,
                        rollout_id=rid, ok=50,
                        overrides={"overridden": n, "confirmed": 20 - n},
                    )
                )  # fmt: skip
        service.ingest_telemetry(device, orjson.dumps(batch(device, records, clock.now())))


@pytest.mark.parametrize(("v2_overridden", "state"), [(10, "rolled_back"), (1, "running")])
def test_a_version_humans_keep_overriding_is_rolled_back_by_its_gate(
    fleet: tuple[HubService, list[str]], clock: ManualClock, v2_overridden: int, state: str
) -> None:
    service, ids = fleet
    gates = [{**GATE, "consecutive": 2}]
    ro = service.create_rollout(plan(gates=gates), actor=OPERATOR)
    service.tick_rollouts()
    canaries = assigned(service)
    seqs: Counter[str] = Counter()
    for _ in range(2):
        clock.advance(300)
        _round(service, clock, ids, seqs, lambda v: v2_overridden if v == 2 else 1)
        service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == state
    [evaluation, *_] = service.rollout_evaluations(ro["id"])
    [result] = evaluation["evidence"]["evaluation"]["results"]
    assert result["metric"] == "override_rate"
    assert result["value"] == pytest.approx(v2_overridden / 20)
    assert result["samples"] == 20 * len(canaries) * 2  # two rounds of 20 judged answers
    if state == "rolled_back":
        assert assigned(service) == set()
    else:
        assert view["stage_index"] == 1  # the gate passed: the rollout went on


def test_the_hub_counts_overrides_once_per_stored_window_without_device_labels(
    http: TestClient, service: HubService, clock: ManualClock
) -> None:
    service.add_device("d1", "plant-a", [], actor=ADMIN)
    record = window(1, "d1", clock.now(), version="3", overrides={"overridden": 4, "confirmed": 6})
    body = orjson.dumps(batch("d1", [record], clock.now()))
    service.ingest_telemetry("d1", body)
    service.ingest_telemetry("d1", body)  # a replay: already stored, not counted again
    text = http.get("/metrics").text
    assert (
        'modelfleet_hub_overrides_total{model="iris",outcome="overridden",version="3"} 4.0' in text
    )
    assert (
        'modelfleet_hub_overrides_total{model="iris",outcome="confirmed",version="3"} 6.0' in text
    )
    assert all("d1" not in line for line in text.splitlines() if "overrides" in line)
