"""The local guard end to end inside one agent: a slow version is rolled back by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.agent.app import build_agent_app
from modelfleet.agent.local_guard import GuardCollector, LocalGuard
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx, slow_logistic_onnx

DEVICE = "dev-1"
SLO = {"p99_ms": 5.0, "min_samples": 10}


def body(x: np.ndarray) -> dict:  # type: ignore[type-arg]
    return {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip


async def send(app: object, n: int, clock: ManualClock) -> list[str]:
    versions = []
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        x = np.zeros((1, 10), np.float32)
        for i in range(n):
            clock.advance(0.05)
            r = await client.post(
                "/v2/models/m/infer", json=body(x), headers={"modelfleet-routing-key": f"k{i}"}
            )
            assert r.status_code == 200, r.text
            versions.append(r.json()["model_version"])
    return versions


@pytest.fixture
def setup(tmp_path: Path) -> tuple[MemorySource, Updater, ModelHost, LocalGuard, ManualClock]:
    source = MemorySource()
    host = ModelHost()
    clock = ManualClock()
    updater = Updater(DEVICE, tmp_path, source, host, clock)
    guard = LocalGuard(updater, host, clock.monotonic)
    return source, updater, host, guard, clock


def test_slow_split_candidate_is_rolled_back_by_the_guard(setup) -> None:  # type: ignore[no-untyped-def]
    source, updater, host, guard, clock = setup
    v1 = source.publish("m", 1, logistic_onnx()[0])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    slow = source.publish("m", 2, slow_logistic_onnx())
    serial = source.assign(DEVICE, v1, slow, Mode.SPLIT, 0.5)
    source.desired[DEVICE] = source.desired[DEVICE].replace(
        b'"slo":{}', b'"slo":{"min_samples":10.0,"p99_ms":5.0}'
    )
    updater.run_cycle()
    assert updater.state.models["m"].candidate is not None
    assert guard.state()["m"]["watched"] == "2"

    app = build_agent_app(host, observer=guard)
    app.state.metrics.registry.register(GuardCollector(guard))
    versions = asyncio.run(send(app, 80, clock))
    assert "2" in versions[:40]  # the candidate did answer before the breach
    assert versions[-20:] == ["1"] * 20  # and then never again
    route = host.route("m")
    assert route is not None and route.candidate is None
    assert guard.last_persist is not None
    guard.last_persist.join(timeout=10)
    assert updater.state.models["m"].candidate is None
    registry = app.state.metrics.registry
    assert (
        registry.get_sample_value(
            "modelfleet_agent_guard_rollbacks_total", {"model": "m", "version": "2"}
        )
        == 1
    )
    events = [e["message"] for e in updater.state.events if e["kind"] == "rollback"]
    assert events and "local guard: p99 latency" in events[-1]
    # the director still says split at the same serial: the guard's decision sticks
    updater.state.applied_serial = serial - 1
    updater.run_cycle()
    assert host.route("m").candidate is None  # type: ignore[union-attr]


def test_slow_new_production_falls_back_to_previous(setup) -> None:  # type: ignore[no-untyped-def]
    source, updater, host, guard, clock = setup
    v1 = source.publish("m", 1, logistic_onnx()[0])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, slow_logistic_onnx()))
    source.desired[DEVICE] = source.desired[DEVICE].replace(
        b'"slo":{}', b'"slo":{"min_samples":10.0,"p99_ms":5.0}'
    )
    updater.run_cycle()
    assert guard.state()["m"] | {"role": "production", "watched": "2"} == guard.state()["m"]
    app = build_agent_app(host, observer=guard)
    versions = asyncio.run(send(app, 30, clock))
    assert versions[0] == "2" and versions[-1] == "1"
    guard.last_persist.join(timeout=10)  # type: ignore[union-attr]
    slots = updater.state.models["m"]
    # contract 1: after a production rollback there is no previous (no flip-back)
    assert slots.active is not None and slots.active.version == 1 and slots.previous is None
    # the guard now watches nothing: falling back to the slow version would flap
    assert "m" not in guard.state()


def test_healthy_candidate_is_left_alone(setup) -> None:  # type: ignore[no-untyped-def]
    source, updater, host, guard, clock = setup
    v1 = source.publish("m", 1, logistic_onnx()[0])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    source.assign(DEVICE, v1, source.publish("m", 2, logistic_onnx(seed=1)[0]), Mode.SPLIT, 0.5)
    updater.run_cycle()
    app = build_agent_app(host, observer=guard)
    versions = asyncio.run(send(app, 60, clock))
    assert set(versions[-20:]) == {"1", "2"}
    assert guard.last_persist is None
