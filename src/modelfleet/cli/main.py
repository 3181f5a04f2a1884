"""The ``modelfleet`` command.

Client commands talk to the hub over its REST API (``--hub``/``--token`` or
``MODELFLEET_HUB``/``MODELFLEET_TOKEN``); each prints a table, or JSON with ``--json``.
Errors print one line on stderr and exit with the codes of :class:`ExitCode`
(see :mod:`modelfleet.cli._errors`). This module imports no hub or scikit-learn library
at import time: the agent-only install (``pip install modelfleet``) runs it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from modelfleet import __version__
from modelfleet.cli import (
    agent_cmds,
    audit_cmds,
    bundle_cmds,
    credential_cmds,
    demo_cmd,
    drift_cmds,
    keys_cmds,
    release_cmds,
    return_cmds,
    review_cmds,
    sim_cmd,
    site_cmds,
    tuf_client_cmd,
    webhook_cmds,
)
from modelfleet.cli._deploy_wait import (
    DeployWaitError,
    DeviceWait,
    WaitState,
    describe_laggards,
    wait_states,
)
from modelfleet.cli._errors import ExitCode, UsageError, report_failure, require_extra
from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt, hub_client
from modelfleet.cli._output import console, err_console, key_values, print_json, table
from modelfleet.cli._plan_file import parse_duration
from modelfleet.cli._polling import poll
from modelfleet.cli._rollout_view import duration_text
from modelfleet.cli.rollout_cmds import rollout_app
from modelfleet.errors import InvalidInputError, NotFoundError

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelfleet",
    help="Ship ML models to fleets of edge devices and keep them healthy there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
hub_app = typer.Typer(help="Run the hub (control plane).", no_args_is_help=True)
device_app = typer.Typer(help="Enroll and list devices.", no_args_is_help=True)
model_app = typer.Typer(help="Register and inspect models.", no_args_is_help=True)
agent_app = typer.Typer(help="Run and inspect the device agent.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(device_app, name="device")
app.add_typer(model_app, name="model")
app.add_typer(agent_app, name="agent")
app.add_typer(rollout_app, name="rollout")
app.add_typer(bundle_cmds.bundle_app, name="bundle")  # issue 11

HUB_MODULES = ("fastapi", "sqlalchemy", "alembic", "uvicorn")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"modelfleet {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Ship ML models to fleets of edge devices and keep them healthy there."""


def _client(hub: str, token: str, token_file: Path | None = None) -> Any:
    return hub_client(hub, token, token_file)


# -- init and hub --------------------------------------------------------------------------


