"""``modelfleet audit log | verify | export`` (issue 8).

* ``log``: newest first, ``--limit`` per page, ``--before SEQ`` for the next page (the
  footer prints the command for it), filters ``--since`` (RFC 3339 or ``2h``-style,
  relative to now), ``--subject``, ``--actor``, ``--action``.
* ``verify``: the hub checks its chain against the signed head and its checkpoint file;
  exits 1 naming the first problem (edited, inserted, deleted, truncated, ...).
* ``export --out FILE``: the signed head, then every entry up to it, as JSON Lines, written
  atomically; ``scripts/verify_audit_chain.py FILE`` checks it without modelfleet.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import ExitCode, UsageError
from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt
from modelfleet.cli._output import console, err_console, print_json, table
from modelfleet.errors import InvalidInputError

__all__ = ["parse_since", "register"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: ``(hub, token, token_file) -> HubClient``: the main module's, so every command shares
#: one token handling.
ClientFactory = Callable[[str, str, Path | None], Any]


def parse_since(value: str, now: datetime) -> datetime:
    """``--since``: RFC 3339 (a time without an offset is UTC) or a duration before ``now``
    such as ``90s``, ``30m``, ``2h``, ``7d``, ``1w``.

    Raises:
        UsageError: neither.
    """
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {value!r} is neither an RFC 3339 time (2026-12-02T10:00:00Z) "
            "nor a duration such as 30m, 2h or 7d"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _write_atomically(path: Path, lines: Any) -> int:
    """Write the byte lines to ``path`` via a temporary file in its folder; return bytes."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot write --out {path}: {e.strerror or e}") from e
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for line in lines:
                f.write(line)
                size += len(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


def register(app: typer.Typer, client: ClientFactory) -> None:
    """Attach ``audit log|verify|export`` to ``app`` as the ``audit`` group."""
    audit_app = typer.Typer(help="Read, verify and export the audit log.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @audit_app.command("log")
    def audit_log(
        limit: Annotated[
            int, typer.Option("--limit", min=1, max=100_000, help="Entries per page.")
        ] = 50,
        before: Annotated[
            int | None,
            typer.Option("--before", min=1, help="Only entries before this seq (next page)."),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option("--since", help="RFC 3339 time, or a duration ago: 30m, 2h, 7d."),
        ] = None,
        subject: Annotated[
            str | None,
            typer.Option("--subject", help="This subject and those below it (iris: iris/3)."),
        ] = None,
        actor: Annotated[str | None, typer.Option("--actor", help="Exactly this actor.")] = None,
        action: Annotated[str | None, typer.Option("--action", help="Exactly this action.")] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show the audit log, newest first, one page at a time."""
        since_at = parse_since(since, datetime.now(UTC)) if since is not None else None
        page = client(hub, token, token_file).audit_page(
            limit=limit,
            before_seq=before,
            since=since_at.isoformat() if since_at else None,
            subject=subject,
            actor=actor,
            action=action,
        )
        if json_out:
            print_json({"entries": page["entries"], "next_before_seq": page.get("next_before_seq")})
            return
        table(
            "Audit log (newest first)",
            ["seq", "at", "actor", "action", "subject", "ticket"],
            [
                (e["seq"], e["at"], e["actor"], e["action"], e["subject"], e.get("ticket"))
                for e in page["entries"]
            ],
        )
        cursor = page.get("next_before_seq")
        if cursor is not None:
            console.print(
                f"more: modelfleet audit log --before {cursor} (with the same filters)",
                soft_wrap=True,
            )

    @audit_app.command("verify")
    def audit_verify(
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Check the hash chain against its signed head: any edit, insertion, deletion or
        truncation fails (exit 1) naming the first bad entry."""
        report = client(hub, token, token_file).audit_verify()
        if json_out:
            print_json(report)
        elif report["ok"]:
            head = report["head"]
            key = (report.get("keyid") or "none")[:16]
            console.print(
                f"[green]audit chain intact[/]: {report['entries']} entries, head seq "
                f"{head['seq']} hash {head['hash'][:16]}…, signed head (key {key}…)",
                soft_wrap=True,
            )
        else:
            p = report["problem"]
            err_console.print(
                f"[red]audit chain broken[/] at entry {p['seq']} ({p['kind']}): {p['detail']}",
                soft_wrap=True,  # one line, however narrow the terminal
            )
        if not report["ok"]:
            raise typer.Exit(ExitCode.ERROR)

    @audit_app.command("export")
    def audit_export(
        out: Annotated[Path, typer.Option("--out", help="File to write (JSON Lines).")],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Export the chain up to its signed head (verify it with
        scripts/verify_audit_chain.py FILE)."""
        from modelfleet.audit.export import entry_line, header_line

        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; name a file")
        hub_client = client(hub, token, token_file)
        anchor = hub_client.audit_anchor()
        checkpoint = anchor.get("checkpoint")
        if checkpoint is None:
            raise InvalidInputError("the hub's audit log has no head yet; nothing to export")
        count = 0

        def lines() -> Any:
            nonlocal count
            yield header_line(anchor, datetime.now(UTC))
            for entry in hub_client.iter_audit(int(checkpoint["seq"])):
                count += 1
                yield entry_line(entry)

        size = _write_atomically(out, lines())
        result = {"out": str(out), "entries": count, "head": checkpoint, "bytes": size}
        if json_out:
            print_json(result)
            return
        console.print(
            f"exported {count} entries (head seq {checkpoint['seq']}) to {out}; check it "
            f"with: python scripts/verify_audit_chain.py {out}",
            soft_wrap=True,
        )
