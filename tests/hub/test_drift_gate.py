"""End to end (issue 9): a rollout whose devices see shifted inputs is held by its
drift_score gate — rolled back, or paused per the failure policy — while the same plan
with stable inputs passes that gate. Real telemetry ingest of windows carrying drift counts
made with ProfileCounter on the candidate's real outputs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hub.service import HubService
from modelfleet.packaging.reference import PackageProfile
from tests.hub._drift import Outputs, counts, register_profiled, rows
from tests.hub._rollouts import ADMIN, OPERATOR, Feed, assigned, enrol_fleet, plan
from tests.hub._telemetry import batch, window

DRIFT_GATE = {"metric": "drift_score", "max": 0.2, "min_samples": 500, "consecutive": 2}


class DriftFeed(Feed):
    """Windows as agents send them, the candidate's carrying its drift counts."""

    def __init__(
        self, service: HubService, clock: ManualClock, package: PackageProfile,
        outputs: Outputs, shift: float,
    ) -> None:  # fmt: skip
        super().__init__(service, clock)
        self.package, self.outputs, self.shift = package, outputs, shift

    def window(
        self, device: str, version: int, rollout_id: str | None, *, ok: int = 50,
        errors: int = 0, role: str = "production",
    ) -> None:  # fmt: skip
        self.seq[device] += 1
        extra: dict[str, Any] = {}
        if version == 2:
            x = rows(400, seed=hash((device, self.seq[device])) % 2**32, shift=self.shift)
            extra["profile"] = counts(self.package, x, self.outputs)
        closed = self.clock.now() - timedelta(seconds=1)
        record = window(self.seq[device], device, closed, version=str(version),
                        rollout_id=rollout_id, ok=ok, server_error=errors, role=role,
                        **extra)  # fmt: skip
        self.service.ingest_telemetry(device, orjson.dumps(batch(device, [record], closed)))


@pytest.fixture
def fleet(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes, tmp_path: Path
) -> Iterator[tuple[HubService, list[str], PackageProfile, Outputs]]:
    ids = enrol_fleet(service, 20)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    package = register_profiled(service, onnx_bytes_v2, tmp_path)
    yield service, ids, package, Outputs(onnx_bytes_v2)


def _drift_plan(**over: Any) -> dict[str, Any]:
    doc = plan(**over)
    doc["gates"] = [*doc["gates"], DRIFT_GATE]
    return doc


def _run(
    fleet: tuple[HubService, list[str], PackageProfile, Outputs], clock: ManualClock,
    shift: float, rounds: int, **over: Any,
) -> dict[str, Any]:  # fmt: skip
    service, ids, package, outputs = fleet
    ro = service.create_rollout(_drift_plan(**over), actor=OPERATOR)
    service.tick_rollouts()
    feed = DriftFeed(service, clock, package, outputs, shift)
    for _ in range(rounds):
        clock.advance(300)
        feed.round(ids)
        service.tick_rollouts()
    view: dict[str, Any] = service.get_rollout(ro["id"])
    return view


def _gate(view: dict[str, Any]) -> dict[str, Any]:
    gates = {g["metric"]: g for g in view["gates"]}
    gate: dict[str, Any] = gates["drift_score"]
    return gate


def test_stable_inputs_pass_the_drift_gate_and_the_rollout_goes_on(
    fleet: tuple[HubService, list[str], PackageProfile, Outputs], clock: ManualClock
) -> None:
    view = _run(fleet, clock, shift=0.0, rounds=3)
    assert view["state"] == "running" and view["stage_index"] >= 1, view["reason"]
    service = fleet[0]
    (first, *_) = service.rollout_evaluations(view["id"])[::-1]
    drift = {r["metric"]: r for r in first["evidence"]["evaluation"]["results"]}["drift_score"]
    assert drift["verdict"] == "pass" and drift["value"] == 0.0 and drift["samples"] >= 500


def test_shifted_inputs_fail_the_drift_gate_and_the_rollout_rolls_back(
    fleet: tuple[HubService, list[str], PackageProfile, Outputs], clock: ManualClock
) -> None:
    view = _run(fleet, clock, shift=1.5, rounds=3)
    assert view["state"] == "rolled_back", view["reason"]
    assert "drift_score" in view["reason"]
    results = fleet[0].rollout_evaluations(view["id"])[0]["evidence"]["evaluation"]["results"]
    drift = {r["metric"]: r for r in results}["drift_score"]
    assert drift["verdict"] == "fail" and drift["value"] > 0.2
    # the other gates passed: it is the drift gate that held the rollout
    others = [r for r in results if r["metric"] != "drift_score"]
    assert all(r["verdict"] == "pass" for r in others), others
    assert assigned(fleet[0]) == set()


def test_with_the_pause_policy_shifted_inputs_pause_the_rollout_on_the_canaries(
    fleet: tuple[HubService, list[str], PackageProfile, Outputs], clock: ManualClock
) -> None:
    service = fleet[0]
    view = _run(fleet, clock, shift=1.5, rounds=3, on_failure="pause")
    assert view["state"] == "paused" and view["stage_index"] == 0, view["reason"]
    assert _gate(view)["verdict"] == "fail"
    assert len(assigned(service)) == 2  # the canaries keep the version; nothing went further


def test_a_drift_gate_for_a_version_without_a_reference_profile_is_refused(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    enrol_fleet(service, 4)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    with pytest.raises(InvalidInputError, match="drift_score needs a reference profile"):
        service.create_rollout(_drift_plan(), actor=OPERATOR)
