"""``modelfleet sim``: a simulated fleet against a real hub (issue 8)."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import UsageError
from modelfleet.cli._output import console, err_console, key_values, print_json, table
from modelfleet.errors import InvalidInputError, UnauthenticatedError

__all__ = ["register"]


#: Summary fields the table view shows (``--json`` has them all).
_SHOWN = (
    "devices", "sim_seconds", "wall_seconds", "clock", "director_layout", "checkins",
    "checkins_per_s", "bytes_received_per_device", "bytes_sent_per_device", "guard_rollbacks",
    "refusals", "crashes", "errors",
)  # fmt: skip


def _token(token: str, token_file: Path | None) -> str:
    if not token and token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read --token-file {token_file}: {e.strerror or e}") from e
    if not token:
        raise UnauthenticatedError(
            "no token: pass an operator token with --token, --token-file or MODELFLEET_TOKEN"
        )
    return token


def _progress_printer(json_out: bool) -> Any:
    from modelfleet.sim import Progress

    tty = err_console.is_terminal
    last = [0.0]

    def show(p: Progress) -> None:
        if not tty and time.monotonic() - last[0] < 10.0:
            return
        last[0] = time.monotonic()
        h, rem = divmod(int(p.sim_s), 3600)
        serving = "  ".join(
            f"{model}: " + " ".join(f"{v} {n}" for v, n in per.items())
            for model, per in p.serving.items()
        )
        line = (
            f"sim {h:02d}:{rem // 60:02d}:{rem % 60:02d}  wall {p.wall_s:6.1f} s  "
            f"check-ins {p.checkins}  errors {p.errors}  {serving or 'nothing served yet'}"
        )
        if tty:
            err_console.print(f"\r{line[:200]}", end="", soft_wrap=True, highlight=False)
        else:
            err_console.print(line, soft_wrap=True)

    return show


def register(app: typer.Typer) -> None:
    """Attach ``sim`` to the main app."""

    @app.command("sim")
    def sim(
        hub: Annotated[str, typer.Option("--hub", envvar="MODELFLEET_HUB", help="Hub URL.")],
        token: Annotated[
            str,
            typer.Option(
                "--token",
                envvar="MODELFLEET_TOKEN",
                help="Operator token (enrols the devices).",
                show_default=False,
            ),
        ] = "",
        token_file: Annotated[
            Path | None,
            typer.Option(
                "--token-file",
                envvar="MODELFLEET_TOKEN_FILE",
                show_default=False,
                help="Read the operator token from this file.",
            ),
        ] = None,
        devices: Annotated[int, typer.Option(help="Simulated devices (1 to 100,000).")] = 100,
        prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-00000 ….")] = "sim",
        site: Annotated[str, typer.Option(help="Site name (SITE-k with --sites > 1).")] = "sim",
        sites: Annotated[int, typer.Option(help="Spread the devices over this many sites.")] = 1,
        tags: Annotated[
            list[str] | None, typer.Option("--tag", help="A tag of every device (repeatable).")
        ] = None,
        poll_s: Annotated[float, typer.Option(help="Simulated seconds between check-ins.")] = 60,
        window_s: Annotated[float, typer.Option(help="Telemetry window (simulated s).")] = 60,
        fault: Annotated[
            list[str] | None,
            typer.Option(
                help="A fault for a cohort, e.g. 'version=3:error_rate=0.2', "
                "'version=3:crash_per_h=30:guard_crashes=2', 'fraction=0.1:late=5', "
                "'fraction=0.05:skew=-600' (repeatable; see docs/adr/0017).",
            ),
        ] = None,
        offline: Annotated[
            float, typer.Option(help="Share of devices offline from --offline-at (0 to 1).")
        ] = 0.0,
        offline_for: Annotated[str, typer.Option(help="How long they stay offline.")] = "2h",
        offline_at: Annotated[str, typer.Option(help="When they go offline.")] = "0",
        duration: Annotated[str, typer.Option(help="Simulated time to run (90, 30m, 2h).")] = "1h",
        rps: Annotated[float, typer.Option(help="Requests per second per device.")] = 1.0,
        concurrency: Annotated[int, typer.Option(help="HTTP connections to the hub.")] = 16,
        seed: Annotated[int, typer.Option(help="Random seed (jitter, traffic).")] = 0,
        download: Annotated[
            bool, typer.Option(help="Download and verify each version's model bytes once.")
        ] = False,
        virtual: Annotated[
            bool,
            typer.Option(
                help="Virtual time: run as fast as the hub answers (the hub's clock does not "
                "follow). Without it the clock is MODELFLEET_SIM_CLOCK's, or real time.",
            ),
        ] = False,
        trust_root: Annotated[
            Path | None, typer.Option(help="Pin this trust-root bundle (default: ask the hub).")
        ] = None,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print the summary as JSON.")
        ] = False,
    ) -> None:
        """Simulate a fleet against a real hub: enrol, check in, verify and apply desired
        states, send telemetry windows, with faults per cohort; print a summary."""
        from modelfleet.cli.agent_cmds import sim_clock
        from modelfleet.clock import Clock, ManualClock, SystemClock
        from modelfleet.sim import FleetSimulator, SimConfig, Traffic, parse_duration, parse_faults

        specs = list(fault or [])
        if not 0.0 <= offline <= 1.0:
            raise UsageError("--offline is a share of the devices, from 0 to 1")
        if offline:
            specs.append(f"fraction={offline}:offline_for={offline_for}:offline_at={offline_at}")
        try:
            faults = parse_faults(specs)
            seconds = parse_duration(duration, "--duration")
            bundle = trust_root.read_bytes() if trust_root is not None else None
            config = SimConfig(
                hub_url=hub,
                token=_token(token, token_file),
                devices=devices,
                prefix=prefix,
                site=site,
                sites=sites,
                tags=tuple(tags or ()),
                poll_s=poll_s,
                window_s=window_s,
                faults=tuple(faults),
                traffic=Traffic(rps=rps),
                concurrency=concurrency,
                seed=seed,
                download=download,
                trust_root=bundle,
            )
        except OSError as e:
            raise UsageError(f"cannot read --trust-root {trust_root}: {e.strerror or e}") from e
        except InvalidInputError as e:
            raise UsageError(str(e)) from e
        scaled = sim_clock(os.environ)
        if virtual and scaled is not None:
            raise UsageError("--virtual and MODELFLEET_SIM_CLOCK contradict each other")
        clock: Clock = scaled or (ManualClock(datetime.now(UTC)) if virtual else SystemClock())
        printer = _progress_printer(json_out)
        with FleetSimulator(config, clock, progress=printer) as fleet:
            if not json_out:
                err_console.print(f"enrolling {devices} devices at {hub} …")
            fleet.enrol()
            fleet.run_for(seconds)
            summary = fleet.summary()
        if err_console.is_terminal:
            err_console.print()
        if json_out:
            print_json(summary)
            return
        rows = [(m, v, n) for m, per in summary["serving"].items() for v, n in per.items()]
        table("devices per version (production+candidate)", ["model", "version", "devices"], rows)
        key_values("simulation", {k: summary[k] for k in _SHOWN})
        if summary["last_errors"]:
            console.print("last errors:\n  " + "\n  ".join(summary["last_errors"]))
        sys.stdout.flush()
