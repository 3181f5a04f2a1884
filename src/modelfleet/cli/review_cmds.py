"""``modelfleet review list | export | import-labels | metrics`` (issue 9).

* ``list``: the queue's samples (filters ``--model``, ``--version``, ``--site``,
  ``--status``, ``--since``), oldest first.
* ``export --format jsonl|label-studio [--out FILE]``: the samples with their inputs and
  outputs, as JSON Lines or Label Studio's import JSON (written atomically with ``--out``,
  else to stdout).
* ``import-labels FILE --format jsonl|label-studio``: JSONL lines ``{"sample_id",
  "label"}`` or Label Studio's JSON export.
* ``metrics MODEL [--by version|site|day]``: accuracy, precision and recall (macro) of the
  labelled samples against the model's answers.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modelfleet.cli._errors import UsageError
from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt
from modelfleet.cli._output import console, print_json, table
from modelfleet.cli.audit_cmds import ClientFactory, _write_atomically, parse_since

__all__ = ["register"]


class Format(StrEnum):
    jsonl = "jsonl"
    label_studio = "label-studio"


class Status(StrEnum):
    pending = "pending"
    labelled = "labelled"


class By(StrEnum):
    version = "version"
    site = "site"
    day = "day"


Model = Annotated[str | None, typer.Option("--model", help="Only this model.")]
Version = Annotated[str | None, typer.Option("--version", help="Only this version.")]
Site = Annotated[str | None, typer.Option("--site", help="Only this site.")]
Since = Annotated[
    str | None, typer.Option("--since", help="RFC 3339 time, or a duration ago: 2h, 7d.")
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def register(app: typer.Typer, client: ClientFactory) -> None:
    """Attach ``review list|export|import-labels|metrics`` to ``app`` as ``review``."""
    review_app = typer.Typer(
        help="The review queue: samples of suspect windows, labels, accuracy.",
        no_args_is_help=True,
    )
    app.add_typer(review_app, name="review")

    def since_iso(since: str | None) -> str | None:
        return None if since is None else parse_since(since, datetime.now(UTC)).isoformat()

    @review_app.command("list")
    def review_list(
        model: Model = None,
        version: Version = None,
        site: Site = None,
        status: Annotated[Status | None, typer.Option("--status")] = None,
        since: Since = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List review samples, oldest first."""
        rows = client(hub, token, token_file).review_list(
            model=model,
            version=version,
            site=site,
            status=None if status is None else status.value,
            since=since_iso(since),
            limit=limit,
        )
        if json_out:
            print_json(rows)
            return
        table(
            "Review samples",
            ["sample", "model", "version", "site", "at", "reasons", "anomaly", "answer", "label"],
            [
                (
                    r["sample_id"],
                    r["model"],
                    r["version"],
                    r["site"],
                    r["at"],
                    ",".join(r["reasons"]),
                    "-" if r["anomaly_score"] is None else f"{r['anomaly_score']:.3f}",
                    r.get("prediction") or "-",
                    r.get("label") or "-",
                )
                for r in rows
            ],
        )

    @review_app.command("export")
    def review_export(
        format: Annotated[Format, typer.Option("--format", help="jsonl or label-studio.")] = (
            Format.jsonl
        ),
        out: Annotated[Path | None, typer.Option("--out", help="Write here (atomically).")] = None,
        model: Model = None,
        version: Version = None,
        site: Site = None,
        status: Annotated[
            Status | None, typer.Option("--status", help="Default: pending.")
        ] = Status.pending,
        since: Since = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Export samples with their inputs and outputs for labelling."""
        body = client(hub, token, token_file).review_export(
            format.value,
            model=model,
            version=version,
            site=site,
            status=None if status is None else status.value,
            since=since_iso(since),
            limit=limit,
        )
        if out is None:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
            return
        size = _write_atomically(out, [body])
        if json_out:
            print_json({"out": str(out), "bytes": size, "format": format.value})
        else:
            console.print(f"wrote {size} bytes to {out} ({format.value})", highlight=False)

    @review_app.command("import-labels")
    def review_import(
        file: Annotated[Path, typer.Argument(help="The labels file.")],
        format: Annotated[Format, typer.Option("--format", help="jsonl or label-studio.")] = (
            Format.jsonl
        ),
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Import labels: JSONL lines {"sample_id", "label"} or Label Studio's JSON export."""
        try:
            body = file.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {file}: {e.strerror or e}") from e
        result = client(hub, token, token_file).review_import_labels(body, format.value)
        if json_out:
            print_json(result)
            return
        console.print(
            f"imported {result['imported']} labels; {result['unknown']} unknown samples, "
            f"{result['unlabelled']} entries without a label",
            highlight=False,
        )

    @review_app.command("metrics")
    def review_metrics(
        model: Annotated[str, typer.Argument(help="The model.")],
        by: Annotated[By, typer.Option("--by", help="version, site or day.")] = By.version,
        since: Since = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Accuracy, precision and recall (macro) of labelled samples."""
        result = client(hub, token, token_file).review_metrics(
            model, by.value, since=since_iso(since)
        )
        if json_out:
            print_json(result)
            return
        key = by.value
        table(
            f"{model}: labelled samples by {key}",
            [key, "n", "accuracy", "precision", "recall"],
            [
                (g[key], g["n"], _pct(g["accuracy"]), _pct(g["precision"]), _pct(g["recall"]))
                for g in result["groups"]
            ],
        )
        console.print(f"precision and recall: {result['averaging']}", highlight=False)
