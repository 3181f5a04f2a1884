"""Guard rollback latency and swap under load, on the real stack (hub + agent processes).

* **Rollback latency**: a deliberately slow version is deployed as production with a tight
  SLO; client threads keep sending requests. The agent's guard records the wall-clock time
  of its breach decision; the latency is the time from that decision to the first response
  answered by the previous version. Repeated ``--cycles`` times.
* **Swap under load**: while client threads send requests, new versions are deployed one
  after another (each is downloaded, verified, smoke-tested and switched in). Counts failed
  requests and compares p99 during swaps with steady state.

Run: ``.venv/bin/python -m benchmarks.agent_lifecycle [--cycles 5] [--swaps 6]``.
Everything listens on 127.0.0.1; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from tests.helpers import logistic_onnx, slow_logistic_onnx

from modelfleet.demo import Process, free_port, modelfleet_cmd, start, wait_until

BODY = orjson.dumps(
    {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.1] * 10}]}
)


def fast_model(seed: int) -> bytes:
    """A logistic regression; each seed gives different weights (a distinct version)."""
    return logistic_onnx(seed=0, c=0.5 + seed)[0]


def slow_model(seed: int) -> bytes:
    """The same answers as a fast model, ~10 ms slower per call (tests.helpers)."""
    return slow_logistic_onnx(seed=seed)


@dataclass
class Load:
    """Client threads hammering one agent; keeps (sent, received, version, ok) per request."""

    url: str
    threads: int = 4
    records: list[tuple[float, float, str, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=10)

    def _run(self) -> None:
        out: list[tuple[float, float, str, bool]] = []
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    r = client.post(self.url, content=BODY)
                    ok = r.status_code == 200
                    version = r.headers.get("modelfleet-version", "?")
                except httpx.HTTPError:
                    ok, version = False, "?"
                out.append((sent, time.time(), version, ok))
        self.records.extend(out)


def p99_ms(latencies: list[float]) -> float | None:
    if not latencies:
        return None
    return float(np.percentile(np.array(latencies) * 1000, 99))


class Stack:
    """A hub and one agent, as processes."""

    def __init__(self, root: Path) -> None:
        from modelfleet.client import HubClient
        from modelfleet.hub.service import init_home

        self.root = root
        self.procs: list[Process] = []
        home = root / "hub"
        token = init_home(home)
        port = free_port()
        self.procs.append(
            start(
                "hub",
                modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port)),
                root,
            )
        )
        self.hub = HubClient(f"http://127.0.0.1:{port}", token)
        if not wait_until(lambda: bool(self.hub.health()), 60):
            raise RuntimeError("hub did not start")
        device = self.hub.add_device("bench-1", site="bench")
        self.agent_port = free_port()
        self.state = root / "agent"
        self.procs.append(
            start(
                "agent",
                modelfleet_cmd(
                    "agent",
                    "run",
                    "--hub",
                    f"http://127.0.0.1:{port}",
                    "--device-id",
                    "bench-1",
                    "--token",
                    device["token"],
                    "--state-dir",
                    str(self.state),
                    "--port",
                    str(self.agent_port),
                    "--poll-interval",
                    "0.2",
                    "--trust-root",
                    str(home / "trust-root.json"),
                    "--log-level",
                    "warning",
                ),
                root,
            )
        )
        self.url = f"http://127.0.0.1:{self.agent_port}/v2/models/m/infer"
        self.version = 0

    def status(self) -> dict[str, Any]:
        control = orjson.loads((self.state / "control.json").read_bytes())
        r = httpx.get(
            f"http://127.0.0.1:{control['port']}/agent/status",
            headers={"Authorization": f"Bearer {control['token']}"},
            timeout=5,
        )
        data: dict[str, Any] = r.json()
        return data

    def active(self) -> int | None:
        slots = self.status().get("models", {}).get("m") or {}
        return slots["active"]["version"] if slots.get("active") else None

    def publish(self, model: bytes, slo: dict[str, float] | None = None) -> int:
        v = self.hub.register_version("m", model)["version"]
        self.hub.deploy("m", v, devices=["bench-1"], mode="full", slo=slo or {})
        self.version = int(v)
        return int(v)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def rollback_latency(stack: Stack, cycles: int) -> dict[str, Any]:
    slo = {"p99_ms": 5.0, "min_samples": 20.0, "window_s": 5.0}
    results: list[float] = []
    detect: list[float] = []
    for cycle in range(cycles):
        good = stack.publish(fast_model(cycle))
        if not wait_until(lambda g=good: stack.active() == g, 60):
            raise RuntimeError("good version did not activate")
        load = Load(stack.url)
        load.start()
        time.sleep(0.5)
        bad = stack.publish(slow_model(cycle), slo)
        done = wait_until(
            lambda b=bad: any(
                e["version"] == str(b) for e in stack.status().get("guard_events", [])
            ),
            60,
        )
        time.sleep(0.5)
        load.stop()
        if not done:
            raise RuntimeError(f"guard did not roll back v{bad}")
        event = next(e for e in stack.status()["guard_events"] if e["version"] == str(bad))
        breach = float(event["at_unix"])
        after = sorted(r[1] for r in load.records if r[2] == str(good) and r[1] >= breach)
        first_bad = min((r[1] for r in load.records if r[2] == str(bad)), default=None)
        if after:
            results.append((after[0] - breach) * 1000)
        if first_bad is not None:
            detect.append((breach - first_bad) * 1000)
        failures = sum(1 for r in load.records if not r[3])
        print(
            f"  cycle {cycle + 1}: breach→first answer by v{good}: {results[-1]:.1f} ms; "
            f"slow v{bad} served for {detect[-1]:.0f} ms before the breach; failures {failures}",
            flush=True,
        )
    return {
        "cycles": cycles,
        "breach_to_previous_ms": results,
        "median_ms": statistics.median(results),
        "max_ms": max(results),
        "detection_ms": detect,
        "slo": slo,
    }


def swap_under_load(stack: Stack, swaps: int) -> dict[str, Any]:
    first = stack.publish(fast_model(100))
    wait_until(lambda: stack.active() == first, 60)
    load = Load(stack.url, threads=8)
    load.start()
    time.sleep(3.0)
    windows: list[tuple[float, float]] = []
    for i in range(swaps):
        t0 = time.time()
        v = stack.publish(fast_model(101 + i))
        if not wait_until(lambda v=v: stack.active() == v, 60):
            raise RuntimeError(f"v{v} did not activate")
        windows.append((t0, time.time() + 0.2))
        time.sleep(1.5)
    time.sleep(1.0)
    load.stop()

    def in_swap(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    swap_lat = [r[1] - r[0] for r in load.records if in_swap(r[0]) and r[3]]
    steady_lat = [r[1] - r[0] for r in load.records if not in_swap(r[0]) and r[3]]
    failed = sum(1 for r in load.records if not r[3])
    return {
        "swaps": swaps,
        "requests": len(load.records),
        "failed": failed,
        "p99_ms_during_swaps": p99_ms(swap_lat),
        "p99_ms_steady": p99_ms(steady_lat),
        "p50_ms_during_swaps": float(np.median(swap_lat) * 1000) if swap_lat else None,
        "p50_ms_steady": float(np.median(steady_lat) * 1000) if steady_lat else None,
        "swap_window_s": [round(b - a, 3) for a, b in windows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench-results/agent-lifecycle.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            print("guard rollback latency:", flush=True)
            rollback = rollback_latency(stack, args.cycles)
            print("swap under load:", flush=True)
            swap = swap_under_load(stack, args.swaps)
        finally:
            stack.close()
    result = {"rollback": rollback, "swap": swap}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
