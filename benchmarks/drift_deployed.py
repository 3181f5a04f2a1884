"""Drift counts in the deployed agent (issue 9): p99 with profiling on vs off over HTTP.

``python -m benchmarks.drift_deployed [--seconds S] [--rounds N] [--concurrency C ...]
[--telemetry-window-s W] [--json]``

:mod:`benchmarks.drift_device` measures the agent app in one process; this measures the
agent as it is deployed. One ``modelfleet hub serve``; the serving benchmark's model
(:mod:`benchmarks.serving.model`) registered once with a reference profile (its 5,000
training rows, profiled by ``HubClient.register_version(reference=...)``: the inputs and
the model's outputs on them) and deployed to three enrolled devices, each at its own
site, each with its own ``modelfleet agent run`` on the CLI's defaults
(:func:`benchmarks.serving.daemon_agent.start_agent`):

* ``on``: the default ``--drift`` (bins; the agent's default, no sketches);
* ``off``: ``--no-drift``;
* ``off_control``: ``--no-drift`` again, the run's noise floor.

Each round runs ``wrk -t1 -cC --latency`` for ``S`` seconds against each agent's OIP v2
JSON infer URL in turn, at each concurrency, the order of the three rotating per round.
Per round and configuration: requests/s, p50, p99 and the agent's CPU µs per request;
reported: medians (and ranges) of the per-round ratios ``on``/``off`` and
``off_control``/``off``.

At the end the benchmark waits for the telemetry window that holds the load's last
requests to close and reach the hub (windows close on multiples of ``W`` seconds of wall
time, the CLI's 60 by default) and checks, from the hub: ``GET /api/v1/drift?site=...``
(``rows``) and ``GET /api/v1/devices/{id}/windows`` (``requests.ok``, the ``profile``
field). ``on`` must have counted every row it answered, the ``off`` agents none; anything
else fails the run (:class:`CountingError`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import daemon_agent, processes, wrk
from benchmarks.serving.model import MODEL_NAME, make_model

__all__ = ["CONFIGS", "CountingError", "main", "run"]

REPO = Path(__file__).resolve().parents[1]

#: Configuration -> the ``agent run`` flag it adds (the rest are the CLI's defaults).
CONFIGS: dict[str, str] = {"on": "--drift", "off": "--no-drift", "off_control": "--no-drift"}

#: The CLI's ``--telemetry-window-s`` default.
DEFAULT_WINDOW_S = 60.0


class CountingError(RuntimeError):
    """The ``on`` agent did not count what it served, or an ``off`` agent counted."""


@dataclass(frozen=True)
class Options:
    """What one run measures.

    Attributes:
        seconds: wrk ``-d`` per configuration, concurrency and round.
        rounds: rounds.
        concurrency: wrk ``-c`` values, each measured in every round.
        telemetry_window_s: None: the CLI's default (60 s); else passed to every agent.
        warmup_s: wrk seconds per agent before the first round (c = 8).
    """

    seconds: int = 5
    rounds: int = 7
    concurrency: tuple[int, ...] = (1, 8)
    telemetry_window_s: float | None = None
    warmup_s: int = 2


def _reference_rows() -> np.ndarray:
    """The bench model's training rows (:func:`benchmarks.serving.model.make_model`)."""
    from sklearn.datasets import make_classification

    x, _ = make_classification(
        n_samples=5000,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        random_state=0,
    )
    return np.asarray(x, dtype=np.float32)


#: Per-run figure -> its name in the ratios.
_FIGURES = (
    ("p50_us", "p50"),
    ("p99_us", "p99"),
    ("rps", "rps"),
    ("cpu_us_per_request", "cpu_per_request"),
)


