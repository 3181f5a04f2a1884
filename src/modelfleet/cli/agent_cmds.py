"""``modelfleet agent run | status | rollback``."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelfleet.cli._errors import UsageError, require_extra
from modelfleet.cli._hub_options import HubCaOpt
from modelfleet.cli._output import console, err_console, key_values, print_json, table
from modelfleet.clock import Clock, parse_scaled_clock
from modelfleet.errors import (
    ConfigError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    TransportError,
)

__all__ = ["register"]

_log = logging.getLogger("modelfleet.cli.agent")

StateDirOpt = Annotated[Path, typer.Option("--state-dir", help="The agent's state folder.")]

#: The agent's token comes from here (never from MODELFLEET_TOKEN, the operator's token).
DEVICE_TOKEN_ENV = "MODELFLEET_DEVICE_TOKEN"
_MAX_TOKEN_FILE = 4096


def read_token_file(path: Path) -> str:
    """Read a token file safely: a regular file, not readable by group or others, small.

    Raises:
        ConfigError: missing, not a regular file, too open, too large or empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"token file {path} is readable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):o}): chmod 600 {path}"
            )
        data = f.read(_MAX_TOKEN_FILE + 1)
    if len(data) > _MAX_TOKEN_FILE:
        raise ConfigError(f"token file {path} is too large for a token")
    token = data.decode("utf-8", errors="replace").strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def configure_logging(level: str, fmt: str = "text", static: dict[str, Any] | None = None) -> None:
    """The agent's logging: what an operator needs at info, routine polling at debug.

    ``fmt`` is ``text`` or ``json`` (:mod:`modelfleet.telemetry.logs`; every JSON line
    carries ``static``, e.g. the device id). httpx logs every request at INFO: two lines
    per idle poll, one of them TUF's normal 404 for the next root, which reads as an error
    (issue 6, defect 7). Below debug the HTTP libraries only say what went wrong.

    Raises:
        ConfigError: an unknown format or level.
    """
    from modelfleet.telemetry.logs import configure_logging as configure
    from modelfleet.telemetry.logs import parse_log_format

    configure(parse_log_format(fmt), level, static)
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


def _stored_credential(
    state_dir: Path, device_id: str, token: str | None, token_file: Path | None
) -> str:
    """The credential ``modelfleet device enrol`` (or a renewal) wrote in ``state_dir``,
    when no token is given and none is in the environment; else ``""`` (issue 10).

    Raises:
        ConfigError: the stored credential is unreadable.
    """
    if token or token_file or os.environ.get(DEVICE_TOKEN_ENV):
        return ""
    from modelfleet.agent.credentials import CredentialStore

    stored = CredentialStore(state_dir).load()
    return stored.token if stored is not None and stored.device_id == device_id else ""


def resolve_device_token(
    token: str | None, token_file: Path | None, environ: dict[str, str]
) -> str:
    """The device token from ``--token-file``, ``--token`` or MODELFLEET_DEVICE_TOKEN.

    Issue 6, defect 3: the agent used to take MODELFLEET_TOKEN, which the walkthrough sets
    to the admin token. It never does now.

    Raises:
        ConfigError: none given, or more than one.
    """
    given = [x for x in (token, token_file) if x]
    if len(given) > 1:
        raise ConfigError("give the device token once: --token or --token-file")
    if token_file is not None:
        return read_token_file(token_file)
    if token:
        _log.warning(  # a log line: with --log-format json it is JSON like the others
            "--token is visible to every user in the process list; prefer --token-file or %s",
            DEVICE_TOKEN_ENV,
        )
        return token
    env = environ.get(DEVICE_TOKEN_ENV, "").strip()
    if env:
        return env
    hint = (
        " (MODELFLEET_TOKEN is the operator's token and is not used by the agent)"
        if environ.get("MODELFLEET_TOKEN")
        else ""
    )
    raise ConfigError(
        f"no device token: pass --token-file FILE or set {DEVICE_TOKEN_ENV} to the token "
        f"`modelfleet device add` printed{hint}"
    )


