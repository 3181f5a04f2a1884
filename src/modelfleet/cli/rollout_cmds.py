"""``modelfleet rollout create | list | status | pause | resume | promote | rollback | abort |
approve | evidence``: staged rollouts on the hub (``/api/v1/rollouts``, issue 8).

Each command prints a table, or the hub's JSON with ``--json``. ``status --watch`` redraws
the view in place on a terminal (one summary line per change when piped, one JSON object
per change with ``--json``) until the rollout ends: exit 0 when it completed, 1 when it was
rolled back or aborted; Ctrl-C stops watching and exits 0.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import typer

from modelfleet.cli._errors import UsageError
from modelfleet.cli._hub_options import (
    DEFAULT_HUB,
    HubOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    hub_client,
)
from modelfleet.cli._output import console, make_table, print_json
from modelfleet.cli._plan_file import check_plan, load_plan_file, plan_from_options, with_ticket
from modelfleet.cli._polling import poll
from modelfleet.cli._rollout_view import (
    change_key,
    is_terminal,
    render_plan,
    render_rollout,
    render_rollout_list,
    summary_line,
)
from modelfleet.errors import ModelfleetError, TransportError
from modelfleet.rollout.plan import FailurePolicy
from modelfleet.rollout.stages import RolloutState

__all__ = ["RolloutEndedBadlyError", "rollout_app"]

rollout_app = typer.Typer(
    help="Staged rollouts: cohorts of devices, gated on how the version behaves on them.",
    no_args_is_help=True,
)


class RolloutEndedBadlyError(ModelfleetError):
    """A watched rollout ended rolled back or aborted (``status --watch`` exits 1)."""


RolloutIdArg = Annotated[str, typer.Argument(metavar="ID", help="Rollout id (ro-…).")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why; recorded in the audit log.")]
TicketOpt = Annotated[
    str | None, typer.Option("--ticket", help="Change ticket recorded in the audit log.")
]
RepeatOpt = list[str] | None


def _split(values: list[str] | None) -> list[str]:
    """Repeatable options that also take comma-separated lists."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@rollout_app.command("create")
def create_cmd(
    model: Annotated[
        str | None, typer.Argument(metavar="MODEL", help="Model (without -f).")
    ] = None,
    version: Annotated[
        int | None, typer.Argument(metavar="VERSION", help="Version (without -f).")
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="Rollout plan, YAML (or JSON); - reads stdin."),
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every enrolled device.")] = False,
    site: Annotated[RepeatOpt, typer.Option("--site", help="Devices at this site.")] = None,
    tag: Annotated[RepeatOpt, typer.Option("--tag", help="Devices with every tag.")] = None,
    group: Annotated[RepeatOpt, typer.Option("--group", help="Devices in the group.")] = None,
    device: Annotated[RepeatOpt, typer.Option("--device", help="These device ids.")] = None,
    stages: Annotated[
        str | None,
        typer.Option("--stages", help="Cumulative percents, e.g. 1,9,90,100 (the default)."),
    ] = None,
    soak: Annotated[
        str | None,
        typer.Option("--soak", help="Soak of each stage below 100 %: 90, 30s, 30m, 1h, 2d."),
    ] = None,
    on_failure: Annotated[
        FailurePolicy | None,
        typer.Option("--on-failure", help="When a gate fails (default: rollback)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for people.")] = None,
    ticket: TicketOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the plan and show it; send nothing (no token)."),
    ] = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a rollout: from a plan file (-f plan.yaml), or MODEL VERSION and a target.

    Examples:
      modelfleet rollout create -f plan.yaml --ticket CHG-1234
      modelfleet rollout create iris 3 --site plant-a --tag line1 --soak 30m
    """
    flags = bool(all_devices or site or tag or group or device or stages or soak or on_failure)
    if file is not None:
        if model is not None or flags or name:
            raise UsageError(
                "give either -f PLAN or MODEL VERSION with target options, not both "
                "(the plan file holds the model, target and stages)"
            )
        doc = with_ticket(load_plan_file(file), ticket)
        source = "standard input" if file == "-" else file
    else:
        if model is None or version is None:
            raise UsageError("give -f PLAN, or MODEL VERSION and a target (--all, --site …)")
        doc = plan_from_options(
            model,
            version,
            all_devices=all_devices,
            sites=_split(site),
            tags=_split(tag),
            groups=_split(group),
            devices=_split(device),
            stages=stages,
            soak=soak,
            on_failure=on_failure.value if on_failure is not None else None,
            ticket=ticket,
            name=name,
        )
        source = "the plan from the options"
    plan = check_plan(doc, source)
    if dry_run:
        if json_out:
            print_json(plan.to_dict())
        else:
            console.print(render_plan(plan.to_dict()))
        return
    view = hub_client(hub, token, token_file).create_rollout(doc)
    if json_out:
        print_json(view)
        return
    console.print(f"[green]Created rollout[/] {view.get('id')}")
    console.print(render_rollout(view))
    if view.get("state") == "awaiting_approval":
        console.print(
            f"Waits for a second person with the approver role: "
            f"modelfleet rollout approve {view.get('id')}"
        )


@rollout_app.command("list")
def list_cmd(
    state: Annotated[
        RolloutState | None, typer.Option("--state", help="Only in this state.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only of this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most.")] = 50,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    rollouts = hub_client(hub, token, token_file).list_rollouts(
        state=state.value if state is not None else None, model=model, limit=limit
    )
    if json_out:
        print_json(rollouts)
        return
    console.print(render_rollout_list(rollouts))


@rollout_app.command("status")
def status_cmd(
    rollout_id: RolloutIdArg,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow it live until it ends (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes.")
    ] = 2.0,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a rollout: stage, soak left, devices per state, each gate's evidence."""
    client = hub_client(hub, token, token_file)
    if not watch:
        view = client.get_rollout(rollout_id)
        if json_out:
            print_json(view)
        else:
            console.print(render_rollout(view))
        return
    final = _watch(lambda: client.get_rollout(rollout_id), interval, json_out)
    if final is not None and final.get("state") in ("rolled_back", "aborted"):
        why = f": {final['reason']}" if final.get("reason") else ""
        raise RolloutEndedBadlyError(f"rollout {rollout_id} ended {final['state']}{why}")


