"""Drift at the hub (issue 9, ADR 0019): roll-ups merged exactly at ingest, explained
reports, sequential states stepped once per closed hour, events and gauges."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from sqlalchemy import select

from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db, events
from modelfleet.hub.service import HubService
from modelfleet.monitoring.profile_counts import merge_wire
from tests.hub._drift import ADMIN, Outputs, counts, register_profiled, rows, send
from tests.hub._telemetry import batch, window

HOUR = timedelta(hours=1)


@pytest.fixture
def outputs(onnx_bytes: bytes) -> Outputs:
    return Outputs(onnx_bytes)


@pytest.fixture
def fleet(service: HubService) -> list[str]:
    for i, site in enumerate(("plant-a", "plant-a", "plant-b")):
        service.add_device(f"cam-{i}", site, [], actor=ADMIN)
    return ["cam-0", "cam-1", "cam-2"]


def _rollups(service: HubService) -> list[db.DriftRollup]:
    with service.context.read() as s:
        return list(s.scalars(select(db.DriftRollup).order_by(db.DriftRollup.site)))


def test_rollups_equal_the_merge_of_every_window_and_a_resent_batch_adds_nothing(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    hour = clock.now().replace(minute=0)
    sent: dict[str, list[dict[str, object]]] = {"plant-a": [], "plant-b": []}
    for k in range(3):
        for i, device in enumerate(fleet):
            wire = counts(package, rows(300, seed=10 * k + i), outputs)
            send(service, device, k + 1, hour + timedelta(minutes=10 * k + i), wire)
            sent["plant-a" if i < 2 else "plant-b"].append(wire)
    # the same batch again (an agent that lost the ack): stored once, rolled up once
    again = send(service, "cam-2", 3, hour + timedelta(minutes=22), sent["plant-b"][-1])
    assert again["duplicates"] == 1
    got = _rollups(service)
    assert [(r.site, r.windows, r.rows) for r in got] == [("plant-a", 6, 1800), ("plant-b", 3, 900)]
    for r in got:
        stored = merge_wire([orjson.loads(r.body)], package.profile)
        expected = merge_wire(sent[r.site], package.profile)
        for g in ("inputs", "outputs"):
            assert np.array_equal(stored.counts[g], expected.counts[g]), (r.site, g)
        assert stored.feature("x0").sketch.n == expected.feature("x0").sketch.n == r.rows  # type: ignore[union-attr]


def test_a_report_explains_every_test_and_keeps_inputs_and_outputs_apart(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    now = clock.now()
    for i, device in enumerate(fleet):
        send(service, device, 1, now, counts(package, rows(1000, seed=i), outputs))
    clock.advance(60)
    stable = service.drift_report("iris")
    assert stable["verdict"] == "no_drift" and stable["score"] == 0.0, stable["drifted"]
    assert stable["rows"] == 3000 and stable["sites"] == ["plant-a", "plant-b"]
    assert [f["feature"] for f in stable["inputs"]] == ["x0", "x1", "x2", "x3"]
    assert [f["feature"] for f in stable["outputs"]] == ["label", "probabilities[0]",
                                                         "probabilities[1]"]  # fmt: skip
    assert stable["prediction"]["verdict"] == "no_drift" and stable["sketched"] is True
    tests = {r["test"]: r for r in stable["inputs"][0]["results"]}
    assert set(tests) == {"psi", "js", "hellinger", "wasserstein", "chi_square", "ks"}
    for r in tests.values():
        assert {"value", "threshold", "verdict", "bins", "epsilon", "n"} <= set(r)
        assert r["value"] is not None and r["bins"] > 0
    assert tests["psi"]["epsilon"] == 0.5 and tests["ks"]["p_value"] is not None

    for i, device in enumerate(fleet):
        send(service, device, 2, clock.now(), counts(package, rows(1000, 50 + i, 1.5), outputs))
    clock.advance(60)
    site_b = service.drift_report("iris", version="1", site="plant-b", since=now)
    assert site_b["rows"] == 2000 and site_b["sites"] == ["plant-b"]
    drifted = service.drift_report("iris", since=now - HOUR)
    assert drifted["verdict"] == "drift" and "inputs/x0" in drifted["drifted"]
    assert drifted["inputs"][0]["verdict"] == "drift"
    assert {f["feature"] for f in drifted["inputs"] if f["verdict"] == "drift"} == {"x0"}
    # the shift moves the model's answers too: prediction drift, reported apart
    assert drifted["prediction"]["verdict"] == "drift" and drifted["prediction"]["drifted"]


def test_too_few_rows_give_insufficient_data_never_a_verdict(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    send(service, "cam-0", 1, clock.now(), counts(package, rows(50, 1, shift=3.0), outputs))
    clock.advance(60)
    report = service.drift_report("iris")
    assert report["verdict"] == "insufficient_data" and report["score"] is None
    assert all(f["verdict"] == "insufficient_data" for f in report["inputs"])
    later = clock.now() + HOUR
    nothing = service.drift_report("iris", since=later, until=later + HOUR)
    assert nothing["verdict"] == "insufficient_data" and nothing["rollups"] == 0


def test_a_version_without_a_profile_says_drift_is_not_computed(
    service: HubService, fleet: list[str], onnx_bytes: bytes
) -> None:
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    report = service.drift_report("iris", version="1")
    assert report["verdict"] == "insufficient_data"
    assert "drift will not be computed" in report["message"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"version": "one"}, InvalidInputError, "positive integer"),
        ({"version": "7"}, NotFoundError, "no version 7"),
        ({"until_before_since": True}, InvalidInputError, "until must be after since"),
        ({"span_days": 401}, InvalidInputError, "at most 400 days"),
    ],
    ids=["bad-version", "unknown-version", "empty-range", "too-long"],
)
def test_bad_report_parameters_are_refused_clearly(
    service: HubService, clock: ManualClock, onnx_bytes: bytes, tmp_path: Path,
    kwargs: dict[str, object], error: type[Exception], match: str,
) -> None:  # fmt: skip
    register_profiled(service, onnx_bytes, tmp_path)
    now = clock.now()
    args: dict[str, object] = {}
    if "version" in kwargs:
        args["version"] = kwargs["version"]
    if kwargs.get("until_before_since"):
        args.update(since=now, until=now - HOUR)
    if "span_days" in kwargs:
        args.update(since=now - timedelta(days=int(kwargs["span_days"])), until=now)  # type: ignore[call-overload]
    with pytest.raises(error, match=match):
        service.drift_report("iris", **args)  # type: ignore[arg-type]


def test_an_unknown_model_is_not_found(service: HubService) -> None:
    with pytest.raises(NotFoundError, match="no model"):
        service.drift_report("nope")


def test_counts_of_another_profile_are_stored_but_not_rolled_up(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    wire = counts(package, rows(300, 1), outputs)
    wire["profile"] = "sha256:" + "0" * 64
    assert send(service, "cam-0", 1, clock.now(), wire)["stored"] == 1
    bad = {"format": 1, "profile": package.digest, "inputs": {"index": [999999], "count": [1]}}
    send(service, "cam-0", 2, clock.now(), bad)
    send(service, "cam-0", 3, clock.now(), counts(package, rows(300, 2), outputs), version="9")
    assert _rollups(service) == []
    text = service.metrics_text().decode()
    assert 'modelfleet_hub_drift_windows_total{result="refused"} 2.0' in text
    assert 'modelfleet_hub_drift_windows_total{result="no_profile"} 1.0' in text
    assert len(service.device_windows("cam-0")) == 3  # telemetry is never refused for it


def _drift_events(service: HubService) -> list[dict[str, object]]:
    with service.context.read() as s:
        return [e for e in events.events_after(s, 0) if e["kind"] == events.DRIFT_STATE_CHANGED]


def test_states_step_once_per_closed_hour_and_a_change_records_one_event(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    start = clock.now().replace(minute=0) + HOUR
    clock.advance((start - clock.now()).total_seconds())
    seq = 0

    def hour(shift: float) -> None:
        nonlocal seq
        seq += 1
        for i, device in enumerate(fleet[:2]):  # plant-a
            x = rows(1500, 100 * seq + i, shift)
            send(
                service,
                device,
                seq,
                clock.now() + timedelta(minutes=5),
                counts(package, x, outputs),
            )
        clock.advance(3600)

    hour(0.0)
    assert service.advance_drift()["steps"] == 0  # the hour is not closed before its grace
    clock.advance(601)
    assert service.advance_drift()["steps"] == 1
    assert service.advance_drift()["steps"] == 0  # idempotent: each hour once
    (state,) = service.drift_states(model="iris")
    assert state["state"] == "stable" and state["site"] == "plant-a" and state["last_score"] == 0
    for _ in range(2):
        hour(1.5)
    changes = service.advance_drift()["changes"]
    assert [(c["from"], c["to"]) for c in changes] == [
        ("stable", "warning"),
        ("warning", "drifting"),
    ]
    (state,) = service.drift_states(site="plant-a")
    assert state["state"] == "drifting" and state["windows"] == 3 and state["drift_windows"] == 2
    evs = _drift_events(service)
    assert [e["payload"]["to"] for e in evs] == ["warning", "drifting"]  # type: ignore[index]
    payload = evs[-1]["payload"]
    assert evs[-1]["subject"] == "iris/plant-a"
    assert set(payload) == {"model", "site", "version", "from", "to", "score", "statistic", "at"}  # type: ignore[arg-type]
    assert service.advance_drift() == {"steps": 0, "changes": []}
    assert len(_drift_events(service)) == 2
    text = service.metrics_text().decode()
    assert 'modelfleet_drift_state{model="iris",site="plant-a"} 2.0' in text
    assert 'modelfleet_drift_score{model="iris",site="plant-a"}' in text
    assert "cam-" not in text.split("modelfleet_drift_score")[1]  # no device labels
    assert service.drift_states(model="other") == []


def test_the_upkeep_round_advances_the_states(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    send(service, "cam-2", 1, clock.now(), counts(package, rows(500, 3), outputs))
    clock.advance(2 * 3600 + 601)
    service.refresh_expiring()
    (state,) = service.drift_states()
    assert state["site"] == "plant-b" and state["windows"] == 1 and state["version"] == "1"


def test_the_drift_gauges_pass_promtool(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    from tests.prom import promtool_check_metrics

    package = register_profiled(service, onnx_bytes, tmp_path)
    send(service, "cam-0", 1, clock.now(), counts(package, rows(500, 3), outputs))
    send(service, "cam-2", 1, clock.now(), counts(package, rows(500, 4), outputs))
    clock.advance(2 * 3600)
    service.advance_drift()
    text = service.metrics_text()
    assert text.count(b'modelfleet_drift_state{model="iris"') == 2
    promtool_check_metrics(text)


def test_retention_deletes_drift_rollups_with_the_telemetry_rollups(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    send(service, "cam-0", 1, clock.now(), counts(package, rows(300, seed=1), outputs))
    assert len(_rollups(service)) == 1
    keep = service.context.config.telemetry_rollup_days
    clock.advance((keep - 1) * 86400)
    assert service.apply_retention()["drift_rollups_deleted"] == 0
    clock.advance(2 * 86400)
    assert service.apply_retention()["drift_rollups_deleted"] == 1
    assert _rollups(service) == []


def test_a_report_carries_the_override_layer_of_its_version_and_site(
    service: HubService, clock: ManualClock, fleet: list[str], onnx_bytes: bytes,
    outputs: Outputs, tmp_path: Path,
) -> None:  # fmt: skip
    package = register_profiled(service, onnx_bytes, tmp_path)
    now = clock.now()
    judged = [("cam-0", 3, 7), ("cam-1", 1, 9), ("cam-2", 5, 0)]  # cam-2 is at plant-b
    for device, overridden, confirmed in judged:
        record = window(1, device, now, profile=counts(package, rows(300, seed=1), outputs),
                        overrides={"overridden": overridden, "confirmed": confirmed})  # fmt: skip
        service.ingest_telemetry(device, orjson.dumps(batch(device, [record], now)))
    clock.advance(60)
    layer = service.drift_report("iris", site="plant-a")["overrides"]
    assert layer == {"overridden": 4, "confirmed": 16, "judged": 20, "rate": 0.2}
    assert service.drift_report("iris")["overrides"]["judged"] == 25
    assert service.drift_report("iris", since=now + HOUR, until=now + 2 * HOUR)["overrides"] == {
        "overridden": 0, "confirmed": 0, "judged": 0, "rate": None}  # fmt: skip
