"""Drift monitoring's pure core (issue 9): device counting, hub merge + statistics, false alarms.

``python -m benchmarks.run drift [--repeats R] [--devices N] [--no-docs]`` (or
``python -m benchmarks.drift``).

* **device**: :meth:`ProfileCounter.count` over batches of 1 and 64 rows at 20 and 200 numeric
  features, then :meth:`ProfileCounter.snapshot` (buffered rows are counted there, so the
  figure is the whole cost), in CPU µs per row (process time); with KLL sketches (the
  default) and without.
  Goal ≤ 2 µs per row at 20 features for batched input.
* **hub**: one model (18 numeric + 2 categorical inputs, a score and a label output) over
  ``--devices`` (10,000) device windows of 500 rows each, as wire dicts (what the hub's
  ingest holds after JSON decoding): :func:`merge_wire` then :func:`evaluate`. Counts only
  (the combined verdict reads no sketch) and with the KLL merges (KS). Informational: the
  hub merges at ingest, so the ≤ 1 s goal is the roll-ups' (next).
* **hub roll-ups** (ADR 0019): the same windows (with sketches) merged at ingest into the
  hub's roll-ups (``hub.drift_rollups.DriftRollups.add``, one call per device window as
  ingest makes it, in a real SQLite hub database) per (model, version, site, hour) over
  ``--sites`` (20) sites and one hour; then the query a drift report makes: read the
  roll-ups, merge them with sketches and evaluate with KS. Goal ≤ 1 s including KS.
* **false alarms**: 1,000 stable windows of a 53-column model (50 normal features, one
  categorical, two outputs; reference 50,000 rows) at 200 and 1,000 rows per window: the
  share of windows whose combined verdict is drift, what an uncorrected per-column
  chi-square at 0.05 would flag, and the windows the sequential state spent warning or
  drifting.

Medians of ``--repeats`` (5; 3 for the hub) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._docs import write_section
from modelfleet.monitoring.drift import DriftTest, Verdict, evaluate
from modelfleet.monitoring.profile import ReferenceProfile
from modelfleet.monitoring.profile_counts import ProfileCounter, merge_wire
from modelfleet.monitoring.sequential import DriftState, reset, step

BEGIN = "<!-- drift:begin -->"
END = "<!-- drift:end -->"
SECTION = "## Drift monitoring core (issue 9): device counting, hub merge, false alarms"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
RESULTS = Path("bench-results")


def device(features: int, batch: int, sketches: bool, repeats: int) -> float:
    """Median µs per row of counting (and snapshotting) batches of ``batch`` rows."""
    rng = np.random.default_rng(features)
    prof = ReferenceProfile.build(
        rng.standard_normal((20_000, features)), sketch_k=200 if sketches else None
    )
    rows = (64_000 if batch > 1 else 20_000) // (10 if features >= 200 else 1)
    data = rng.standard_normal((rows, features))
    batches = [data[i : i + batch] for i in range(0, rows, batch)]
    times = []
    for _ in range(repeats):
        counter = ProfileCounter(prof)
        # CPU time of this process: the device's cost, and steadier than wall time on a
        # shared box (other jobs' run-queue waits are not ours)
        t = time.process_time()
        for b in batches:
            counter.count(b)
        counter.snapshot()
        times.append((time.process_time() - t) * 1e6 / rows)
    return statistics.median(times)


def hub_model(rows: int, rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    x = rng.standard_normal((rows, 18))
    inputs: dict[str, Any] = {f"f{i}": x[:, i] for i in range(18)}
    inputs["line"] = rng.choice(["l1", "l2", "l3", "l4", "l5"], rows)
    inputs["shift"] = rng.choice(["day", "night"], rows)
    score = rng.beta(2, 5, rows)
    return inputs, {"score": score, "label": (score > 0.5).astype(np.int64)}


def hub(devices: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(10)
    ins, outs = hub_model(50_000, rng)
    prof = ReferenceProfile.build(
        ins, categorical=["line", "shift"], outputs=outs, categorical_outputs=["label"]
    )
    docs = []
    t = time.perf_counter()
    for _ in range(devices):
        counter = ProfileCounter(prof)
        counter.count(*hub_model(500, rng))
        docs.append(counter.snapshot().to_wire())
    built = time.perf_counter() - t
    wire_bytes = len(json.dumps(docs[0]))
    out: dict[str, Any] = {"devices": devices, "rows_per_window": 500, "columns": 22,
                           "window_json_bytes": wire_bytes, "build_s": built}  # fmt: skip
    evaluate(prof, merge_wire(docs[:10], prof))  # imports SciPy outside the timing
    for label, sketches in (("counts", False), ("sketches", True)):
        merges, evals = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            merged = merge_wire(docs, prof, sketches=sketches)
            t1 = time.perf_counter()
            report = evaluate(prof, merged)
            t2 = time.perf_counter()
            merges.append(t1 - t0)
            evals.append(t2 - t1)
        assert merged.rows == devices * 500 and report.verdict is Verdict.NO_DRIFT
        out[label] = {
            "merge_s": statistics.median(merges),
            "evaluate_s": statistics.median(evals),
            "total_s": statistics.median(m + e for m, e in zip(merges, evals, strict=True)),
        }
    return out


def hub_rollups(devices: int, sites: int, repeats: int) -> dict[str, Any]:
    """Ingest-time roll-ups in a real hub database, then the report's query."""
    import tempfile
    from datetime import timedelta

    from modelfleet.hub import db
    from modelfleet.hub.drift_rollups import DriftRollups, ProfileCache, merge_rollups, read_rollups
    from modelfleet.packaging.reference import PackageProfile

    rng = np.random.default_rng(10)
    ins, outs = hub_model(50_000, rng)
    prof = ReferenceProfile.build(
        ins, categorical=["line", "shift"], outputs=outs, categorical_outputs=["label"]
    )
    package = PackageProfile(prof, ())

    class _Fixed(ProfileCache):
        def __init__(self) -> None:
            pass

        def get(self, s: Any, model: str, version: str) -> PackageProfile | None:
            return package

    docs, plain = [], []
    for _ in range(devices):
        counter = ProfileCounter(prof)
        batch = hub_model(500, rng)
        counter.count(*batch)
        docs.append(counter.snapshot().to_wire())
        counter = ProfileCounter(prof, sketches=False)
        counter.count(*batch)
        plain.append(counter.snapshot().to_wire())
    hour = datetime(2026, 1, 1, 10, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{tmp}/hub.db")
        db.migrate(engine)
        sessions = db.make_sessionmaker(engine)
        writer = DriftRollups(_Fixed())
        ingest_s = {}
        at = hour + timedelta(minutes=30)
        # counts only (the agents' default) under version "0", then with sketches ("1")
        for version, wires in (("0", plain), ("1", docs)):
            t = time.perf_counter()
            for i, doc in enumerate(wires):
                record = {"kind": "window", "model": "m", "version": version,
                          "role": "production", "profile": doc}  # fmt: skip
                with sessions.begin() as s:
                    writer.add(s, f"site-{i % sites:02d}", [(record, at)], hour)
            ingest_s[version] = time.perf_counter() - t
        reads, merges, evals = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with sessions() as s:
                rows = read_rollups(s, "m", "1", hour, hour + timedelta(hours=1))
            t1 = time.perf_counter()
            merged = merge_rollups(package, rows)
            t2 = time.perf_counter()
            report = evaluate(prof, merged)
            t3 = time.perf_counter()
            reads.append(t1 - t0)
            merges.append(t2 - t1)
            evals.append(t3 - t2)
        body_bytes = statistics.median(len(json.dumps(r.body)) for r in rows)
        engine.dispose()
    ks = [r for f in report.features for r in f.results if r.test is DriftTest.KS]
    assert merged.rows == devices * 500 and report.verdict is Verdict.NO_DRIFT
    assert len(rows) == sites and ks and all(r.value is not None for r in ks)
    totals = [a + b + c for a, b, c in zip(reads, merges, evals, strict=True)]
    return {
        "devices": devices,
        "sites": sites,
        "rollups": len(rows),
        "rollup_json_bytes": body_bytes,
        "ingest_ms_per_window": ingest_s["1"] * 1000 / devices,
        "ingest_ms_per_window_counts_only": ingest_s["0"] * 1000 / devices,
        "read_s": statistics.median(reads),
        "merge_s": statistics.median(merges),
        "evaluate_s": statistics.median(evals),
        "total_s": statistics.median(totals),
        "ks_columns": len(ks),
    }


def false_alarms(rows: int, windows: int) -> dict[str, Any]:
    rng = np.random.default_rng(2026)

    def sample(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        x = rng.standard_normal((n, 50))
        inputs: dict[str, Any] = {f"f{i}": x[:, i] for i in range(50)}
        inputs["colour"] = rng.choice(["red", "green", "blue", "grey"], n, p=[0.4, 0.3, 0.2, 0.1])
        score = rng.beta(2.0, 5.0, n)
        return inputs, {"score": score, "label": (score > 0.5).astype(np.int64)}

    ins, outs = sample(50_000)
    prof = ReferenceProfile.build(
        ins, categorical=["colour"], outputs=outs, categorical_outputs=["label"], sketch_k=None
    )
    alarms = uncorrected = warning = drifting = 0
    state = reset()
    t = time.perf_counter()
    for _ in range(windows):
        counter = ProfileCounter(prof)
        counter.count(*sample(rows))
        report = evaluate(prof, counter.snapshot())
        alarms += report.verdict is Verdict.DRIFT
        uncorrected += any(
            r.verdict is Verdict.DRIFT
            for f in report.features
            for r in f.results
            if r.test is DriftTest.CHI_SQUARE
        )
        state = step(state, report.score, report.rows)
        warning += state.state is DriftState.WARNING
        drifting += state.state is DriftState.DRIFTING
    return {
        "rows": rows,
        "windows": windows,
        "columns": 53,
        "alarms": alarms,
        "rate": alarms / windows,
        "uncorrected_chi_square_rate": uncorrected / windows,
        "warning_windows": warning,
        "drifting_windows": drifting,
        "seconds": time.perf_counter() - t,
    }


def render(result: dict[str, Any]) -> str:
    dev = result["device"]
    lines = [
        f"Measured {result['when']} on {result['machine']} (Python {result['python']}, load "
        f"average {result['load']:.1f} from other jobs on the shared box). Reproduce: "
        f"`{result['command']}`.",
        "",
        "Device: `ProfileCounter.count` per batch + `snapshot()`, CPU µs per row (process "
        "time, median of "
        f"{result['repeats']}); numeric features, reference bins 10 deciles (12 buckets + "
        "missing), KLL k = 200.",
        "",
        "| features | batch | with KLL sketches | counts only | goal |",
        "|---:|---:|---:|---:|---|",
    ]
    for cell in dev:
        goal = ""
        if cell["features"] == 20 and cell["batch"] > 1:
            goal = "≤ 2 µs: " + ("met" if cell["sketches_us"] <= 2.0 else "**not met**")
        lines.append(
            f"| {cell['features']} | {cell['batch']} | **{cell['sketches_us']:.2f}** | "
            f"{cell['counts_us']:.2f} | {goal} |"
        )
    h = result["hub"]
    lines += [
        "",
        f"Hub: one model, {h['columns']} columns, {h['devices']:,} device windows of "
        f"{h['rows_per_window']} rows ({h['window_json_bytes']:,} B of JSON each), "
        "`merge_wire` + `evaluate`, median of 3:",
        "",
        "| path | merge | evaluate | total | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for label, what in (("counts", "counts only (PSI, JS, Hellinger, W1, χ², the combined "
                                   "verdict)"), ("sketches", "+ KLL merges (KS)")):  # fmt: skip
        c = h[label]
        # informational: the hub never merges raw device windows for a report; it merges
        # at ingest (ADR 0019) and the roll-ups row below carries the ≤ 1 s goal
        goal = "informational (the hub's path: roll-ups below)"
        lines.append(
            f"| {what} | {c['merge_s']:.2f} s | {c['evaluate_s'] * 1000:.0f} ms | "
            f"**{c['total_s']:.2f} s** | {goal} |"
        )
    r = result.get("hub_rollups")
    if r is not None:
        goal = "≤ 1 s: " + ("met" if r["total_s"] <= 1.0 else "**not met**")
        lines += [
            "",
            f"Hub roll-ups (ADR 0019): the same {r['devices']:,} windows, with sketches, "
            f"merged at ingest into {r['rollups']} roll-ups (one per site, {r['sites']} sites, "
            "one hour; `DriftRollups.add` and a commit per device window in a real SQLite hub "
            f"database: **{r['ingest_ms_per_window']:.2f} ms** per window at ingest, "
            f"{r['ingest_ms_per_window_counts_only']:.2f} ms for windows without sketches, "
            f"the agents' default; a roll-up's JSON is {r['rollup_json_bytes']:,.0f} B). "
            "A drift report's query, median of "
            f"{result['repeats_hub']}:",
            "",
            "| read roll-ups | merge (counts + KLL) | evaluate (KS on "
            f"{r['ks_columns']} columns) | total | goal |",
            "|---:|---:|---:|---:|---|",
            f"| {r['read_s'] * 1000:.0f} ms | {r['merge_s'] * 1000:.0f} ms | "
            f"{r['evaluate_s'] * 1000:.0f} ms | **{r['total_s'] * 1000:.0f} ms** | {goal} |",
        ]
    lines += [
        "",
        "False alarms on stable data (53 columns: 50 normal features, one categorical, a "
        "score and a label; reference 50,000 rows; Holm–Bonferroni at alpha = 0.001 and "
        "PSI ≥ 0.1; the sequential state is the default CUSUM):",
        "",
        "| rows per window | windows | combined alarms | rate | uncorrected χ² at 0.05 "
        "| warning windows | drifting windows |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fa in result["false_alarms"]:
        lines.append(
            f"| {fa['rows']:,} | {fa['windows']:,} | {fa['alarms']} | **{fa['rate']:.2%}** | "
            f"{fa['uncorrected_chi_square_rate']:.0%} | {fa['warning_windows']} | "
            f"{fa['drifting_windows']} |"
        )
    lines += [
        "",
        "Reading: sketching is most of the device cost (DataSketches' KLL update is ~30–60 "
        "ns per value); bucket counting is one compare per edge over the whole buffered "
        "block and one `bincount`. Single-row batches are buffered (1,024 rows) and pay "
        "the Python call per row. At the hub every window's counts are checked and summed "
        "in bulk (one `bincount` per group): the combined verdict for 10,000 devices is "
        "well inside a second. The KS path merges 10,000 × 19 KLL sketches one by one "
        "(~15 µs each in C++) and misses the 1 s goal from raw windows; the hub therefore "
        "keeps merged counts and sketches per (model, version, site, hour) at ingest, so a "
        "report merges roll-ups (sites × hours), not device windows (the roll-ups row above). "
        f"A window's JSON is {h['window_json_bytes']:,} B here, almost all of it the 19 "
        "base64 sketches (~1.3 KB each at 500 rows; the counts are ~1 KB): a profile "
        "with `sketch_k=None` sends counts only.",
        "",
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    write_section(SECTION, BEGIN, END, section, DOCS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (5)")
    parser.add_argument("--devices", type=int, default=10_000, help="hub: windows (10000)")
    parser.add_argument("--windows", type=int, default=1000, help="false alarms: windows")
    parser.add_argument("--sites", type=int, default=20, help="hub roll-ups: sites (20)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.devices < 1 or args.windows < 1 or args.sites < 1:
        parser.error("--repeats, --devices, --windows and --sites must be positive")
    cells = []
    for features in (20, 200):
        for batch in (1, 64):
            cells.append(
                {
                    "features": features,
                    "batch": batch,
                    "sketches_us": device(features, batch, True, args.repeats),
                    "counts_us": device(features, batch, False, args.repeats),
                }
            )
            print(cells[-1], flush=True)
    hub_result = hub(args.devices, min(3, args.repeats))
    print(hub_result, flush=True)
    rollups = hub_rollups(args.devices, args.sites, min(3, args.repeats))
    print(rollups, flush=True)
    alarms = [false_alarms(rows, args.windows) for rows in (200, 1000)]
    print(alarms, flush=True)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "command": "python -m benchmarks.run drift",
        "load": os.getloadavg()[0],
        "repeats": args.repeats,
        "device": cells,
        "hub": hub_result,
        "hub_rollups": rollups,
        "repeats_hub": min(3, args.repeats),
        "false_alarms": alarms,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(result, indent=2))
    section = render(result)
    print(section)
    if not args.no_docs:
        write_docs(section)
    goal_device = all(
        c["sketches_us"] <= 2.0 for c in cells if c["features"] == 20 and c["batch"] > 1
    )
    # the ≤ 1 s goal is the hub's report path (roll-ups merged at ingest); the raw-window
    # rows are informational (noisy on a loaded machine, and not how the hub merges)
    goal_hub = rollups["total_s"] <= 1.0
    return 0 if goal_device and goal_hub else 1


if __name__ == "__main__":
    sys.exit(main())