class _WatchOutput:
    """Where ``status --watch`` shows each view: redrawn in place on a terminal (``live``),
    else one summary line (or one JSON object, ``json_out``) per change on stdout; a hub
    that does not answer is a note in the view, or a line on stderr."""

    def __init__(self, live: Any, json_out: bool) -> None:
        self._live = live
        self._json = json_out
        self._last: tuple[Any, ...] | None = None

    def show(self, view: dict[str, Any], error: TransportError | None) -> None:
        note = f"hub unreachable, retrying: {error}" if error else None
        if self._live is not None:
            self._live.update(render_rollout(view, note=note), refresh=True)
        elif error is not None:
            line = orjson.dumps({"warning": note}).decode() if self._json else f"warning: {note}"
            print(line, file=sys.stderr, flush=True)
        elif change_key(view) != self._last:
            self._last = change_key(view)
            if self._json:
                print(orjson.dumps(view).decode(), flush=True)
            else:
                console.print(f"{time.strftime('%H:%M:%S')} {summary_line(view)}", soft_wrap=True)


def _watch(
    fetch: Callable[[], dict[str, Any]], interval: float, json_out: bool
) -> dict[str, Any] | None:
    """Follow the view until the rollout is terminal; the last view, or None after Ctrl-C."""
    live_view = console.is_terminal and not json_out
    try:
        with contextlib.ExitStack() as stack:
            live = None
            if live_view:
                from rich.live import Live

                live = stack.enter_context(Live(console=console, auto_refresh=False))
            result = poll(
                fetch,
                is_terminal,
                show=_WatchOutput(live, json_out).show,
                interval_s=interval,
                now=time.monotonic,
                sleep=time.sleep,
            )
    except KeyboardInterrupt:
        return None
    if not live_view and not json_out:
        console.print(render_rollout(result.value))
    return result.value


def _action(command: str, past: str, doc: str) -> None:
    def action(
        rollout_id: RolloutIdArg,
        reason: ReasonOpt = None,
        ticket: TicketOpt = None,
        hub: HubOpt = DEFAULT_HUB,
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        view = hub_client(hub, token, token_file).rollout_command(
            rollout_id, command, reason=reason, ticket=ticket
        )
        if json_out:
            print_json(view)
            return
        console.print(f"[green]{past}[/] {view.get('id', rollout_id)}")
        console.print(summary_line(view), soft_wrap=True)

    action.__doc__ = doc
    action.__name__ = f"{command}_cmd"
    rollout_app.command(command)(action)


_action("pause", "Paused", "Hold the rollout where it is (the controller stops advancing it).")
_action("resume", "Resumed", "Let a paused rollout go on.")
_action("promote", "Promoted", "Start the next stage now, skipping the rest of this soak.")
_action(
    "rollback",
    "Rolled back",
    "Send every device of the rollout back to its previous version (pinned; no download).",
)
_action("abort", "Aborted", "Stop the rollout; devices keep what they run now.")
_action(
    "approve",
    "Approved",
    "Approve a safety-classified rollout (the approver role; not its creator).",
)


@rollout_app.command("evidence")
def evidence_cmd(
    rollout_id: RolloutIdArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most.")] = 20,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the stored gate evaluations of a rollout, newest first."""
    rows = hub_client(hub, token, token_file).rollout_evaluations(rollout_id, limit=limit)
    if json_out:
        print_json(rows)
        return

    def gates(row: dict[str, Any]) -> str:
        evidence = row.get("evidence")
        evaluation = evidence.get("evaluation") if isinstance(evidence, dict) else None
        results = evaluation.get("results") if isinstance(evaluation, dict) else None
        return ", ".join(
            f"{r.get('metric')} {r.get('verdict')}" for r in results or [] if isinstance(r, dict)
        )

    console.print(
        make_table(
            f"Gate evaluations of {rollout_id}",
            ["evaluated", "stage", "verdict", "gates"],
            [
                (
                    r.get("evaluated_at"),
                    r.get("stage_name") or r.get("stage"),
                    r.get("verdict"),
                    gates(r),
                )
                for r in rows
            ],
        )
    )