def _ratios(runs: dict[str, list[dict[str, float]]], name: str, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, label in _FIGURES:
        per_round = [o[k] / b[k] for o, b in zip(runs[name], runs[base], strict=True) if b[k]]
        out[label] = {
            "median": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
            "per_round": [round(r, 4) for r in per_round],
        }
    return out


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians and ranges per configuration; per-round ratios to ``off`` (their median and
    range) for ``on`` and ``off_control``; the median per-round difference ``on`` − ``off``
    in µs (p50, p99, CPU per request)."""
    out: dict[str, Any] = {"runs": runs}
    for name, rs in runs.items():
        out[name] = {
            k: {
                "median": statistics.median(r[k] for r in rs),
                "min": min(r[k] for r in rs),
                "max": max(r[k] for r in rs),
            }
            for k in ("rps", "p50_us", "p99_us", "cpu_us_per_request")
        }
    out["on_over_off"] = _ratios(runs, "on", "off")
    out["off_control_over_off"] = _ratios(runs, "off_control", "off")
    # what counting adds per request, in µs: medians of the per-round differences
    out["on_minus_off_us"] = {
        label: statistics.median(o[k] - b[k] for o, b in zip(runs["on"], runs["off"], strict=True))
        for k, label in _FIGURES
        if k != "rps"
    }
    return out


def _one(wrk_path: str, server: processes.Server, lua: Path, c: int, s: int) -> dict[str, float]:
    cpu_before = server.cpu_seconds()
    result, raw = wrk.run(wrk_path, server.url, lua, c, s)
    cpu = server.cpu_seconds() - cpu_before
    if result.non_2xx or result.socket_errors or not result.requests:
        raise RuntimeError(f"{server.key}: errors under load (see {server.log}):\n{raw}")
    return {
        "rps": result.rps,
        "p50_us": result.p50_ms * 1000,
        "p99_us": result.p99_ms * 1000,
        "cpu_us_per_request": cpu * 1e6 / result.requests,
        "requests": result.requests,
    }


def _parse(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def check_counting(
    client: Any, devices: dict[str, str], after: float, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Wait until every device's windows up to ``after`` (wall time) reached the hub; then,
    per configuration, the rows the hub's drift API holds for its site and what its
    windows say.

    Returns:
        ``{name: {"drift_rows", "served_rows", "windows", "profile_windows", "verdict"}}``.

    Raises:
        CountingError: a window did not arrive in time, ``on`` counted nothing or not every
            row it answered, or an ``off`` agent counted.
    """
    deadline = time.monotonic() + timeout_s
    windows: dict[str, list[dict[str, Any]]] = {}
    for name, device_id in devices.items():
        while True:
            got = [
                w
                for w in client.device_windows(device_id, limit=1000)
                if w.get("kind") == "window" and w.get("model") == MODEL_NAME
            ]
            if any(_parse(w["closed_at"]) >= after for w in got):
                windows[name] = got
                break
            if time.monotonic() > deadline:
                raise CountingError(
                    f"{name} ({device_id}): no telemetry window closed after the load "
                    f"reached the hub within {timeout_s:.0f} s"
                )
            time.sleep(0.5)
    out: dict[str, dict[str, Any]] = {}
    for name, got in windows.items():
        report = client.drift_report(MODEL_NAME, site=f"bench-{name}")
        out[name] = {
            "drift_rows": int(report.get("rows") or 0),
            "served_rows": sum(int(w.get("requests", {}).get("ok", 0)) for w in got),
            "windows": len(got),
            "profile_windows": sum(1 for w in got if w.get("profile")),
            "verdict": report.get("verdict"),
        }
    on = out["on"]
    if on["drift_rows"] <= 0 or on["profile_windows"] == 0:
        raise CountingError(f"the `on` agent counted nothing: {on}")
    if on["drift_rows"] != on["served_rows"]:
        raise CountingError(f"the `on` agent did not count every row it served: {on}")
    for name, got in out.items():
        if name != "on" and (got["drift_rows"] or got["profile_windows"]):
            raise CountingError(f"the `{name}` agent (--no-drift) counted rows: {got}")
    return out


def run(opts: Options, workdir: Path, log: Any = None) -> dict[str, Any]:
    """Start the hub and the three agents, measure, check the counting, stop everything.

    Returns:
        The report: ``{"options", "machine", "python", "wrk", "loadavg_before",
        "loadavg_after", "concurrency": {C: summarise(...)}, "counting", "seconds"}``.

    Raises:
        CountingError: see :func:`check_counting`.
        RuntimeError: a process did not start, or wrk failed or saw errors.
    """
    from modelfleet.client import HubClient

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    started = time.monotonic()
    wrk_path = wrk.ensure_wrk()
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}  # this checkout
    bench = make_model(workdir / "model")
    reference = workdir / "reference.npy"
    np.save(reference, _reference_rows(), allow_pickle=False)
    lua = wrk.write_lua(workdir / "post.lua", bench.body)
    extra: list[str] = []
    window_s = DEFAULT_WINDOW_S
    if opts.telemetry_window_s is not None:
        window_s = opts.telemetry_window_s
        extra = ["--telemetry-window-s", str(window_s)]
    hub = daemon_agent.start_hub(workdir, env, REPO)
    agents: dict[str, processes.Server] = {}
    try:
        client = HubClient(hub.url, hub.token)
        devices = {name: f"bench-{name.replace('_', '-')}" for name in CONFIGS}
        tokens = {
            name: client.add_device(device_id, site=f"bench-{name}")["token"]
            for name, device_id in devices.items()
        }
        registered = client.register_version(MODEL_NAME, bench.path, reference=reference)
        if not registered.get("drift", {}).get("reference_profile"):
            raise RuntimeError(f"the hub kept no reference profile: {registered.get('drift')}")
        client.deploy(
            MODEL_NAME, int(registered["version"]), devices=list(devices.values()), mode="full"
        )
        for name, flag in CONFIGS.items():
            agents[name] = daemon_agent.start_agent(
                hub, devices[name], tokens[name], workdir, env, REPO,
                key=name, extra_args=[flag, *extra],
            )  # fmt: skip
        for name, agent in agents.items():
            agent.wait_ready(120.0)
            wrk.run(wrk_path, agent.url, lua, 8, opts.warmup_s)
            say(f"{name}: ready and warmed up ({agent.url})")
        names = list(CONFIGS)
        runs: dict[int, dict[str, list[dict[str, float]]]] = {
            c: {name: [] for name in names} for c in opts.concurrency
        }
        for r in range(opts.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for c in opts.concurrency:
                for name in order:
                    one = _one(wrk_path, agents[name], lua, c, opts.seconds)
                    runs[c][name].append(one)
                    say(
                        f"round {r} c={c} {name:11s} {one['rps']:8.0f} req/s  "
                        f"p50 {one['p50_us']:7.1f} µs  p99 {one['p99_us']:7.1f} µs  "
                        f"cpu {one['cpu_us_per_request']:6.1f} µs/req"
                    )
        load_end = time.time()
        loadavg_after = Path("/proc/loadavg").read_text().split()[:3]
        say("waiting for the last telemetry window to reach the hub ...")
        counting = check_counting(client, devices, load_end, window_s + 30.0)
        for name, got in counting.items():
            say(f"{name}: hub drift rows {got['drift_rows']}, served {got['served_rows']}")
    finally:
        for agent in agents.values():
            agent.stop()
        hub.server.stop()
    return {
        "options": {
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "concurrency": list(opts.concurrency),
            "telemetry_window_s": window_s,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "wrk": wrk.wrk_version(wrk_path),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
        "concurrency": {str(c): summarise(rs) for c, rs in runs.items()},
        "counting": counting,
        "seconds": time.monotonic() - started,
    }


def render(report: dict[str, Any]) -> str:
    """A Markdown table: per concurrency, medians (ranges) per configuration and ratio."""
    lines = [
        "| c | configuration | req/s | p50 µs | p99 µs | CPU µs/req |",
        "|---:|---|---:|---:|---:|---:|",
    ]

    def cell(d: dict[str, float], fmt: str) -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}–{d['max']:{fmt}})"

    for c, part in report["concurrency"].items():
        for name in CONFIGS:
            m = part[name]
            lines.append(
                f"| {c} | {name} | {cell(m['rps'], ',.0f')} | {cell(m['p50_us'], '.1f')} | "
                f"{cell(m['p99_us'], '.1f')} | {cell(m['cpu_us_per_request'], '.1f')} |"
            )
        for key in ("on_over_off", "off_control_over_off"):
            m = part[key]
            lines.append(
                f"| {c} | {key.replace('_over_', '/')} | {cell(m['rps'], '.3f')} | "
                f"{cell(m['p50'], '.3f')} | {cell(m['p99'], '.3f')} | "
                f"{cell(m['cpu_per_request'], '.3f')} |"
            )
    return "\n".join(lines)


