"""A simulated fleet against a real ``hub serve`` (issue 8): what one hub process takes from
thousands of devices, and what each device downloads.

``python -m benchmarks.rollout_sim [--devices N] [--poll-s S] [--rounds R] [--database-url URL]``
(``python -m benchmarks.run rollout-sim``).

Phases, on virtual time (the simulator's clock is a ``ManualClock`` it advances itself, so
the fleet polls as fast as the hub answers; the figures are the hub's rate, not a poll
interval's):

1. **enrol** N devices (``POST /api/v1/devices``);
2. **deploy** v1 to every device and run until all serve it;
3. **steady**: R poll rounds with nothing changing (check-in + director refresh + telemetry);
4. **change**: deploy v2 to every device, run until all serve it (what a stage change costs);
5. **rollout** (when the hub has ``/api/v1/rollouts``), on another hub: hub and fleet on one
   ``MODELFLEET_SIM_CLOCK`` (paced, at a rate that keeps the hub near 150 check-ins a
   second), v1 deployed, then a three-stage rollout of v2 (1 %, 10 %, 100 %, ``--soak``
   each) run to its end.

For each phase: wall seconds, check-ins per second, hub CPU seconds (from
``/proc/PID/stat``), simulator CPU seconds, bytes received and sent per device. Results go
to ``bench-results/rollout-sim-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from modelfleet.clock import ManualClock
from modelfleet.demo import free_port, modelfleet_cmd, start
from modelfleet.sim import FleetSimulator, SimConfig

RESULTS = Path("bench-results")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _model(seed: int) -> tuple[bytes, Any]:
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from modelfleet.packaging.sklearn import sklearn_to_onnx

    x, y = make_classification(n_samples=300, n_features=10, n_informative=6, n_classes=3,
                               random_state=seed)  # fmt: skip
    x = x.astype(np.float32)
    return sklearn_to_onnx(LogisticRegression(max_iter=300).fit(x, y), x), x[:5]


class _Phase:
    """Measures one phase: wall, hub CPU, simulator counters before/after."""

    def __init__(self, sim: FleetSimulator, hub_pid: int) -> None:
        self.sim, self.pid = sim, hub_pid

    def run(self, name: str, work: Callable[[], None]) -> dict[str, Any]:
        before = self.sim.summary()
        cpu0, t0 = _cpu_s(self.pid), time.perf_counter()
        work()
        wall = time.perf_counter() - t0
        after = self.sim.summary()
        n = after["devices"]
        checkins = after["checkins"] - before["checkins"]
        got = after["bytes_received"] - before["bytes_received"]
        sent = after["bytes_sent"] - before["bytes_sent"]
        requests = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
        out = {
            "phase": name,
            "wall_s": round(wall, 2),
            "hub_cpu_s": round(_cpu_s(self.pid) - cpu0, 2),
            "sim_cpu_s": round(after["sim_cpu_seconds"] - before["sim_cpu_seconds"], 2),
            "checkins": checkins,
            "checkins_per_s": round(checkins / wall, 1) if wall else None,
            "requests": {k: v for k, v in requests.items() if v},
            "bytes_received_per_device": round(got / n),
            "bytes_sent_per_device": round(sent / n),
            "bytes_received_per_checkin": round(got / checkins) if checkins else None,
            "errors": after["errors"] - before["errors"],
            "serving": after["serving"],
        }
        print(json.dumps(out), flush=True)
        return out


def run(devices: int, poll_s: float, rounds: int, database_url: str) -> dict[str, Any]:
    """Start a hub, run the phases; the measured figures."""
    from modelfleet.client import HubClient

    with tempfile.TemporaryDirectory(prefix="mf-simbench-") as tmp:
        proc, url, token = _start_hub(Path(tmp), database_url)
        try:
            client = HubClient(url, token, timeout=600)
            for seed in (0, 1, 2):
                model, sample = _model(seed)
                client.register_version("m", model, sample)
            auth = {"Authorization": f"Bearer {token}"}
            probe = httpx.get(f"{url}/api/v1/rollouts", headers=auth)
            has_rollouts = probe.status_code != 404
            config = SimConfig(hub_url=url, token=token, devices=devices, poll_s=poll_s,
                               window_s=poll_s, concurrency=16, step_s=poll_s / 12)  # fmt: skip
            sim = FleetSimulator(config, ManualClock(datetime.now(UTC)))
            phase = _Phase(sim, proc.popen.pid)
            phases = [phase.run("enrol", sim.enrol)]
            ids = [d.device_id for d in sim.devices]

            def converge(version: int) -> Callable[[], None]:
                def work() -> None:
                    client.deploy("m", version, ids)
                    want = {"m": {f"v{version}": devices}}
                    sim.run_for(20 * poll_s, until=lambda: sim.serving() == want)

                return work

            phases.append(phase.run("deploy v1", converge(1)))
            phases.append(phase.run(f"steady ({rounds} rounds)",
                                    lambda: sim.run_for(rounds * poll_s)))  # fmt: skip
            phases.append(phase.run("change to v2", converge(2)))
            summary = sim.summary()
            sim.close()
        finally:
            proc.stop()
    return {
        "backend": "postgresql" if database_url.startswith("postgres") else "sqlite",
        "devices": devices,
        "poll_s": poll_s,
        "director_layout": summary["director_layout"],
        "rollouts": has_rollouts,
        "phases": phases,
        "verify_cache": summary["verify_cache"],
    }


def _start_hub(tmp: Path, database_url: str, clock: str = "") -> tuple[Any, str, str]:
    from modelfleet.hub.service import init_home

    home = tmp / "hub"
    token = init_home(home, database_url=database_url or None)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    if clock:
        env["MODELFLEET_SIM_CLOCK"] = clock
    args = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port),
                          "--controller-interval-s", "30")  # fmt: skip
    proc = start("hub", args, tmp, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url, token


def run_rollout(devices: int, poll_s: float, soak: str, database_url: str) -> dict[str, Any]:
    """A three-stage rollout (1 %, 10 %, 100 %) of a good version over ``devices``, hub and
    fleet on one scaled clock, fast enough that the hub takes ~150 check-ins a second."""
    from modelfleet.client import HubClient
    from modelfleet.clock import ScaledClock

    rate = max(1.0, 150.0 * poll_s / devices)
    origin = time.time()
    with tempfile.TemporaryDirectory(prefix="mf-simbench-ro-") as tmp:
        proc, url, token = _start_hub(Path(tmp), database_url, f"{origin}:{rate}")
        try:
            client = HubClient(url, token, timeout=600)
            for seed in (0, 1):
                model, sample = _model(seed)
                client.register_version("m", model, sample)
            config = SimConfig(hub_url=url, token=token, devices=devices, poll_s=poll_s,
                               window_s=poll_s, concurrency=16, site="fleet")  # fmt: skip
            sim = FleetSimulator(config, ScaledClock(origin, rate))
            phase = _Phase(sim, proc.popen.pid)
            phases = [phase.run("enrol", sim.enrol)]
            ids = [d.device_id for d in sim.devices]

            def deploy() -> None:
                client.deploy("m", 1, ids)
                want = {"m": {"v1": devices}}
                sim.run_for(20 * poll_s, until=lambda: sim.serving() == want)
                sim.run_for(2 * poll_s)  # control windows

            phases.append(phase.run("deploy v1 (paced)", deploy))
            plan = {
                "model": "m",
                "version": 2,
                "target": {"sites": ["fleet"]},
                "stages": [
                    {"name": "canary", "percent": 1, "soak": soak},
                    {"name": "early", "percent": 10, "soak": soak},
                    {"name": "full", "percent": 100, "soak": 0},
                ],
                "gates": [
                    {"metric": "error_rate", "max_delta": 0.02, "min_devices": 1,
                     "min_samples": 200, "consecutive": 2},
                    {"metric": "latency_p99", "max_ratio": 1.5, "min_samples": 200},
                    {"metric": "guard_rollbacks", "max": 0},
                ],
            }  # fmt: skip
            auth = {"Authorization": f"Bearer {token}"}
            state: dict[str, Any] = {}

            def rollout() -> None:
                r = httpx.post(f"{url}/api/v1/rollouts", json=plan, headers=auth, timeout=60)
                r.raise_for_status()
                rid = r.json()["id"]

                def done() -> bool:
                    view = httpx.get(f"{url}/api/v1/rollouts/{rid}", headers=auth, timeout=60)
                    state.update(view.json())
                    return state.get("state") in ("completed", "rolled_back", "paused")

                sim.run_for(48 * 3600, until=done)
                want = {"m": {"v2": devices}}
                sim.run_for(20 * poll_s, until=lambda: sim.serving() == want)

            result = phase.run("three-stage rollout v2", rollout)
            result["rollout_state"] = state.get("state")
            phases.append(result)
            sim.close()
        finally:
            proc.stop()
    return {"devices": devices, "poll_s": poll_s, "rate": round(rate, 2), "soak": soak,
            "phases": phases}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout_sim", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--poll-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default="", help="'' = SQLite in the hub home")
    parser.add_argument("--rollout-devices", type=int, default=0,
                        help="devices of the rollout run (default: --devices)")  # fmt: skip
    parser.add_argument("--rollout-poll-s", type=float, default=300.0)
    parser.add_argument("--soak", default="10m", help="soak of the rollout's first two stages")
    parser.add_argument("--no-rollout", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    if not args.no_throughput:
        result = run(args.devices, args.poll_s, args.rounds, args.database_url)
    if not args.no_rollout and result.get("rollouts", True):
        n = args.rollout_devices or args.devices
        result["rollout"] = run_rollout(n, args.rollout_poll_s, args.soak, args.database_url)
    result.setdefault("backend", "postgresql" if args.database_url else "sqlite")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"rollout-sim-{result['backend']}-{stamp}.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