def _otlp_settings(endpoint: str, sample: float, interval_s: float) -> Any:
    """OTLP settings for ``--otlp-endpoint`` (None without it), the extra checked first.

    Raises:
        ModuleNotFoundError: the ``otel`` extra is missing (exit code 6).
        UsageError: a malformed endpoint, share or interval.
    """
    if not endpoint:
        return None
    from modelfleet.telemetry.otel import OTEL_MODULES, OtlpSettings

    require_extra("otel", *OTEL_MODULES, what="--otlp-endpoint")
    try:
        return OtlpSettings(endpoint, trace_sample=sample, metrics_interval_s=interval_s)
    except ConfigError as e:
        raise UsageError(str(e)) from e


#: Simulations and tests only: ``ORIGIN_EPOCH_S:RATE`` runs `agent run` and `hub serve` on a
#: scaled clock (:class:`~modelfleet.clock.ScaledClock`).
SIM_CLOCK_ENV = "MODELFLEET_SIM_CLOCK"

#: ``--telemetry-buffer-mb`` default (the buffer's own default).
DEFAULT_BUFFER_MB = 64.0


def sim_clock(environ: Mapping[str, str]) -> Clock | None:
    """The scaled clock ``MODELFLEET_SIM_CLOCK`` asks for, or None (the real clock).

    Raises:
        UsageError: the value is malformed.
    """
    spec = environ.get(SIM_CLOCK_ENV, "").strip()
    if not spec:
        return None
    try:
        return parse_scaled_clock(spec)
    except ValueError as e:
        raise UsageError(f"{SIM_CLOCK_ENV}: {e}") from e


def _version(rec: Any) -> str:
    return f"v{rec['version']}" if isinstance(rec, dict) else "-"