@app.command("init")
def init_cmd(
    home: Annotated[Path, typer.Argument(help="Folder for the new hub home.")],
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            envvar="MODELFLEET_DATABASE_URL",
            help="SQLAlchemy URL of the hub's database, e.g. "
            "postgresql+psycopg://user@db.example/modelfleet (default: SQLite in HOME). "
            "Written into HOME/config.toml.",
            show_default=False,
        ),
    ] = "",
    passphrase_file: keys_cmds.PassphraseFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a hub home: config, database, artefact store, TUF keys and metadata.

    With a passphrase (--passphrase-file or $MODELFLEET_KEY_PASSPHRASE) the key files are
    encrypted at rest; the hub then needs the same passphrase to start."""
    scheme = database_url.partition("://")[0] if database_url else ""
    if database_url and "://" not in database_url:
        raise UsageError(f"--database-url is not a URL: {_hide_password(database_url)!r}")
    if scheme in ("postgres", "postgresql"):
        raise UsageError(
            "--database-url: name the driver, postgresql+psycopg://… (psycopg 3 comes with "
            "modelfleet[hub])"
        )
    require_extra("hub", *HUB_MODULES, what="`modelfleet init`")
    if scheme.startswith("postgresql+psycopg"):
        require_extra("hub", "psycopg", what="a PostgreSQL database")
    from modelfleet.hub.service import init_home

    passphrase = keys_cmds.read_passphrase(passphrase_file, os.environ)
    token = init_home(home, database_url=database_url or None, key_passphrase=passphrase)
    database = _hide_password(database_url) if database_url else home / "hub.db"
    if json_out:
        print_json({"home": str(home), "database": str(database), "admin_token": token})
        return
    console.print(f"[green]Initialised hub home[/] {home}")
    key_values(
        None,
        {
            "config": home / "config.toml",
            "database": database,
            "artefact store": home / "artefacts",
            "TUF keys (ed25519)": f"{home / 'keys'}"
            + (" (encrypted)" if passphrase else " (unencrypted: give a passphrase)"),
            "trust root for agents": home / "trust-root.json",
        },
    )
    console.print("\nAdmin API token (shown once; also in admin.token, mode 0600):")
    console.print(f"  [bold]{token}[/]")


@hub_app.command("serve")
def hub_serve(
    home: Annotated[Path, typer.Option("--home", help="Hub home made by `modelfleet init`.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8700,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="MODELFLEET_LOG_FORMAT",
            help="text | json (one object a line; uvicorn's access and error lines too).",
        ),
    ] = "text",
    controller_interval_s: Annotated[
        float,
        typer.Option(
            "--controller-interval-s",
            min=0.01,
            max=3600.0,
            help="Seconds (hub clock) between rollout controller ticks; on PostgreSQL only "
            "the hub process holding the controller lease ticks.",
        ),
    ] = 5.0,
    no_controller: Annotated[
        bool,
        typer.Option("--no-controller", help="Run no rollout controller in this process."),
    ] = False,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="Log a line per request (off: fleet check-in rates)."),
    ] = False,
    webhook_interval_s: Annotated[
        float,
        typer.Option(
            "--webhook-interval-s",
            min=0.01,
            max=3600.0,
            help="Seconds (hub clock) between webhook delivery rounds.",
        ),
    ] = 5.0,
    no_webhooks: Annotated[
        bool,
        typer.Option("--no-webhooks", help="Send no webhooks from this process."),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option("--tls", help="Serve HTTPS with HOME/tls/hub.pem and hub.key (hub tls-init)."),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="Serve HTTPS with this certificate chain (PEM)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="The private key (PEM) of --tls-cert."),
    ] = None,
) -> None:
    """Serve the hub's REST API, TUF repositories and dashboard."""
    from modelfleet.errors import ConfigError
    from modelfleet.telemetry.logs import configure_logging, parse_log_format

    try:
        fmt = parse_log_format(log_format)
    except ConfigError as e:
        raise UsageError(f"--log-format: {e}") from e
    require_extra("hub", *HUB_MODULES, what="`modelfleet hub serve`")
    tls_files = _tls_files(home, tls, tls_cert, tls_key)
    configure_logging(fmt, "info", {"service": "hub"})
    from modelfleet.hub.app import serve

    serve(
        home,
        host=host,
        port=port,
        clock=agent_cmds.sim_clock(os.environ),
        controller_interval_s=0.0 if no_controller else controller_interval_s,
        webhook_interval_s=0.0 if no_webhooks else webhook_interval_s,
        access_log=access_log,
        tls=tls_files,
    )


def _tls_files(
    home: Path, tls: bool, cert: Path | None, key: Path | None
) -> tuple[Path, Path] | None:
    """The certificate and key ``hub serve`` is told to use, checked readable."""
    from modelfleet.hub.tls_setup import hub_tls_files

    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls and cert is not None:
        raise UsageError("--tls uses HOME/tls; give either it or --tls-cert/--tls-key")
    if tls:
        files = hub_tls_files(home)
        if not files.exist():
            raise UsageError(
                f"--tls: no {files.cert} and {files.key}; create them with "
                f"`modelfleet hub tls-init --home {home} --host NAME`"
            )
        cert, key = files.cert, files.key
    if cert is None or key is None:
        return None
    for path in (cert, key):
        if not path.is_file():
            raise UsageError(f"TLS file {path} does not exist")
    return cert, key


