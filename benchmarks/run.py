"""Entry point of modelfleet's benchmarks.

``python -m benchmarks.run [serving|lifecycle|telemetry|telemetry-hub|director|checkin|
rollout-core|rollout-sim|drift|drift-evidently|drift-deployed|verify-install|delivery|bundle|
all] [--duration N] ...``

``telemetry`` measures the device buffer and forwarder; ``telemetry-hub`` drains windows into a
real ``hub serve`` (SQLite; with ``--database-url postgres`` a fresh PostgreSQL database, see
``benchmarks/telemetry_hub.py``). ``rollout-core`` times the pure rollout core (cohorts plus
gate evaluation) at 1,000 / 10,000 / 100,000 devices (``--devices`` sets the largest);
``rollout-sim`` runs a simulated fleet (``--devices``, default 10,000) against a real
``hub serve`` (``benchmarks/rollout_sim.py``). ``drift`` times the drift core (device counting
per row, the hub's merge and statistics over 10,000 device windows) and measures its false-alarm
rate over 1,000 stable windows (``benchmarks/drift.py``). ``drift-evidently`` compares drift
from device histograms with Evidently's DataDriftPreset (in its own venv, ``.bench/``) on the
same 100,000 × 50 data: time, memory, verdicts (``benchmarks/drift_vs_evidently.py``).
``drift-deployed`` measures inference latency with drift counting on vs off on three
``modelfleet agent run`` processes enrolled with one real hub, with wrk over HTTP, and checks
from the hub that only the ``on`` agent counted (``benchmarks/drift_deployed.py``; not part of
``all``, ~5 minutes).
``delivery`` times resumed HTTP downloads of a 256 MiB file against plain httpx and measures
hub egress for a 100-device site (``--devices``) with and without a site mirror
(``benchmarks/delivery.py``). ``bundle`` times removable-media bundle export and import of a
1 GiB artefact (``--bundle-mib``) against plain ``tar | zstd -3`` on the same tree
(``benchmarks/bundle.py``).

``director`` signs per-device director repositories at 1,000 / 10,000 / 100,000 devices and
``checkin`` measures check-ins per second on one ``hub serve`` (both take ``--database-url
postgres``; see ``benchmarks/director.py`` and ``benchmarks/checkin.py``).

Results go to ``bench-results/`` (git-ignored, JSON) and to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys


def _concurrency(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen benchmark; return the exit status."""
    args_in = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        default="serving",
        choices=[
            "serving",
            "lifecycle",
            "telemetry",
            "telemetry-hub",
            "director",
            "checkin",
            "rollout-core",
            "rollout-sim",
            "drift",
            "verify-install",
            "drift-evidently",
            "drift-deployed",
            "delivery",
            "bundle",
            "all",
        ],
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="telemetry-hub, director, checkin: '' (SQLite) or 'postgres'",
    )
    parser.add_argument(
        "--before-src",
        default="",
        help="checkin: also measure a hub from this src folder, in turns (before/after)",
    )
    parser.add_argument("--windows", type=int, default=60_000, help="telemetry-hub: windows")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="rollout-core: largest fleet (100000); rollout-sim: devices (10000); "
        "delivery: devices (100)",
    )
    parser.add_argument("--cycles", type=int, default=5, help="lifecycle: guard rollbacks (5)")
    parser.add_argument("--swaps", type=int, default=6, help="lifecycle: swaps under load (6)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument("--repeats", type=int, default=5, help="wrk runs per cell (5)")
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=(1, 8, 64),
        help="wrk connection counts, comma-separated (1,8,64)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per server")
    parser.add_argument("--skip-mlserver", action="store_true", help="do not run MLServer")
    parser.add_argument(
        "--no-mlserver-defaults",
        action="store_true",
        help="measure only the tuned MLServer configuration",
    )
    parser.add_argument(
        "--no-h11", action="store_true", help="skip the agent-on-h11 HTTP stack comparison"
    )
    parser.add_argument(
        "--no-granian", action="store_true", help="skip the agent-on-granian comparison"
    )
    parser.add_argument(
        "--inproc-calls", type=int, default=20_000, help="timed in-process calls (20000)"
    )
    parser.add_argument(
        "--size", type=int, default=1 << 30, help="verify-install: package bytes (1 GiB)"
    )
    parser.add_argument(
        "--bundle-mib", type=float, default=1024, help="bundle: artefact MiB (1024)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(args_in)
    if args.duration <= 0 or args.repeats < 1 or args.inproc_calls < 100:
        parser.error("--duration >= 1, --repeats >= 1 and --inproc-calls >= 100 are required")

    status = 0
    if args.benchmark == "rollout-sim":
        from benchmarks.rollout_sim import main as rollout_sim

        n = str(args.devices or 10_000)
        return rollout_sim(["--devices", n, "--database-url", args.database_url])
    if args.benchmark == "verify-install":  # issue 10
        from benchmarks.verify_install import main as verify_install

        extra = ["--no-docs"] if args.no_docs else []
        return verify_install(["--size", str(args.size), "--repeats", "3", *extra])
    if args.benchmark == "director":
        from benchmarks.director import main as director

        return director(["--database-url", args.database_url])
    if args.benchmark == "checkin":
        from benchmarks.checkin import main as checkin

        extra = ["--before-src", args.before_src, "--rounds", "2"] if args.before_src else []
        return checkin(["--database-url", args.database_url, *extra])
    if args.benchmark in ("rollout-core", "all"):
        from benchmarks.rollout_core import main as rollout_core

        extra = ["--no-docs"] if args.no_docs else []
        status = rollout_core(
            ["--devices", str(args.devices or 100_000), "--repeats", str(args.repeats), *extra]
        )
        if args.benchmark == "rollout-core":
            return status
    if args.benchmark == "drift-evidently":
        from benchmarks.drift_vs_evidently import main as drift_evidently

        extra = ["--no-docs"] if args.no_docs else []
        return drift_evidently(["--repeats", "3", *extra])  # Evidently: ~30 s a run
    if args.benchmark == "drift-deployed":  # issue 9, the deployed agent
        from benchmarks.drift_deployed import main as drift_deployed

        return drift_deployed(["--seconds", "5", "--rounds", "7", "--concurrency", "1", "8"])
    if args.benchmark in ("drift", "all"):
        from benchmarks.drift import main as drift

        extra = ["--no-docs"] if args.no_docs else []
        status = drift(["--repeats", str(args.repeats), *extra]) or status
        if args.benchmark == "drift":
            return status
    if args.benchmark in ("delivery", "all"):  # issue 11
        from benchmarks.delivery import main as delivery

        extra = ["--no-docs"] if args.no_docs else []
        if args.benchmark == "delivery" and args.devices:
            extra += ["--devices", str(args.devices)]
        status = delivery(["--repeats", "3", *extra]) or status
        if args.benchmark == "delivery":
            return status
    if args.benchmark in ("bundle", "all"):  # issue 11
        from benchmarks.bundle import main as bundle

        extra = ["--no-docs"] if args.no_docs else []
        status = bundle(["--bundle-mib", str(args.bundle_mib), "--repeats", "3", *extra]) or status
        if args.benchmark == "bundle":
            return status
    if args.benchmark == "telemetry-hub":
        from benchmarks.telemetry_hub import main as telemetry_hub

        return telemetry_hub(["--database-url", args.database_url, "--windows", str(args.windows)])
    if args.benchmark in ("telemetry", "all"):
        from benchmarks.telemetry_device import main as telemetry

        status = telemetry(["--no-docs"] if args.no_docs else [])
        if args.benchmark == "telemetry":
            return status
    if args.benchmark in ("lifecycle", "all"):
        from benchmarks.agent_lifecycle import main as lifecycle

        status = lifecycle(["--cycles", str(args.cycles), "--swaps", str(args.swaps)])
        if args.benchmark == "lifecycle":
            return status

    from benchmarks.serving.bench import Options, run

    opts = Options(
        duration=args.duration,
        repeats=args.repeats,
        concurrency=args.concurrency,
        warmup=args.warmup,
        skip_mlserver=args.skip_mlserver,
        mlserver_defaults=not args.no_mlserver_defaults,
        h11=not args.no_h11,
        granian=not args.no_granian,
        inproc_calls=args.inproc_calls,
        write_docs=not args.no_docs,
        argv=args_in,
    )
    return run(opts) or status


if __name__ == "__main__":
    sys.exit(main())