def _control(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads((state_dir / "control.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _call_agent(control: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    import httpx  # here: most commands never call an agent

    url = f"http://{control['host']}:{control['port']}{path}"
    headers = {"Authorization": f"Bearer {control['token']}"}
    try:
        r = httpx.request(method, url, headers=headers, json=body, timeout=10.0)
    except httpx.HTTPError as e:
        raise TransportError(f"the agent at {url} is not answering: {e}") from e
    if r.status_code >= 400:
        try:
            msg = r.json().get("error", r.text)
        except ValueError:
            msg = r.text
        if r.status_code == 400:
            raise InvalidInputError(msg)
        raise TransportError(f"agent answered {r.status_code}: {msg}")
    return r.json()


def print_status(status: dict[str, Any]) -> None:
    """Render an agent status dict for people."""
    desired = status.get("desired") or {}
    key_values(
        f"Agent {status.get('device_id')}",
        {
            "applied desired-state serial": status.get("applied_serial"),
            "last check": status.get("last_check") or "never",
            "last error": status.get("last_error") or "-",
            "update": status.get("update_status") or "-",
            "rollbacks not yet acknowledged by the hub": len(status.get("rollbacks") or []),
        },
    )
    rows = []
    for name, s in (status.get("models") or {}).items():
        rows.append(
            (
                name,
                _version(s.get("active")),
                _version(s.get("previous")),
                _version(s.get("candidate")),
                s.get("mode"),
                f"{s.get('share', 0):.0%}" if s.get("candidate") else "-",
            )
        )
    table("Slots", ["model", "active", "previous (kept)", "candidate", "mode", "share"], rows)
    wanted = []
    for a in desired.get("assignments", []):
        cand = a.get("candidate")
        wanted.append(
            (
                a["model"],
                f"v{a['production']['version']}",
                f"v{cand['version']}" if cand else "-",
                a.get("mode"),
                a.get("share"),
            )
        )
    if wanted:
        table(
            f"Desired state (serial {desired.get('serial')})",
            ["model", "production", "candidate", "mode", "share"],
            wanted,
        )
    meta = status.get("metadata")
    if isinstance(meta, dict):  # issue 11, ADR 0036 (only from a running agent)
        expires = meta.get("expires") or {}
        key_values(
            "Metadata",
            {
                "expired": (
                    f"YES: no new installs, serving continues ({meta.get('reason')})"
                    if meta.get("expired")
                    else "no"
                ),
                **{f"{repo} expires": at or "-" for repo, at in sorted(expires.items())},
                "time floor": meta.get("time_floor") or "-",
            },
        )
    tel = status.get("telemetry")
    if isinstance(tel, dict):
        key_values(
            "Telemetry buffer",
            {
                "records waiting": tel.get("records"),
                "bytes": f"{tel.get('bytes')} of {tel.get('max_bytes', '-')}",
                "appended (total)": tel.get("appended_total"),
                "evicted (total)": tel.get("evicted_total"),
                "last forward": tel.get("last_forward_at") or "never",
                "last error": tel.get("last_error") or "-",
                "appends failing": (
                    "YES (disk full?)"
                    if tel.get("append_failing")
                    else "no"
                    if "append_failing" in tel
                    else "-"
                ),
            },
        )
    refusal = status.get("last_refusal")
    if refusal:
        console.print(
            f"[red]Last refusal[/] {refusal['model']} v{refusal['version']} at {refusal['at']}: "
            f"{refusal['reason']}"
        )
    events = status.get("events") or []
    if events:
        table(
            "Recent events",
            ["at", "kind", "what"],
            [(e["at"], e["kind"], e["message"]) for e in events[-8:]],
        )


def register(agent_app: typer.Typer) -> None:
    """Attach the agent commands to ``agent_app``."""

    @agent_app.command("run")
    def agent_run(
        hub: Annotated[str, typer.Option("--hub", envvar="MODELFLEET_HUB", help="Hub URL.")],
        device_id: Annotated[str, typer.Option("--device-id", help="This device's id.")],
        state_dir: StateDirOpt,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                help=f"Device token (visible in `ps`: prefer --token-file or {DEVICE_TOKEN_ENV}).",
            ),
        ] = None,
        token_file: Annotated[
            Path | None,
            typer.Option("--token-file", help="File holding the device token (mode 600)."),
        ] = None,
        port: Annotated[int, typer.Option(help="Inference port (OIP v2).")] = 8080,
        host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
        poll_interval: Annotated[float, typer.Option(help="Seconds between update checks.")] = 10.0,
        trust_root: Annotated[
            Path | None, typer.Option(help="The hub's trust-root.json (pins TUF roots).")
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
        keep_previous: Annotated[
            bool, typer.Option(help="Keep the previous version loaded for instant rollback.")
        ] = True,
        request_timeout: Annotated[
            float, typer.Option(help="Seconds for a request body to arrive (else 503).")
        ] = 30.0,
        max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB.")] = 16.0,
        execution_provider: Annotated[
            list[str] | None,
            typer.Option(
                "--execution-provider",
                help="ONNX Runtime execution provider, in order of preference (repeatable; "
                "default CPUExecutionProvider).",
            ),
        ] = None,
        intra_op_threads: Annotated[
            int, typer.Option(help="ONNX Runtime threads within an operator (0: its choice).")
        ] = 1,
        inter_op_threads: Annotated[
            int, typer.Option(help="ONNX Runtime threads across operators (0: its choice).")
        ] = 1,
        upstream: Annotated[
            str,
            typer.Option(help="Cascade: OIP v2 server that answers what this device is unsure of."),
        ] = "",
        cascade_threshold: Annotated[
            float, typer.Option(help="Cascade: forward when top-class probability is below.")
        ] = 0.8,
        cascade_timeout_ms: Annotated[
            float, typer.Option(help="Cascade: wait this long for upstream, then answer locally.")
        ] = 500.0,
        cascade_when_unhealthy: Annotated[
            bool,
            typer.Option(help="Cascade: send everything upstream while the guard sees a breach."),
        ] = False,
        log_format: Annotated[
            str,
            typer.Option(
                "--log-format",
                envvar="MODELFLEET_LOG_FORMAT",
                help="text | json (one object a line with device_id, model, version, rollout_id).",
            ),
        ] = "text",
        otlp_endpoint: Annotated[
            str,
            typer.Option(
                "--otlp-endpoint",
                help="OpenTelemetry collector, OTLP/HTTP base URL (e.g. http://127.0.0.1:4318): "
                "request traces and key metrics go there (needs modelfleet[otel]).",
            ),
        ] = "",
        trace_sample: Annotated[
            float,
            typer.Option(help="Share of production requests traced (candidates: all), 0-1."),
        ] = 0.01,
        otlp_interval: Annotated[
            float, typer.Option(help="Seconds between OTLP metric exports.")
        ] = 60.0,
        telemetry_window_s: Annotated[
            float,
            typer.Option(
                "--telemetry-window-s",
                min=1.0,
                max=3600.0,
                help="Seconds per telemetry window (1 to 3600).",
            ),
        ] = 60.0,
        telemetry_buffer_mb: Annotated[
            float,
            typer.Option(
                "--telemetry-buffer-mb",
                min=0.0625,
                max=16384.0,
                help="Bound of the telemetry buffer in MiB (default: 72 h of windows for "
                "8 served versions).",
            ),
        ] = DEFAULT_BUFFER_MB,
        telemetry: Annotated[
            bool,
            typer.Option(help="Record telemetry windows and forward them to the hub."),
        ] = True,
        drift: Annotated[
            bool,
            typer.Option(
                help="Count answered requests into the reference profiles of the versions "
                "that have one (a 'profile' field in each telemetry window)."
            ),
        ] = True,
        drift_sketches: Annotated[
            bool,
            typer.Option(
                help="Add KLL sketches (for KS) to the drift counts: more CPU, and windows "
                "tens of KB larger."
            ),
        ] = False,
        review_budget: Annotated[
            int,
            typer.Option(
                "--review-budget",
                min=0,
                max=1 << 30,
                help="Bytes per day of sampled requests (inputs and outputs) from suspect "
                "windows sent to the hub's review queue; 0 (default): nothing is sampled.",
            ),
        ] = 0,
        hardware: Annotated[
            list[str] | None,
            typer.Option(
                "--hardware",
                help="A hardware tag this device declares (repeat), e.g. arm64; a package "
                "whose signed target needs a tag not declared is refused (issue 10).",
            ),
        ] = None,
        hub_ca: HubCaOpt = None,
        from_folder: Annotated[
            Path | None,
            typer.Option(
                "--from-folder",
                help="Update from this folder (an imported media bundle, a mounted stick) "
                "instead of the hub; verified exactly as from the hub. Needs --trust-root.",
                show_default=False,
            ),
        ] = None,
        pull_window_s: Annotated[
            float,
            typer.Option(
                "--pull-window-s",
                min=0.0,
                max=7 * 86400.0,
                help="Spread the download of a new desired state over this many seconds "
                "(a deterministic offset per device; 0: at once). Issue 11.",
            ),
        ] = 0.0,
        off_shift: Annotated[
            str,
            typer.Option(
                "--off-shift",
                help="Start such downloads inside this daily UTC period, HH:MM-HH:MM "
                "(e.g. 22:00-06:00, may wrap past midnight); without --pull-window-s the "
                "whole period is the window.",
                show_default=False,
            ),
        ] = "",
        max_rate_mbps: Annotated[
            float | None,
            typer.Option(
                "--max-rate-mbps",
                min=0.01,
                max=8_000_000.0,
                help="This device's bandwidth budget for downloads, megabits per second "
                "(default: unlimited); below 0.5 the download deadlines assume half of it.",
                show_default=False,
            ),
        ] = None,
        max_resumes: Annotated[
            int,
            typer.Option(
                "--max-resumes",
                min=0,
                max=100,
                help="How many times one download cut mid-way is continued with an HTTP "
                "Range request (0: never); a download cut short is kept and continued "
                "after a restart too. Issue 11.",
            ),
        ] = 5,  # DownloadSettings.max_resumes' default (not imported at CLI start-up)
    ) -> None:
        """Run the device daemon: verify and apply updates, serve OIP v2."""
        from modelfleet.agent.config import AgentConfig
        from modelfleet.agent.daemon import run_agent
        from modelfleet.agent.review import ReviewSettings
        from modelfleet.serving.cascade import CascadeSettings
        from modelfleet.serving.model import RuntimeSettings

        runtime = RuntimeSettings(
            providers=tuple(execution_provider or ("CPUExecutionProvider",)),
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        cascade = None
        if upstream:
            cascade = CascadeSettings(
                upstream.rstrip("/"),
                threshold=cascade_threshold,
                timeout_s=cascade_timeout_ms / 1000,
                when_unhealthy=cascade_when_unhealthy,
            )

        from modelfleet.delivery.http_fetcher import DownloadSettings
        from modelfleet.delivery.ratelimit import mbps_to_bytes_s
        from modelfleet.rollout.stagger import parse_off_shift

        try:
            shift = parse_off_shift(off_shift) if off_shift else None
        except ConfigError as e:
            raise UsageError(f"--off-shift: {e}") from e
        try:
            download = DownloadSettings(max_resumes=max_resumes)
            rate = mbps_to_bytes_s(max_rate_mbps)
            if rate is not None:
                # A budget below the default minimum rate lowers it (half the budget), so
                # the deadlines of a thin link stay consistent with its pace (ADR 0038).
                download = DownloadSettings(
                    min_rate_bytes_s=min(download.min_rate_bytes_s, rate / 2),
                    max_rate_bytes_s=rate,
                    max_resumes=max_resumes,
                )
        except ConfigError as e:
            raise UsageError(f"--max-rate-mbps: {e}") from e

        otlp = _otlp_settings(otlp_endpoint, trace_sample, otlp_interval)
        try:
            configure_logging(log_level, log_format, {"device_id": device_id})
        except ConfigError as e:
            raise UsageError(f"--log-format/--log-level: {e}") from e
        try:
            device_token = _stored_credential(state_dir, device_id, token, token_file)
            if not device_token:
                device_token = resolve_device_token(token, token_file, dict(os.environ))
        except ConfigError as e:
            err_console.print(f"[red]error:[/] {e}")
            sys.exit(2)
        config = AgentConfig(
            hub_url=hub.rstrip("/"),
            device_id=device_id,
            token=device_token,
            state_dir=state_dir,
            host=host,
            port=port,
            poll_interval=poll_interval,
            trust_root=trust_root,
            cascade=cascade,
            keep_previous_loaded=keep_previous,
            request_timeout_s=request_timeout,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            runtime=runtime,
            telemetry=telemetry,
            telemetry_window_s=telemetry_window_s,
            telemetry_buffer_bytes=int(telemetry_buffer_mb * 1024 * 1024),
            drift=drift,
            drift_sketches=drift_sketches,
            review=ReviewSettings(budget_bytes=review_budget),
            hardware=tuple(hardware or ()),
            hub_ca=hub_ca,
            update_folder=from_folder,
            download=download,
            pull_window_s=pull_window_s,
            off_shift=shift,
        )
        if from_folder is not None and not from_folder.is_dir():
            raise UsageError(f"--from-folder {from_folder}: not a folder")
        try:
            run_agent(config, sim_clock(os.environ), otlp=otlp)
        except ForbiddenError as e:  # contract 3: a token that is not this device's
            err_console.print(f"[red]error:[/] {e}")
            sys.exit(2)

    @agent_app.command("status")
    def agent_status(
        state_dir: StateDirOpt,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show active/previous versions, desired state and the last refusal."""
        from modelfleet.agent.state import read_state_file

        control = _control(state_dir)
        status: dict[str, Any] | None = None
        running = False
        if control is not None:
            try:
                status = _call_agent(control, "GET", "/agent/status")
                running = True
            except TransportError:
                status = None
        if status is None:
            status = read_state_file(state_dir)
        if status is None:
            raise NotFoundError(f"no agent state in {state_dir}")
        if not running:
            from modelfleet.agent.telemetry import BUFFER_FILE
            from modelfleet.telemetry.buffer import read_stats

            buffered = read_stats(state_dir / BUFFER_FILE)
            if buffered is not None:
                status["telemetry"] = buffered
        status["running"] = running
        if json_out:
            print_json(status)
            return
        print_status(status)
        if not running:
            err_console.print("(agent not running: showing the state saved on disk)")

    @agent_app.command("rollback")
    def agent_rollback(
        state_dir: StateDirOpt,
        reason: Annotated[str, typer.Option(help="Why (kept in the agent's events).")] = "operator",
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Switch back to the previous model (or drop the candidate); no download."""
        control = _control(state_dir)
        if control is None:
            raise NotFoundError(f"no running agent found in {state_dir} (control.json missing)")
        result = _call_agent(control, "POST", "/agent/rollback", {"reason": reason})
        if json_out:
            print_json(result)
            return
        for r in result.get("rolled_back", []):
            console.print(
                f"[yellow]Rolled back[/] {r['model']}: v{r['from']} -> v{r['to']} "
                "(previous model was kept warm; nothing downloaded)"
            )
