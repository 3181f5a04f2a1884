"""``modelfleet site serve`` (issue 11, ADR 0031): a caching site mirror for a plant's devices.

The mirror holds no signing keys: devices point their hub URL at it and verify what it
serves exactly as they verify the hub (:mod:`modelfleet.delivery.mirror`). A hub that cannot
be reached at start is fine: the cache is served meanwhile.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from modelfleet.cli._errors import UsageError
from modelfleet.cli._hub_options import JsonOpt
from modelfleet.cli._output import console, print_json

__all__ = ["register"]


def _read_token(token_file: Path | None) -> str | None:
    if token_file is None:
        return None
    try:
        token = token_file.read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read --token-file {token_file}: {e.strerror or e}") from e
    if not token:
        raise UsageError(f"--token-file {token_file} is empty")
    return token


#: What an offline mirror names as its hub (never contacted; RFC 6761 .invalid).
_OFFLINE_HUB = "http://hub.offline.invalid"


def register(app: typer.Typer) -> None:
    """Attach the ``site`` group (``site serve``) to ``app``."""
    site_app = typer.Typer(
        help="Run a site mirror: one WAN download per artefact for a whole plant.",
        no_args_is_help=True,
    )
    app.add_typer(site_app, name="site")

    @site_app.command("serve")
    def site_serve(
        cache: Annotated[
            Path, typer.Option("--cache", help="Cache folder (a site tree; created if absent).")
        ],
        hub: Annotated[
            str,
            typer.Option("--hub", envvar="MODELFLEET_HUB", help="The hub's URL (http/https)."),
        ] = "",
        offline: Annotated[
            bool,
            typer.Option(
                "--offline",
                help="No route to the hub: serve what `bundle import --mirror-cache` loaded; "
                "telemetry stays on the devices for `bundle report`.",
            ),
        ] = False,
        token_file: Annotated[
            Path | None,
            typer.Option(
                "--token-file",
                envvar="MODELFLEET_MIRROR_TOKEN_FILE",
                help="The mirror's own hub token (viewer or admin) for shared artefacts; "
                "without one the devices' tokens are used.",
                show_default=False,
            ),
        ] = None,
        hub_ca: Annotated[
            Path | None,
            typer.Option(
                "--hub-ca", help="PEM CA file the hub's TLS certificate is checked against."
            ),
        ] = None,
        host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8710,
        metadata_ttl_s: Annotated[
            float,
            typer.Option(
                "--metadata-ttl-s",
                min=0.0,
                max=3600.0,
                help="Seconds a fetched timestamp.json is served before the hub is asked again.",
            ),
        ] = 2.0,
        drain_interval_s: Annotated[
            float,
            typer.Option(
                "--drain-interval-s",
                min=0.05,
                max=3600.0,
                help="Seconds between sends of the buffered telemetry to the hub.",
            ),
        ] = 2.0,
        max_rate_mbps: Annotated[
            float | None,
            typer.Option(
                "--max-rate-mbps",
                min=0.01,
                max=8_000_000.0,
                help="The site's WAN budget: all upstream artefact downloads together are "
                "paced to this many megabits per second (default: unlimited).",
                show_default=False,
            ),
        ] = None,
        log_format: Annotated[
            str,
            typer.Option("--log-format", envvar="MODELFLEET_LOG_FORMAT", help="text | json."),
        ] = "text",
        json_out: JsonOpt = False,
    ) -> None:
        """Serve the hub's TUF repositories and device API from a local cache."""
        from modelfleet.errors import ConfigError
        from modelfleet.telemetry.logs import configure_logging, parse_log_format

        try:
            fmt = parse_log_format(log_format)
        except ConfigError as e:
            raise UsageError(f"--log-format: {e}") from e
        if offline and hub:
            raise UsageError("--offline takes no --hub: an offline mirror never calls the hub")
        if not offline and not hub:
            raise UsageError("give --hub URL, or --offline for a mirror fed by bundles")
        hub = hub or _OFFLINE_HUB
        if not hub.startswith(("http://", "https://")):
            raise UsageError(f"--hub must be an http:// or https:// URL, not {hub!r}")
        if hub_ca is not None and not hub_ca.is_file():
            raise UsageError(f"--hub-ca {hub_ca}: no such file")
        if hub_ca is not None and not hub.startswith("https://"):
            raise UsageError("--hub-ca is for an https:// hub")
        if cache.exists() and not cache.is_dir():
            raise UsageError(f"--cache {cache} is not a folder")
        token = _read_token(token_file)
        configure_logging(fmt, "info", {"service": "site-mirror"})

        import uvicorn

        from modelfleet.delivery.mirror import MirrorConfig, SiteMirror
        from modelfleet.delivery.ratelimit import mbps_to_bytes_s

        config = MirrorConfig(
            hub_url=hub,
            cache_dir=cache,
            token=token,
            hub_ca=hub_ca,
            metadata_ttl_s=metadata_ttl_s,
            drain_interval_s=drain_interval_s,
            offline=offline,
            max_rate_bytes_s=mbps_to_bytes_s(max_rate_mbps),
        )
        mirror = SiteMirror(config)
        url = f"http://{host}:{port}"
        if json_out:
            print_json({"url": url, "hub": None if offline else hub, "cache": str(cache)})
        elif offline:
            console.print(f"offline site mirror at {url} (cache {cache}, fed by bundles)")
        else:
            console.print(f"site mirror of {hub} at {url} (cache {cache})")
        sys.stdout.flush()
        uvicorn.run(
            mirror.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            log_config=None,
        )