def _concurrency(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table (or ``--json``); 1 when the counting check or
    the load failed."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.drift_deployed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=5, help="wrk seconds per run (5)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (7)")
    parser.add_argument(
        "--concurrency", type=_concurrency, nargs="+", default=[1, 8], help="wrk -c (1 8)"
    )
    parser.add_argument(
        "--telemetry-window-s",
        type=float,
        default=None,
        help="passed to every agent (default: the CLI's, 60 s)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds >= 1 and --rounds >= 1 are required")
    opts = Options(
        seconds=args.seconds,
        rounds=args.rounds,
        concurrency=tuple(args.concurrency),
        telemetry_window_s=args.telemetry_window_s,
    )
    with tempfile.TemporaryDirectory(prefix="modelfleet-drift-deployed-") as d:
        try:
            report = run(opts, Path(d), log=sys.stderr)
        except (CountingError, RuntimeError) as e:
            print(f"drift_deployed FAILED: {e}", file=sys.stderr)
            return 1
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "drift_deployed.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(render(report))
    for name, got in report["counting"].items():
        print(
            f"{name}: the hub's drift API holds {got['drift_rows']} rows; the agent answered "
            f"{got['served_rows']} ({got['profile_windows']} of {got['windows']} windows "
            "with a profile)"
        )
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
