"""Rollouts on a simulated fleet (issue 8, "Shown by"): hub and fleet on one scaled clock,
so the controller's soaks and the devices' windows agree.

A good version goes through three stages to every device; a version that errors is stopped
in its first stage and rolled back on every device that took it, the others never getting
it; with a third of the canary offline the stage holds for data instead of passing blind.
The audit log shows each step.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelfleet.clock import ScaledClock
from modelfleet.sim import FleetSimulator, parse_faults
from modelfleet.sim.faults import DeviceEffects
from tests.sim.conftest import Hub, make_sim, start_hub

pytestmark = pytest.mark.e2e

RATE = 60.0  # one simulated minute a real second
N = 60


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, ScaledClock]]:
    origin = time.time()
    hub = start_hub(tmp_path_factory.mktemp("rollhub"), "--controller-interval-s", "30",
                    clock=f"{origin}:{RATE}")  # fmt: skip
    yield hub, ScaledClock(origin, RATE)
    hub.client.close()
    hub.proc.stop()


def _plan(version: int, site: str) -> dict[str, Any]:
    return {
        "model": "m",
        "version": version,
        "target": {"sites": [site]},
        "stages": [
            {"name": "canary", "percent": 10, "soak": "10m"},
            {"name": "half", "percent": 50, "soak": "10m"},
            {"name": "full", "percent": 100, "soak": 0},
        ],
        "gates": [
            {"metric": "error_rate", "max_delta": 0.05, "min_devices": 3, "min_samples": 200,
             "consecutive": 2},
            {"metric": "guard_rollbacks", "max": 0},
        ],
        "on_failure": "rollback",
    }  # fmt: skip


def _api(hub: Hub, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, f"{hub.url}/api/v1{path}", timeout=30,
                      headers={"Authorization": f"Bearer {hub.token}"}, **kw)  # fmt: skip
    assert r.status_code < 300, r.text
    return r.json()


def _run_rollout(hub: Hub, sim: FleetSimulator, plan: dict[str, Any], limit_s: float) -> Any:
    ro = _api(hub, "POST", "/rollouts", json=plan)

    def done() -> bool:
        state = _api(hub, "GET", f"/rollouts/{ro['id']}")["state"]
        return state in ("completed", "rolled_back", "paused", "aborted")

    sim.run_for(limit_s, until=done)
    return _api(hub, "GET", f"/rollouts/{ro['id']}")


def _fleet(scaled: tuple[Hub, ScaledClock], site: str, faults: list[str]) -> FleetSimulator:
    hub, clock = scaled
    sim = make_sim(hub, site, N, clock=clock, site=site, poll_s=60, window_s=60,
                   faults=tuple(parse_faults(faults)))  # fmt: skip
    hub.client.deploy("m", 1, [d.device_id for d in sim.devices])
    sim.run_for(600, until=lambda: sim.serving() == {"m": {"v1": N}})
    sim.run_for(180)  # control windows of v1
    return sim


def test_a_good_version_reaches_every_device_and_a_bad_one_stops_at_the_canary(
    scaled: tuple[Hub, ScaledClock],
) -> None:
    hub, _ = scaled
    with _fleet(scaled, "ro", ["version=3:error_rate=0.4"]) as sim:
        good = _run_rollout(hub, sim, _plan(2, "ro"), 3 * 3600)
        assert good["state"] == "completed", good
        sim.run_for(600, until=lambda: sim.serving() == {"m": {"v2": N}})
        assert sim.serving() == {"m": {"v2": N}}
        bad = _run_rollout(hub, sim, _plan(3, "ro"), 3 * 3600)
        assert bad["state"] == "rolled_back", bad
        assert bad["stage"]["index"] == 0
        sim.run_for(600, until=lambda: sim.serving() == {"m": {"v2": N}})
        assert sim.serving() == {"m": {"v2": N}}  # the canary went back, nobody else took v3
    took = [d for d in sim.devices if any(e["message"].startswith("m: active v2 -> v3")
                                          for e in d.events)]  # fmt: skip
    assert 0 < len(took) <= N // 5
    actions = [e["action"] for e in hub.client.audit(limit=1000)]
    for step in ("rollout-create", "rollout-stage", "rollout-complete", "rollout-rollback"):
        assert step in actions


def test_with_a_third_of_the_canary_offline_the_stage_holds_for_data(
    scaled: tuple[Hub, ScaledClock],
) -> None:
    hub, clock = scaled
    with make_sim(hub, "dark", N, clock=clock, site="dark", poll_s=60, window_s=60) as sim:
        hub.client.deploy("m", 1, [d.device_id for d in sim.devices])
        sim.run_for(600, until=lambda: sim.serving() == {"m": {"v1": N}})
        sim.run_for(180)
        plan = _plan(2, "dark")
        plan["gates"][0]["min_devices"] = N // 10  # every canary device must report
        ro = _api(hub, "POST", "/rollouts", json=plan)
        # a third of the canary (the cohort is stored when the rollout is made) goes dark
        with sqlite3.connect(hub.home / "hub.db") as db:
            canary = [r[0] for r in db.execute(
                "SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND stage_of = 0",
                (ro["id"],))]  # fmt: skip
        assert len(canary) == N // 10
        dark = set(canary[: len(canary) // 3])
        for d in sim.devices:
            if d.device_id in dark:
                d.effects = DeviceEffects(offline=((sim.elapsed_s, sim.elapsed_s + 6 * 3600),))
        sim.run_for(1800)  # three soaks: it never passes blind
        view = _api(hub, "GET", f"/rollouts/{ro['id']}")
    assert view["state"] == "running" and view["stage"]["index"] == 0, view
    assert view["devices"]["running"] == len(canary) - len(dark)
    assert any(g["verdict"] == "hold" for g in view["gates"]), view["gates"]