@hub_app.command("tls-init")
def hub_tls_init(
    home: Annotated[Path, typer.Option("--home", help="Hub home made by `modelfleet init`.")],
    host: Annotated[
        list[str],
        typer.Option("--host", help="A DNS name or IP address devices reach the hub by (repeat)."),
    ],
    days: Annotated[
        int, typer.Option(min=1, max=3650, help="Days the hub's certificate is valid.")
    ] = 825,
    as_json: JsonOpt = False,
) -> None:
    """Create a CA and the hub's TLS certificate in HOME/tls (for `hub serve --tls`);
    devices pin the CA with `agent run --hub-ca HOME/tls/ca.pem`."""
    from datetime import UTC, datetime

    from modelfleet.errors import ConfigError
    from modelfleet.hub.tls_setup import create_hub_tls

    if not (home / "config.toml").is_file():
        raise UsageError(f"{home} is not a hub home (run `modelfleet init --home {home}`)")
    try:
        files, fingerprint = create_hub_tls(home, host, datetime.now(UTC), days)
    except ConfigError as e:  # a bad --host, or files already there: the command line's fault
        raise UsageError(str(e)) from e
    out = {
        "ca_cert": str(files.ca_cert),
        "ca_key": str(files.ca_key),
        "cert": str(files.cert),
        "key": str(files.key),
        "ca_sha256": fingerprint,
        "hosts": host,
    }
    if as_json:
        print_json(out)
        return
    console.print(f"[green]✓[/] hub certificate for {', '.join(host)} in {files.cert.parent}")
    console.print(f"  CA certificate (copy to devices): {files.ca_cert}")
    console.print(f"  CA SHA-256: {fingerprint}")
    console.print(f"  move {files.ca_key} offline; serve with `modelfleet hub serve --tls`")


# -- devices -------------------------------------------------------------------------------


