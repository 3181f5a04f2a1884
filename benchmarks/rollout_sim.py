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
5. **rollout** (when the hub has ``/api/v1/rollouts``): a three-stage rollout of v3.

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
    from modelfleet.hub.service import init_home

    with tempfile.TemporaryDirectory(prefix="mf-simbench-") as tmp:
        home = Path(tmp) / "hub"
        token = init_home(home, database_url=database_url or None)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
        args = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port))
        proc = start("hub", args, Path(tmp), env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/api/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
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
            if has_rollouts:
                phases.append(phase.run("rollout v3", lambda: _rollout(client, sim, poll_s)))
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


def _rollout(client: Any, sim: FleetSimulator, poll_s: float) -> None:  # pragma: no cover
    """A three-stage rollout of v3 (1 %, 10 %, 100 %), wired once the hub has rollouts."""
    raise NotImplementedError("the rollouts API (issue 8, H3) is not on this branch yet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout_sim", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--poll-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default="", help="'' = SQLite in the hub home")
    args = parser.parse_args(argv)
    result = run(args.devices, args.poll_s, args.rounds, args.database_url)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"rollout-sim-{result['backend']}-{stamp}.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
