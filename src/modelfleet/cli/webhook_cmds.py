"""``modelfleet webhook add | list | remove | deliveries | test`` (issue 9, ADR 0021).

* ``add URL [--kind K]... [--description D]``: subscribe; prints the signing secret once.
* ``list``: subscriptions with their delivery counts.
* ``remove ID``: delete a subscription, its deliveries and their log.
* ``deliveries ID [--state pending|delivered|dead] [--limit N]``: the delivery log.
* ``test ID``: send one signed ``webhook.test`` event now; exit 1 when it was not a 2xx.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import ExitCode
from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt
from modelfleet.cli._output import console, err_console, print_json, table

__all__ = ["register"]

#: ``(hub, token, token_file) -> HubClient``: the main module's.
ClientFactory = Callable[[str, str, Path | None], Any]


def _counts(counts: dict[str, int] | None) -> str:
    c = counts or {}
    return ", ".join(f"{c.get(k, 0)} {k}" for k in ("pending", "delivered", "dead"))


def register(app: typer.Typer, client: ClientFactory) -> None:
    """Attach the ``webhook`` group to ``app``."""
    webhook_app = typer.Typer(
        help="Send the hub's events (drift state changes, full review queues) to a URL.",
        no_args_is_help=True,
    )
    app.add_typer(webhook_app, name="webhook")

    @webhook_app.command("add")
    def webhook_add(
        url: Annotated[str, typer.Argument(metavar="URL", help="http(s) URL to POST events to.")],
        kind: Annotated[
            list[str] | None,
            typer.Option(
                "--kind",
                help="Only this event kind (repeat; default every kind): "
                "drift.state_changed, review.queue_full, overrides.state_changed.",
            ),
        ] = None,
        description: Annotated[str, typer.Option("--description", help="What it is for.")] = "",
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Subscribe a URL to the hub's events (admin); prints the signing secret once."""
        result = client(hub, token, token_file).add_webhook(url, kind or [], description)
        if json_out:
            print_json(result)
            return
        kinds = ", ".join(result["kinds"]) or "every kind"
        console.print(f"[green]Added webhook[/] {result['id']}: {result['url']} ({kinds})")
        console.print("Signing secret (shown once; verify X-Modelfleet-Signature with it):")
        console.print(f"  [bold]{result['secret']}[/]", soft_wrap=True)

    @webhook_app.command("list")
    def webhook_list(
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List webhook subscriptions and their delivery counts."""
        hooks = client(hub, token, token_file).list_webhooks()
        if json_out:
            print_json(hooks)
            return
        table(
            "Webhooks",
            ["id", "url", "kinds", "deliveries", "created", "by"],
            [
                (
                    h["id"],
                    h["url"],
                    ", ".join(h["kinds"]) or "all",
                    _counts(h.get("counts")),
                    h["created_at"],
                    h["created_by"],
                )
                for h in hooks
            ],
        )

    @webhook_app.command("remove")
    def webhook_remove(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove a subscription with its deliveries and their log (admin)."""
        result = client(hub, token, token_file).remove_webhook(webhook_id)
        if json_out:
            print_json(result)
            return
        console.print(f"[yellow]Removed webhook[/] {result['id']}: {result['url']}")

    def _set_enabled(
        webhook_id: int,
        enabled: bool,
        hub: str,
        token: str,
        token_file: Path | None,
        json_out: bool,
    ) -> None:
        result = client(hub, token, token_file).set_webhook_enabled(webhook_id, enabled)
        if json_out:
            print_json(result)
            return
        what = "[green]Resumed[/]" if enabled else "[yellow]Paused[/]"
        console.print(f"{what} webhook {result['id']}: {result['url']}")

    @webhook_app.command("disable")
    def webhook_disable(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Pause a subscription: nothing is queued or sent until `webhook enable` (admin)."""
        _set_enabled(webhook_id, False, hub, token, token_file, json_out)

    @webhook_app.command("enable")
    def webhook_enable(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Resume a paused subscription; it gets the events it missed (admin)."""
        _set_enabled(webhook_id, True, hub, token, token_file, json_out)

    @webhook_app.command("redrive")
    def webhook_redrive(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        delivery: Annotated[
            list[int] | None,
            typer.Option("--delivery", min=1, help="A dead delivery's id (repeat); default all."),
        ] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Send dead deliveries again from attempt one (admin)."""
        result = client(hub, token, token_file).redrive_webhook(webhook_id, delivery or ())
        if json_out:
            print_json(result)
            return
        ids = result["redriven"]
        if not ids:
            console.print(f"No dead deliveries of webhook {webhook_id} to send again")
            return
        console.print(
            f"[green]Sending again[/] {len(ids)} deliveries of webhook {webhook_id}: "
            + ", ".join(str(i) for i in ids)
        )

    @webhook_app.command("deliveries")
    def webhook_deliveries(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        state: Annotated[
            str | None, typer.Option("--state", help="pending | delivered | dead")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show a subscription's deliveries, newest first, with their attempts."""
        rows = client(hub, token, token_file).webhook_deliveries(webhook_id, state, limit)
        if json_out:
            print_json(rows)
            return
        table(
            f"Deliveries of webhook {webhook_id} (newest first)",
            ["id", "event", "kind", "subject", "state", "attempts", "last", "next attempt"],
            [
                (
                    d["id"],
                    d["event_id"],
                    d["kind"],
                    d["subject"],
                    d["state"],
                    d["attempts"],
                    d.get("last_error") or d.get("last_status_code"),
                    d.get("next_attempt_at") or d.get("delivered_at"),
                )
                for d in rows
            ],
        )

    @webhook_app.command("test")
    def webhook_test(
        webhook_id: Annotated[int, typer.Argument(metavar="ID", min=1)],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Send one signed webhook.test event now (admin); exit 1 unless it got a 2xx."""
        result = client(hub, token, token_file).test_webhook(webhook_id)
        if json_out:
            print_json(result)
        elif result["ok"]:
            console.print(
                f"[green]delivered[/]: HTTP {result['status_code']} in "
                f"{result['duration_ms']:.0f} ms (event {result['event_id']})"
            )
        else:
            err_console.print(
                f"[red]not delivered[/]: {result.get('error') or result.get('status_code')}",
                soft_wrap=True,
            )
        if not result["ok"]:
            raise typer.Exit(ExitCode.ERROR)