@device_app.command("add")
def device_add(
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    site: Annotated[str, typer.Option(help="Site (plant, store) the device is in.")] = "",
    tags: Annotated[str, typer.Option(help="Comma-separated tags.")] = "",
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll a device and print its device token."""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    result = _client(hub, token, token_file).add_device(device_id, site=site or None, tags=tag_list)
    if json_out:
        print_json(result)
        return
    console.print(f"[green]Enrolled device[/] {device_id}")
    console.print(f"Device token (shown once): [bold]{result['token']}[/]")


@device_app.command("list")
def device_list(
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List enrolled devices and what they last reported."""
    devices = _client(hub, token, token_file).list_devices()
    if json_out:
        print_json(devices)
        return
    rows = []
    for d in devices:
        tel = d.get("telemetry") or {}
        rows.append(
            (
                d.get("id"),
                d.get("site"),
                d.get("tags"),
                d.get("last_seen"),
                _seconds(tel.get("lag_s")),
                tel.get("buffered"),
                _desired(d.get("assignments")),
                _served(d.get("report")),
            )
        )
    table(
        "Devices",
        ["id", "site", "tags", "last seen", "telemetry lag", "buffered", "desired", "serving"],
        rows,
    )


@device_app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Recent records to show.")] = 20,
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one device, its telemetry stream and its recent telemetry records."""
    client = _client(hub, token, token_file)
    device = client.get_device(device_id)
    windows = client.device_windows(device_id, limit=limit)
    if json_out:
        print_json({"device": device, "windows": windows})
        return
    tel = device.get("telemetry") or {}
    key_values(
        f"Device {device.get('id')}",
        {
            "site": device.get("site"),
            "tags": device.get("tags"),
            "last seen": device.get("last_seen"),
            "director metadata expires": (
                (device.get("director") or {}).get("timestamp") or {}
            ).get("expires"),
            "desired": _desired(device.get("assignments")),
            "serving": _served(device.get("report")),
            "telemetry last batch": tel.get("last_at"),
            "telemetry lag": _seconds(tel.get("lag_s")),
            "buffered on device": tel.get("buffered"),
            "evicted on device": tel.get("evicted_total"),
            "clock skew": _seconds(tel.get("clock_skew_s"))
            + (" (flagged)" if tel.get("skew_flagged") else ""),
            "highest seq": tel.get("highest_seq"),
        },
    )
    table(
        "Recent telemetry (newest first)",
        ["seq", "kind", "model", "version", "role", "device time", "requests", "received"],
        [
            (
                w.get("seq"),
                w.get("kind"),
                w.get("model"),
                w.get("version"),
                w.get("role") or w.get("event"),
                w.get("closed_at") or w.get("at"),
                w.get("requests"),
                w.get("received_at"),
            )
            for w in windows
        ],
    )


def _seconds(value: Any) -> str:
    """``12.3 s``, ``4.5 h``, ``-3.1 d`` for a number of seconds; ``-`` for none."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(value) >= 2 * size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.1f} s"


def _hide_password(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host`` (for printing)."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


def _desired(assignments: Any) -> str:
    """The director's word for a device, as one line (compare with what it serves)."""
    if not isinstance(assignments, list):
        return "-"
    parts = []
    for a in assignments:
        text = f"{a.get('model')} v{a.get('production')}"
        if a.get("candidate"):
            text += f" + v{a['candidate']} ({a.get('mode')} {a.get('share', 0):.0%})"
        parts.append(text)
    return "; ".join(parts) or "-"


def _served(report: Any) -> str:
    if not isinstance(report, dict):
        return "-"
    parts = []
    for name, slots in (report.get("models") or {}).items():
        active = (slots.get("active") or {}).get("version")
        cand = (slots.get("candidate") or {}).get("version")
        text = f"{name} v{active}"
        if cand:
            text += f" + v{cand} ({slots.get('mode')} {slots.get('share', 0):.0%})"
        parts.append(text)
    return "; ".join(parts) or "-"


# -- models --------------------------------------------------------------------------------


def _parse_decisions(items: list[str]) -> dict[str, dict[str, Any]] | None:
    """``OUTPUT=KIND[:RTOL]`` options as the API's ``decisions`` object.

    Raises:
        UsageError: a malformed item or tolerance.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        output, sep, spec = item.partition("=")
        kind, _, rtol = spec.partition(":")
        if not sep or not output or not kind:
            raise UsageError(f"--decision wants OUTPUT=KIND[:RTOL], got {item!r}")
        entry: dict[str, Any] = {"kind": kind}
        if rtol:
            try:
                entry["rtol"] = float(rtol)
            except ValueError:
                raise UsageError(f"--decision tolerance is not a number: {rtol!r}") from None
        out[output] = entry
    return out or None


@model_app.command("register")
def model_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[
        Path,
        typer.Argument(
            help="ONNX model file, or a pickled fitted scikit-learn model (.pkl, .pickle, "
            ".joblib; only files you trust: unpickling runs code) converted with skl2onnx."
        ),
    ],
    sample_input: Annotated[
        Path | None,
        typer.Option(
            "--sample-input",
            help=".npy or .csv array of example inputs (rows); required for a pickle.",
        ),
    ] = None,
    decision: Annotated[
        list[str] | None,
        typer.Option(
            "--decision",
            help="What an output decides, OUTPUT=KIND[:RTOL] (KIND: label, argmax, regression, "
            "ignore); shadow disagreement compares decisions. Repeatable; default inferred.",
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Reference rows for drift (.npy, .npz, .csv with a header, .parquet with "
            "pyarrow): profiled with the model's outputs on them and signed into the "
            "package. Without it drift is not computed.",
        ),
    ] = None,
    categorical: Annotated[
        str | None,
        typer.Option("--categorical", help="Categorical reference columns, COL,COL,..."),
    ] = None,
    anomaly_scorer: Annotated[
        Path | None,
        typer.Option(
            "--anomaly-scorer",
            help="ONNX model scoring the model's input, one score per row (e.g. an "
            "IsolationForest via skl2onnx), signed into the package; agents score answered "
            "requests with it (an 'anomaly' histogram per window, review sampling).",
        ),
    ] = None,
    anomaly_output: Annotated[
        str | None,
        typer.Option("--anomaly-output", help="The scorer's score output (default: scores)."),
    ] = None,
    anomaly_threshold: Annotated[
        float,
        typer.Option("--anomaly-threshold", help="Raw score where rows turn anomalous."),
    ] = 0.0,
    anomaly_higher: Annotated[
        bool,
        typer.Option(
            "--anomaly-higher-is-anomalous/--anomaly-lower-is-anomalous",
            help="Score direction (IsolationForest: lower is anomalous, the default).",
        ),
    ] = False,
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register FILE as the next immutable version of NAME."""
    decisions = _parse_decisions(decision or [])
    if not file.is_file():
        raise UsageError(f"no such file: {file}")
    if sample_input is not None and not sample_input.is_file():
        raise UsageError(f"no such file: {sample_input}")
    if reference is not None and not reference.is_file():
        raise UsageError(f"no such file: {reference}")
    if anomaly_scorer is not None and not anomaly_scorer.is_file():
        raise UsageError(f"no such file: {anomaly_scorer}")
    cats = [c.strip() for c in (categorical or "").split(",") if c.strip()]
    if cats and reference is None:
        raise UsageError("--categorical needs --reference")
    model: Path | Any = file
    if file.suffix.lower() in SKLEARN_SUFFIXES:
        if sample_input is None:
            raise UsageError("a scikit-learn pickle needs --sample-input to be converted to ONNX")
        model = _load_sklearn_pickle(file)
    client = _client(hub, token, token_file)
    with _spinner(f"uploading and checking {file.name}"):
        result = client.register_version(
            name,
            model,
            sample_input=sample_input,
            decisions=decisions,
            reference=reference,
            categorical=cats,
            anomaly_scorer=anomaly_scorer,
            anomaly_output=anomaly_output,
            anomaly_threshold=anomaly_threshold,
            anomaly_higher_is_anomalous=anomaly_higher,
        )
    if json_out:
        print_json(result)
        return
    console.print(f"[green]Registered[/] {name} version {result['version']}")
    _print_version(result)
    drift = result.get("drift") or {}
    if drift.get("message"):
        digest = drift.get("reference_profile")
        console.print(
            f"Drift: {drift['message']}" + (f" (profile {digest})" if digest else ""),
            highlight=False,
        )


@contextlib.contextmanager
def _spinner(text: str) -> Iterator[None]:
    """A spinner on a terminal; nothing when stderr is a pipe (it would leave a blank line)."""
    if not err_console.is_terminal:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True
    ) as progress:
        progress.add_task(text, total=None)
        yield


SKLEARN_SUFFIXES = (".pkl", ".pickle", ".joblib")


def _load_sklearn_pickle(path: Path) -> Any:
    """Unpickle a fitted estimator (the operator's own file) for skl2onnx."""
    what = "registering a scikit-learn pickle"
    require_extra("sklearn", "sklearn", "skl2onnx", what=what)
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            return joblib.load(path)
        import pickle

        with path.open("rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
        raise InvalidInputError(f"cannot unpickle {path}: {e}") from e


def _print_version(v: dict[str, Any]) -> None:
    key_values(
        None,
        {
            "model": v.get("model") or v.get("name"),
            "version": v.get("version"),
            "sha256": v.get("sha256"),
            "size (bytes)": v.get("length"),
            "opset": v.get("opset"),
            "smoke vectors": v.get("smoke_vectors"),
            "registered": v.get("created_at"),
        },
    )
    schema = v.get("schema") or {}
    rows = [("input", t["name"], t["datatype"], t["shape"]) for t in schema.get("inputs", [])]
    rows += [("output", t["name"], t["datatype"], t["shape"]) for t in schema.get("outputs", [])]
    if rows:
        table("Schema", ["", "name", "datatype", "shape"], rows)
    deployed = v.get("deployments") or []
    if deployed:
        table(
            "Deployed",
            ["device", "role", "mode", "share"],
            [(d.get("device_id"), d.get("role"), d.get("mode"), d.get("share")) for d in deployed],
        )


@model_app.command("list")
def model_list(
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List registered models."""
    models = _client(hub, token, token_file).list_models()
    if json_out:
        print_json(models)
        return
    table(
        "Models",
        ["name", "versions", "latest", "created"],
        [
            (m.get("name"), m.get("versions"), m.get("latest_version"), m.get("created_at"))
            for m in models
        ],
    )


@model_app.command("set")
def model_set(
    name: Annotated[str, typer.Argument(help="Model name.")],
    safety_classified: Annotated[
        bool | None,
        typer.Option(
            "--safety-classified/--no-safety-classified",
            help="Safety-classified: its rollouts need a change ticket, a second person's "
            "approval (approver role), the change window, and lag other sites' stable stage.",
            show_default=False,
        ),
    ] = None,
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change a model's settings (publisher or admin)."""
    if safety_classified is None:
        raise UsageError("nothing to set: give --safety-classified or --no-safety-classified")
    result = _client(hub, token, token_file).set_model(name, safety_classified=safety_classified)
    if json_out:
        print_json(result)
        return
    flag = result.get("safety_classified", safety_classified)
    console.print(f"[green]{name}[/] is {'' if flag else 'not '}safety-classified")


@model_app.command("show")
def model_show(
    ref: Annotated[str, typer.Argument(metavar="NAME[:VERSION]")],
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a model's versions, or one version in detail."""
    client = _client(hub, token, token_file)
    name, _, version = ref.partition(":")
    if version:
        if not version.isdigit():
            raise UsageError(f"version must be a number, got {version!r}")
        data = client.get_version(name, int(version))
        if json_out:
            print_json(data)
            return
        _print_version(data)
        return
    data = client.get_model(name)
    if json_out:
        print_json(data)
        return
    console.print(f"[bold]{name}[/]")
    table(
        "Versions",
        ["version", "sha256", "opset", "created", "deployed on"],
        [
            (
                v.get("version"),
                str(v.get("sha256", ""))[:16],
                v.get("opset"),
                v.get("created_at"),
                [d.get("device_id") for d in v.get("deployments") or []],
            )
            for v in data.get("versions", [])
        ],
    )


# -- deploy and rollback -------------------------------------------------------------------


def _parse_slo(text: str) -> dict[str, float]:
    slo: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            slo[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--slo expects key=value pairs, got {item!r}") from None
    return slo


@app.command("deploy")
def deploy_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to deploy.")],
    devices: Annotated[str, typer.Option("--devices", help="Comma-separated device ids.")] = "",
    all_devices: Annotated[bool, typer.Option("--all", help="Every enrolled device.")] = False,
    mode: Annotated[str, typer.Option(help="full | split | shadow")] = "full",
    share: Annotated[float, typer.Option(help="Share of requests for split/shadow (0-1).")] = 0.1,
    slo: Annotated[str, typer.Option(help="Local guard, e.g. p99_ms=100,error_rate=0.01")] = "",
    ticket: Annotated[str, typer.Option(help="Change ticket recorded in the audit log.")] = "",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Then wait until every device reports serving the version; exit 1 naming "
            "the laggards on timeout, or as soon as a device refuses it or rolls it back.",
        ),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", help="How long --wait waits: 90, 30s, 10m (default), 1h."),
    ] = None,
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign NAME:VERSION into the catalog and the devices' desired state into the director."""
    device_list_ = [d.strip() for d in devices.split(",") if d.strip()]
    if bool(device_list_) == all_devices:
        raise UsageError("give either --devices ID,ID… or --all")
    if timeout is not None and not wait:
        raise UsageError("--timeout is how long --wait waits: give --wait too")
    timeout_s = parse_duration(timeout or "10m", "--timeout")
    if mode not in ("full", "split", "shadow"):
        raise UsageError(f"--mode must be full, split or shadow, not {mode!r}")
    if not 0.0 <= share <= 1.0:
        raise UsageError("--share must be between 0 and 1")
    client = _client(hub, token, token_file)
    result = client.deploy(
        name,
        version,
        devices=None if all_devices else device_list_,
        all_devices=all_devices,
        mode=mode,
        share=share if mode != "full" else 0.0,
        slo=_parse_slo(slo),
        ticket=ticket or None,
    )
    if wait:
        _wait_for_deploy(client, result, timeout_s, json_out)
        return
    if json_out:
        print_json(result)
        return
    _print_deployed(result)


def _print_deployed(result: Mapping[str, Any]) -> None:
    name, version, mode = result.get("model"), result.get("version"), result.get("mode")
    console.print(
        f"[green]Deployed[/] {name} v{version} ({mode}) — signed into catalog and director"
    )
    rows = [
        (
            d.get("device_id"),
            d.get("production"),
            d.get("candidate"),
            d.get("mode"),
            d.get("share"),
            d.get("serial"),
        )
        for d in result.get("devices", [])
    ]
    table("Desired state", ["device", "production", "candidate", "mode", "share", "serial"], rows)


_WAIT_POLL_S = 1.0
_FEW_DEVICES = 20


def _device_views(client: Any, result: Mapping[str, Any]) -> list[Any]:
    """The hub's views of the deploy's devices: one by one for a few (a large fleet's
    whole list is megabytes), else the whole list; a device deleted meanwhile is left out."""
    ids = [str(d.get("device_id")) for d in result.get("devices") or []]
    if len(ids) > _FEW_DEVICES:
        views: list[Any] = client.list_devices()
        return views
    views = []
    for device_id in ids:
        try:
            views.append(client.get_device(device_id))
        except NotFoundError:
            continue
    return views


def _wait_for_deploy(
    client: Any, result: Mapping[str, Any], timeout_s: float, json_out: bool
) -> None:
    """Poll the hub's device views until every device of ``result`` serves it.

    Raises:
        DeployWaitError: a device refused or rolled back the version, the hub assigns it
            something else now, or ``timeout_s`` passed first.
    """
    name, version = result.get("model"), result.get("version")
    total = len(result.get("devices") or [])
    started = time.monotonic()
    if not json_out:
        _print_deployed(result)
    with _wait_display(total, f"waiting for {name} v{version}", quiet=json_out) as show:

        def fetch() -> list[DeviceWait]:
            return wait_states(result, _device_views(client, result))

        polled = poll(
            fetch,
            lambda states: (
                all(s.state is WaitState.SERVING for s in states)
                or any(s.state.failed for s in states)
            ),
            show=lambda states, error: show(
                sum(s.state is WaitState.SERVING for s in states), error
            ),
            interval_s=_WAIT_POLL_S,
            now=time.monotonic,
            sleep=time.sleep,
            timeout_s=timeout_s,
        )
    states = polled.value
    serving = sum(s.state is WaitState.SERVING for s in states)
    failed = [s for s in states if s.state.failed]
    if json_out:
        print_json(
            {
                **result,
                "wait": {
                    "serving": serving,
                    "total": total,
                    "timed_out": not polled.done,
                    "devices": [
                        {"device_id": s.device_id, "state": s.state.value, "detail": s.detail}
                        for s in states
                    ],
                },
            }
        )
    if serving == total:
        if not json_out:
            took = time.monotonic() - started
            console.print(f"[green]All {total} devices serve[/] {name} v{version} ({took:.1f} s)")
        return
    if not json_out:
        table(
            f"Not serving {name} v{version}",
            ["device", "state", "detail"],
            [
                (s.device_id, s.state.value, s.detail)
                for s in states
                if s.state is not WaitState.SERVING
            ],
        )
    if failed:
        raise DeployWaitError(
            f"{len(failed)} of {total} devices will not serve {name} v{version}: "
            + describe_laggards(failed)
        )
    raise DeployWaitError(
        f"{total - serving} of {total} devices do not serve {name} v{version} after "
        f"{duration_text(timeout_s)}: {describe_laggards(states)}"
    )


@contextlib.contextmanager
def _wait_display(
    total: int, text: str, *, quiet: bool
) -> Iterator[Callable[[int, Exception | None], None]]:
    """A progress bar on a terminal; a line per change when piped; nothing with --json."""
    if quiet:
        yield lambda done, error: None
        return
    if not console.is_terminal:
        last: list[int] = []

        def line(done: int, error: Exception | None) -> None:
            if error is not None:
                console.print(f"{text}: hub unreachable, retrying: {error}", soft_wrap=True)
            elif last != [done]:
                last[:] = [done]
                console.print(f"{text}: {done}/{total} devices serving")

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(text, total=total)

        def bar(done: int, error: Exception | None) -> None:
            note = " (hub unreachable, retrying)" if error is not None else ""
            progress.update(task, completed=done, description=text + note)

        yield bar


@app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    devices: Annotated[str, typer.Option("--devices", help="Comma-separated device ids.")] = "",
    all_devices: Annotated[bool, typer.Option("--all", help="Every device running it.")] = False,
    hub: HubOpt = "http://127.0.0.1:8700",
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Assign devices back to their previous production version (a new director assignment)."""
    device_list_ = [d.strip() for d in devices.split(",") if d.strip()]
    if bool(device_list_) == all_devices:
        raise UsageError("give either --devices ID,ID… or --all")
    result = _client(hub, token, token_file).rollback(
        name, devices=None if all_devices else device_list_, all_devices=all_devices
    )
    if json_out:
        print_json(result)
        return
    console.print(f"[yellow]Rolled back[/] {name}")
    rows = [
        (d.get("device_id"), d.get("production"), d.get("candidate"), d.get("serial"))
        for d in result.get("devices", [])
    ]
    table("Desired state", ["device", "production", "candidate", "serial"], rows)


audit_cmds.register(app, _client)
drift_cmds.register(app, _client)
review_cmds.register(app, _client)
webhook_cmds.register(app, _client)
keys_cmds.register(app)  # issue 10: keys
release_cmds.register(app, model_app, _client)  # issue 10: approvals
credential_cmds.register(device_app, _client)  # issue 10
return_cmds.register(bundle_cmds.bundle_app)  # issue 11: bundle report, bundle ingest
return_cmds.register_device_key(device_app)  # issue 11
site_cmds.register(app)  # issue 11: site mirror


# -- agent ---------------------------------------------------------------------------------

agent_cmds.register(agent_app)
return_cmds.register_agent_key(agent_app)  # issue 11
demo_cmd.register(app)
sim_cmd.register(app)
tuf_client_cmd.register(app)  # issue 10: tuf-conformance client CLI


def _wants_json(args: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """``--json`` among the options (not after ``--``), or JSON logs (``--log-format json``,
    ``MODELFLEET_LOG_FORMAT=json``): errors are JSON then too, so that a log collector reading
    stderr line by line never meets a plain-text line."""
    options = list(args[: args.index("--")] if "--" in args else args)
    if "--json" in options:
        return True
    fmt = (environ if environ is not None else os.environ).get("MODELFLEET_LOG_FORMAT", "")
    for i, arg in enumerate(options):
        if arg == "--log-format" and i + 1 < len(options):
            fmt = options[i + 1]
        elif arg.startswith("--log-format="):
            fmt = arg.partition("=")[2]
    return fmt.strip().lower() == "json"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the CLI and exit with a code of :class:`ExitCode`.

    Every error, usage errors included, is one line on stderr (one JSON object with
    ``--json``); no Python traceback unless ``MODELFLEET_TRACEBACK=1``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="modelfleet", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as e:
        sys.exit(report_failure(e, json_errors=_wants_json(args)))
    # Without standalone mode, typer returns the code of a ``typer.Exit`` instead of exiting.
    sys.exit(result if isinstance(result, int) else ExitCode.OK)
