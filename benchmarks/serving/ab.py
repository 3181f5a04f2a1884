"""Same-run A/B of two checkouts' serving paths, alternating, for a shared noisy machine.

``python -m benchmarks.serving.ab BEFORE_TREE [AFTER_TREE] [--rounds N] [--duration S]
[--inproc-rounds K] [--calls C]``

* **HTTP**: for each tree, the agent as ``modelfleet agent run`` starts it, enrolled with
  its own hub (:mod:`benchmarks.serving.daemon_agent`), plus the hand-written Starlette +
  orjson + ORT endpoint (:mod:`benchmarks.serving.naive_app`); ``wrk`` at c=8 on each in
  turn, the order reversed every other round. Reports the per-round ratios to the
  hand-written endpoint (their median) and the servers' CPU per request (median).
* **in-process**: :func:`benchmarks.serving.inproc.measure` in a fresh process per tree,
  alternating; reports each round's ``agent_asgi`` and ``agent_guarded_asgi`` overhead over
  a bare ``session.run`` (p50) and the medians. Both trees run this checkout's harness
  (only their ``src`` differs), so a path the baseline's harness lacks is measured too.

Each tree is run from its own ``src`` (``PYTHONPATH``), so ``BEFORE_TREE`` is usually a
worktree of the baseline commit: ``git worktree add --detach /tmp/before <commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.serving import daemon_agent, processes, wrk
from benchmarks.serving.model import MODEL_NAME, make_model

REPO = Path(__file__).resolve().parents[2]

_INPROC = """
import json, sys, tempfile
from pathlib import Path
from benchmarks.serving import inproc
from benchmarks.serving.model import make_model
bench = make_model(Path(tempfile.mkdtemp()))
r = inproc.measure(bench, int(sys.argv[1]), 2000)
print(json.dumps({k: v["overhead_p50_us"] for k, v in r.items() if isinstance(v, dict)
                  and "overhead_p50_us" in v}))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}


#: The in-process paths compared (see :mod:`benchmarks.serving.inproc`).
INPROC_PATHS = ("agent_asgi", "agent_guarded_asgi")


def inproc_rounds(
    trees: dict[str, Path], rounds: int, calls: int
) -> dict[str, dict[str, list[float]]]:
    """Per path of :data:`INPROC_PATHS`, p50 overhead (µs) per round and tree, alternating."""
    out: dict[str, dict[str, list[float]]] = {p: {key: [] for key in trees} for p in INPROC_PATHS}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for key in order:
            env = {**os.environ, "PYTHONPATH": f"{trees[key] / 'src'}{os.pathsep}{REPO}"}
            done = subprocess.run(
                [sys.executable, "-c", _INPROC, str(calls)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for path in INPROC_PATHS:
                out[path][key].append(result[path])
            figures = "  ".join(f"{p} +{result[p]:.2f} us" for p in INPROC_PATHS)
            print(f"inproc r{r} {key:7} {figures}", flush=True)
    return out


def http_rounds(
    trees: dict[str, Path], rounds: int, duration: int
) -> dict[str, list[tuple[float, float]]]:
    """(req/s, server CPU µs per request) per round, for each tree's agent and ``naive``."""
    run_dir = Path(tempfile.mkdtemp(prefix="modelfleet-ab-"))
    bench = make_model(run_dir / "model")
    lua = wrk.write_lua(run_dir / "post.lua", bench.body)
    wrk_path = wrk.ensure_wrk()
    servers: dict[str, processes.Server] = {}
    hubs: list[processes.Server] = []
    try:
        for key, tree in trees.items():
            agent, hub = daemon_agent.start_enrolled_agent(
                bench.path, run_dir / key, _env(tree), tree
            )
            servers[key], hubs = agent, [*hubs, hub]
        port = processes.free_port()
        base = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "benchmarks.serving.serve", "--app", "naive",
            "--model", str(bench.path), "--port", str(port),
        ]  # fmt: skip
        servers["naive"] = processes.start(
            "naive",
            "naive Starlette + orjson + ORT",
            command,
            url=base + f"/v2/models/{MODEL_NAME}/infer",
            ready_url=base + "/v2/health/ready",
            log=run_dir / "naive.log",
            cwd=REPO,
            env=_env(REPO),
        )
        for server in servers.values():
            server.wait_ready(90)
            wrk.run(wrk_path, server.url, lua, 8, 2)  # warm-up
        out: dict[str, list[tuple[float, float]]] = {key: [] for key in servers}
        for r in range(rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for key in order:
                server = servers[key]
                cpu_before = server.cpu_seconds()
                measured, _ = wrk.run(wrk_path, server.url, lua, 8, duration)
                cpu = (server.cpu_seconds() - cpu_before) * 1e6 / max(1, measured.requests)
                out[key].append((measured.rps, cpu))
                print(
                    f"http r{r} {key:7} {measured.rps:8.0f} req/s  cpu {cpu:5.1f} us/req  "
                    f"non-2xx {measured.non_2xx}",
                    flush=True,
                )
        return out
    finally:
        for server in [*servers.values(), *hubs]:
            server.stop()


def summary(
    inproc: dict[str, dict[str, list[float]]], http: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    """Medians: in-process overhead (and after ÷ before per round); ratio to ``naive`` (per
    round) and CPU per request."""
    result: dict[str, Any] = {}
    for path, per_tree in inproc.items():
        for key, values in per_tree.items():
            if values:
                entry = result.setdefault(key, {})
                entry[f"inproc_{path}_overhead_p50_us"] = statistics.median(values)
                entry[f"inproc_{path}_rounds_us"] = [round(v, 2) for v in values]
        before, after = per_tree.get("before", []), per_tree.get("after", [])
        if before and after:
            ratios = [a / b for a, b in zip(after, before, strict=True)]
            result.setdefault("after", {})[f"inproc_{path}_after_over_before"] = {
                "median": statistics.median(ratios),
                "per_round": [round(x, 3) for x in ratios],
            }
    naive = http.get("naive", [])
    for key, rows in http.items():
        entry = result.setdefault(key, {})
        entry["cpu_us_per_request"] = statistics.median(cpu for _, cpu in rows)
        entry["rps"] = statistics.median(rps for rps, _ in rows)
        if key != "naive" and naive:
            ratios = [a[0] / b[0] for a, b in zip(rows, naive, strict=True)]
            entry["ratio_to_naive_per_round"] = [round(x, 3) for x in ratios]
            entry["ratio_to_naive"] = statistics.median(ratios)
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run both A/Bs, print the rounds and a JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("before", type=Path, help="the baseline checkout (a worktree)")
    parser.add_argument("after", type=Path, nargs="?", default=REPO, help="default: this one")
    parser.add_argument("--rounds", type=int, default=12, help="wrk rounds (12)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument("--inproc-rounds", type=int, default=5, help="in-process rounds (5)")
    parser.add_argument("--calls", type=int, default=20_000, help="in-process calls (20000)")
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    inproc = inproc_rounds(trees, args.inproc_rounds, args.calls) if args.inproc_rounds else {}
    http = http_rounds(trees, args.rounds, args.duration) if args.rounds else {}
    print(json.dumps(summary(inproc, http), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
