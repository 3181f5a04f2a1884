"""``modelfleet drift report | status | overrides`` (issue 9, ADR 0019, ADR 0040).

* ``report MODEL``: the explained drift of one version over a time range (``--since``:
  RFC 3339 or a duration ago such as ``2h``, default 24 h; ``--until``), at one ``--site``
  or all: the combined verdict and score, then one table row per column and test —
  feature, test, value, threshold, verdict — inputs first, then the outputs (prediction
  drift).
* ``status``: the sequential drift state of each model at each site.
* ``overrides``: the override-rate state of each model at each site (ADR 0040): the last
  hour's rate of the serving version against its baseline (the previous version's rate
  at the site, or the configured expected rate).

All take ``--json`` (the hub's answer as is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import UsageError
from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt
from modelfleet.cli._output import console, print_json, table
from modelfleet.cli.audit_cmds import parse_since

__all__ = ["override_rows", "register", "report_rows"]

#: ``(hub, token, token_file) -> HubClient`` (the main module's).
ClientFactory = Callable[[str, str, Path | None], Any]

#: The filters ``status`` and ``overrides`` share (``report`` takes the model as an
#: argument and its ``--site`` reads otherwise).
ModelFilterOpt = Annotated[str | None, typer.Option("--model", help="Only this model.")]
SiteFilterOpt = Annotated[str | None, typer.Option("--site", help="Only this site.")]


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _threshold(r: Mapping[str, Any]) -> str:
    """The threshold as the verdict reads it: a p-value test drifts below it."""
    op = "p <" if r.get("test") in ("chi_square", "ks") else "≥"
    return f"{op} {_num(r.get('threshold'))}"


def report_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per column and test: group, feature, test, value, threshold, p, verdict."""
    rows: list[tuple[str, ...]] = []
    for group in ("inputs", "outputs"):
        for f in report.get(group) or []:
            for r in f.get("results") or []:
                rows.append(
                    (
                        group,
                        str(f.get("feature")),
                        str(r.get("test")),
                        _num(r.get("value")),
                        _threshold(r),
                        _num(r.get("p_value")),
                        str(r.get("verdict")),
                    )
                )
    return rows


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


def override_rows(states: list[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """One row per (model, site): model, site, version, state, rate, judged, baseline (rate,
    whence), statistic, hours (counted / skipped), last hour."""
    rows: list[tuple[str, ...]] = []
    for s in states:
        b = s.get("baseline") or {}
        whence = f"v{b['version']}" if b.get("version") is not None else "expected"
        rows.append(
            (
                str(s["model"]),
                str(s["site"]),
                str(s["version"]),
                str(s["state"]),
                _pct(s.get("last_rate")),
                str(s.get("last_judged", 0)),
                f"{_pct(b.get('rate'))} ({whence})",
                _num(s.get("statistic")),
                f"{s.get('hours', 0)}/{s.get('skipped', 0)}",
                str(s.get("period") or "-"),
            )
        )
    return rows


def _filter(value: str | None, option: str) -> str | None:
    """A ``--model`` / ``--site`` filter: None, or 1 to 256 characters."""
    if value is not None and not 0 < len(value) <= 256:
        raise UsageError(f"{option} must be 1 to 256 characters")
    return value


def _when(value: str | None, now: datetime) -> str | None:
    """``--since`` / ``--until``: RFC 3339 or a duration before now, as ISO 8601."""
    return None if value is None else parse_since(value, now).isoformat()


def register(app: typer.Typer, client: ClientFactory) -> None:
    """Attach ``drift report|status|overrides`` to ``app`` as the ``drift`` group."""
    drift_app = typer.Typer(
        help="Drift of models in the field against their reference profiles.",
        no_args_is_help=True,
    )
    app.add_typer(drift_app, name="drift")

    @drift_app.command("report")
    def drift_report(
        model: Annotated[str, typer.Argument(help="The model.")],
        version: Annotated[
            int | None,
            typer.Option("--version", min=1, help="The version (default: most rows)."),
        ] = None,
        site: Annotated[str | None, typer.Option("--site", help="One site (default: all).")] = None,
        since: Annotated[
            str | None,
            typer.Option("--since", help="RFC 3339 time, or a duration ago: 30m, 2h, 7d."),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option("--until", help="RFC 3339 time, or a duration ago (exclusive)."),
        ] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Explain one version's drift: per column every test's value, threshold and
        verdict, inputs then outputs, and the combined verdict."""
        now = datetime.now(UTC)
        report = client(hub, token, token_file).drift_report(
            model,
            version=None if version is None else str(version),
            site=site,
            since=_when(since, now),
            until=_when(until, now),
        )
        if json_out:
            print_json(report)
            return
        where = report.get("site") or "all sites"
        console.print(
            f"{report['model']} version {report.get('version')} at {where}, "
            f"{report['since']} … {report['until']}: [bold]{report['verdict']}[/] "
            f"(score {_num(report.get('score'))}, {report.get('rows', 0)} rows, "
            f"{report.get('windows', 0)} windows)",
            soft_wrap=True,
        )
        if report.get("message"):
            console.print(report["message"], soft_wrap=True)
        if report.get("drifted"):
            console.print("drifting: " + ", ".join(report["drifted"]), soft_wrap=True)
        prediction = (report.get("prediction") or {}).get("verdict")
        if prediction is not None:
            console.print(f"prediction drift (outputs): {prediction}", soft_wrap=True)
        rows = report_rows(report)
        if rows:
            table(
                "Drift per column and test",
                ["group", "feature", "test", "value", "threshold", "p", "verdict"],
                rows,
            )
        if report.get("rule"):
            console.print(f"rule: {report['rule']}", soft_wrap=True)
        overrides = report.get("overrides") or {}
        if overrides.get("judged"):
            console.print(
                f"operator overrides: {overrides['overridden']} of {overrides['judged']} judged "
                f"answers ({_num(overrides.get('rate'))})",
                soft_wrap=True,
            )

    @drift_app.command("status")
    def drift_status(
        model: ModelFilterOpt = None,
        site: SiteFilterOpt = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The drift state (stable, warning, drifting) of each model at each site."""
        states = client(hub, token, token_file).drift_states(model, site)
        if json_out:
            print_json(states)
            return
        table(
            "Drift states",
            ["model", "site", "version", "state", "statistic", "last score", "hours", "last hour"],
            [
                (
                    s["model"],
                    s["site"],
                    s["version"],
                    s["state"],
                    _num(s["statistic"]),
                    _num(s["last_score"]),
                    s["windows"],
                    s["period"],
                )
                for s in states
            ],
        )

    @drift_app.command("overrides")
    def drift_overrides(
        model: ModelFilterOpt = None,
        site: SiteFilterOpt = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The override-rate state (stable, warning, drifting) of each model at each site:
        the share of judged answers humans overrode, against the previous version's."""
        states = client(hub, token, token_file).override_states(
            _filter(model, "--model"), _filter(site, "--site")
        )
        if json_out:
            print_json(states)
            return
        table(
            "Override-rate states",
            [
                "model",
                "site",
                "version",
                "state",
                "rate",
                "judged",
                "baseline",
                "statistic",
                "hours/skipped",
                "last hour",
            ],
            override_rows(states),
        )
