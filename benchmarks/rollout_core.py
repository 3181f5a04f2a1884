"""The pure rollout core at fleet scale (issue 8): cohorts plus gate evaluation, 100,000 devices.

``python -m benchmarks.run rollout-core [--devices N] [--repeats R] [--no-docs]`` (or
``python -m benchmarks.rollout_core``).

One timed pass is what the hub does for a rollout over the fleet, in pure code:

* ``select``: the plan's selector (:meth:`Selector.matches`) over every device (site + tags);
* ``groups``: blast-radius groups from the devices' ``cell:`` tags (a fifth of the fleet in
  redundant pairs);
* ``cohorts``: :func:`plan_cohorts` over the selected devices with the default stages;
* ``stages``: each stage's added devices (:meth:`CohortPlan.added`);
* ``gates``: :func:`evaluate` of eight gates (every metric but drift) per stage, the streaks
  carried from one stage to the next.

The median of ``--repeats`` passes (5) is reported; goal ≤ 1 s at 100,000 devices. Merging the
telemetry windows into the :class:`GroupStats` the gates take is the hub's SQL work
(``Telemetry.summary``) and not part of this figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._docs import write_section
from modelfleet.rollout.cohorts import blast_radius_groups, plan_cohorts
from modelfleet.rollout.gates import GroupStats, Verdict, evaluate
from modelfleet.rollout.plan import GateMetric, GateSpec, parse_plan

BEGIN = "<!-- rollout-core:begin -->"
END = "<!-- rollout-core:end -->"
SECTION = "## Rollout core (issue 8): cohorts and gates for 100,000 devices"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
RESULTS = Path("bench-results")

GATES = (
    GateSpec(GateMetric.ERROR_RATE, max_delta=0.01, min_devices=3, min_samples=500),
    GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2),
    GateSpec(GateMetric.GUARD_ROLLBACKS, max=0),
    GateSpec(GateMetric.CRASHES, max_ratio=2.0, max_delta=0.05),
    GateSpec(GateMetric.REFUSALS, max=0.01),
    GateSpec(GateMetric.SHADOW_DISAGREEMENT, max=0.05),
    GateSpec(GateMetric.CONFIDENCE_SHIFT, max=0.05),
)


def fleet(n: int) -> list[tuple[str, str, list[str]]]:
    """(device id, site, tags): 10 sites, line tags, a fifth of the fleet in cell pairs."""
    out = []
    for i in range(n):
        tags = [f"line{i % 4}", "group:edge"]
        if i % 5 == 0:
            tags.append(f"cell:{i // 10}")  # devices i and i + 5 share a cell
        out.append((f"dev-{i:07d}", f"plant-{i % 10}", tags))
    return out


def stats(devices: int) -> GroupStats:
    requests = devices * 600
    return GroupStats(
        devices=devices,
        requests=requests,
        errors=requests // 1000,
        latency_p99_s=0.012,
        crashes=devices // 500,
        refusals=requests // 2000,
        shadow_compared=requests // 10,
        shadow_disagreed=requests // 400,
        confidence_mean=0.91,
        confidence_samples=requests,
    )


def one_pass(devices: list[tuple[str, str, list[str]]]) -> dict[str, float]:
    plan = parse_plan(
        {
            "model": "detector",
            "version": 7,
            "target": {"groups": ["edge"]},
            "blast_radius": {"tag_prefix": "cell:"},
        }
    )
    laps: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        laps[name] = now - t
        t = now

    selected = [(d, tags) for d, site, tags in devices if plan.selector.matches(d, site, tags)]
    lap("select")
    groups = blast_radius_groups(dict(selected), plan.blast_radius_tag)
    lap("groups")
    cohorts = plan_cohorts([d for d, _ in selected], "ro-bench", plan.percents, groups)
    lap("cohorts")
    added = [cohorts.added(k) for k in range(cohorts.stages)]
    lap("stages")
    control = stats(len(devices))
    streaks: dict[str, int] = {}
    on_version = 0
    for k in range(cohorts.stages):
        on_version += len(added[k])  # the stage group: every device on the version so far
        ev = evaluate(GATES, stats(on_version), control, streaks)
        assert ev.verdict is Verdict.PASS, ev.reason
        streaks = ev.streaks
    lap("gates")
    laps["total"] = sum(laps.values())
    laps["stages_count"] = cohorts.stages
    laps["sizes"] = cohorts.sizes()  # type: ignore[assignment]
    return laps


def measure(n: int, repeats: int) -> dict[str, Any]:
    devices = fleet(n)
    one_pass(devices)  # warm up
    passes = [one_pass(devices) for _ in range(repeats)]
    keys = ("select", "groups", "cohorts", "stages", "gates", "total")
    median: Callable[[str], float] = lambda k: statistics.median(p[k] for p in passes)  # noqa: E731
    return {
        "devices": n,
        "repeats": repeats,
        "median_s": {k: median(k) for k in keys},
        "min_total_s": min(p["total"] for p in passes),
        "stages": passes[0]["stages_count"],
        "sizes": passes[0]["sizes"],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Measured {result['when']} on {result['machine']} (Python {result['python']}, load "
        f"average {result['load']:.1f} from other jobs on the shared box). "
        f"Reproduce: `{result['command']}`.",
        "",
        "| devices | select | groups | cohorts | stages | gates | total (median of "
        f"{result['runs'][0]['repeats']}) | goal |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        m = r["median_s"]
        goal = "≤ 1 s: " + ("met" if m["total"] <= 1.0 else "**not met**")
        lines.append(
            f"| {r['devices']:,} | {m['select'] * 1000:.0f} ms | {m['groups'] * 1000:.0f} ms | "
            f"{m['cohorts'] * 1000:.0f} ms | {m['stages'] * 1000:.0f} ms | "
            f"{m['gates'] * 1000:.2f} ms | **{m['total'] * 1000:.0f} ms** | "
            f"{goal if r['devices'] == 100_000 else ''} |"
        )
    big = result["runs"][-1]
    lines += [
        "",
        f"At {big['devices']:,} devices the default stages (1 %, 9 %, 90 %, 100 %) reach "
        f"{', '.join(f'{s:,}' for s in big['sizes'])} devices cumulatively "
        f"({big['stages']} stages{_overflow(big)}). "
        "What a pass does: the selector over every device (site + tags), blast-radius groups "
        "from `cell:` tags (a fifth of the fleet in pairs), "
        "`plan_cohorts` (a sha256 per device, one sort, one scan per stage), each stage's "
        "added devices, and `evaluate` of seven gates per stage over merged aggregates. "
        "Hashing and sorting are most of the cost; gate evaluation is constant in the fleet "
        "size (the merging of telemetry windows into aggregates is the hub's SQL work, "
        "measured with the simulated rollout).",
        "",
    ]
    return "\n".join(lines)


def _overflow(run: dict[str, Any]) -> str:
    extra = run["stages"] - 4
    if extra <= 0:
        return ""
    return (
        f": {extra} trailing stage{'s' if extra > 1 else ''} for the cell pairs whose two "
        "members both fell into the last stage, which may update only one of them"
    )


def write_docs(section: str) -> None:
    write_section(SECTION, BEGIN, END, section, DOCS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout_core")
    parser.add_argument(
        "--devices", type=int, default=100_000, help="largest fleet (100000); also 1k, 10k"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per size (5)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs")
    args = parser.parse_args(argv)
    if args.devices < 10 or args.repeats < 1:
        parser.error("--devices >= 10 and --repeats >= 1 are required")
    sizes = sorted({s for s in (1_000, 10_000) if s < args.devices} | {args.devices})
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "command": "python -m benchmarks.run rollout-core",
        "load": os.getloadavg()[0],
        "runs": [measure(n, args.repeats) for n in sizes],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout_core.json").write_text(json.dumps(result, indent=2))
    section = render(result)
    print(section)
    if not args.no_docs:
        write_docs(section)
    big = result["runs"][-1]
    return 0 if big["devices"] < 100_000 or big["median_s"]["total"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
