"""``modelfleet tuf-client``: the tuf-conformance suite's client CLI (issue 10).

Implements ``CLIENT-CLI.md`` of theupdateframework/tuf-conformance::

    modelfleet tuf-client --metadata-dir DIR init TRUSTED_ROOT
    modelfleet tuf-client --metadata-dir DIR --metadata-url URL refresh
    modelfleet tuf-client --metadata-dir DIR --metadata-url URL --target-name PATH
        [--target-name PATH]... --target-base-url URL --target-dir DIR download

Built on the agent's own update code (:mod:`modelfleet.trust._ngclient`: the same
ngclient set-up, HTTP fetcher, one-pass verified download and error translation), so the
suite tests what devices run.

Exit codes, as the spec says: 0 when the command succeeded fully, 1 when any part failed
(the error is printed as one line on stderr, never a traceback). A command line that is
itself wrong (unknown option, a required option missing) exits 2 like every
``modelfleet`` usage error. ``init`` copies the trusted root into ``METADATA_DIR``
unchecked (the spec expects no checks, and no requests); ``refresh`` and ``download``
verify it. Metadata in ``METADATA_DIR`` is stored under non-versioned names
(``root.json``), as ngclient does; downloads go to ``TARGET_DIR/<URL-quoted target path>``
and are not fetched again while the cached file matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from modelfleet.cli._errors import ExitCode, UsageError, report_failure
from modelfleet.cli._output import print_json
from modelfleet.errors import InvalidInputError, ModelfleetError, StorageError

__all__ = ["register"]


@dataclass
class _Options:
    metadata_dir: Path
    metadata_url: str | None
    target_names: list[str]
    target_base_url: str | None
    target_dir: Path | None
    json_out: bool


def _done(opts: _Options, result: dict[str, object], text: str) -> None:
    if opts.json_out:
        print_json(result)
    else:
        typer.echo(text)


def _failed(opts: _Options, e: ModelfleetError) -> typer.Exit:
    """Print ``e`` as modelfleet prints errors; the spec wants exit code 1 for any failure."""
    report_failure(e, json_errors=opts.json_out)
    return typer.Exit(int(ExitCode.ERROR))


def _require(value: str | Path | None, option: str, command: str) -> str:
    if value is None or str(value) == "":
        raise UsageError(f"tuf-client {command} needs {option}")
    return str(value)


def register(app: typer.Typer) -> None:
    """Attach the ``tuf-client`` group to ``app``."""
    tuf_app = typer.Typer(
        help="TUF client for the tuf-conformance suite (init, refresh, download).",
        no_args_is_help=True,
    )
    app.add_typer(tuf_app, name="tuf-client")

    @tuf_app.callback()
    def _options(
        ctx: typer.Context,
        metadata_dir: Annotated[
            Path,
            typer.Option("--metadata-dir", help="Where trusted metadata is kept (root.json, …)."),
        ],
        metadata_url: Annotated[
            str | None, typer.Option("--metadata-url", help="The repository's metadata URL.")
        ] = None,
        target_name: Annotated[
            list[str] | None,
            typer.Option("--target-name", help="Target path to download (repeat, in order)."),
        ] = None,
        target_base_url: Annotated[
            str | None, typer.Option("--target-base-url", help="The repository's targets URL.")
        ] = None,
        target_dir: Annotated[
            Path | None, typer.Option("--target-dir", help="Where verified targets go.")
        ] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """TUF client CLI of the tuf-conformance suite, on the agent's update code."""
        ctx.obj = _Options(
            metadata_dir, metadata_url, target_name or [], target_base_url, target_dir, json_out
        )

    @tuf_app.command("init")
    def init(
        ctx: typer.Context,
        trusted_root: Annotated[
            Path, typer.Argument(metavar="TRUSTED_ROOT", help="File with the initial root.json.")
        ],
    ) -> None:
        """Trust TRUSTED_ROOT: copy it to METADATA_DIR/root.json (no network, no checks)."""
        opts: _Options = ctx.obj
        try:
            _init(opts.metadata_dir, trusted_root)
        except ModelfleetError as e:
            raise _failed(opts, e) from e
        _done(
            opts,
            {"initialized": str(opts.metadata_dir)},
            f"initialized trusted metadata in {opts.metadata_dir}",
        )

    @tuf_app.command("refresh")
    def refresh(ctx: typer.Context) -> None:
        """Update top-level metadata from METADATA_URL (the TUF client workflow)."""
        opts: _Options = ctx.obj
        url = _require(opts.metadata_url, "--metadata-url", "refresh")
        from modelfleet.trust.conformance import ConformanceClient

        try:
            with ConformanceClient(opts.metadata_dir, url) as client:
                versions = client.refresh()
        except ModelfleetError as e:
            raise _failed(opts, e) from e
        _done(
            opts,
            {"refreshed": str(opts.metadata_dir), "versions": versions},
            f"refreshed metadata in {opts.metadata_dir}",
        )

    @tuf_app.command("download")
    def download(ctx: typer.Context) -> None:
        """Refresh, then download each --target-name, verified, into TARGET_DIR."""
        opts: _Options = ctx.obj
        url = _require(opts.metadata_url, "--metadata-url", "download")
        base = _require(opts.target_base_url, "--target-base-url", "download")
        target_dir = Path(_require(opts.target_dir, "--target-dir", "download"))
        if not opts.target_names:
            raise UsageError("tuf-client download needs at least one --target-name")
        from modelfleet.trust.conformance import ConformanceClient

        done: list[dict[str, str]] = []
        try:
            with ConformanceClient(opts.metadata_dir, url, target_dir, base) as client:
                client.refresh()
                for name in opts.target_names:
                    path = client.download(name)
                    done.append({"target": name, "path": str(path)})
                    if not opts.json_out:
                        typer.echo(f"{name}: {path}")
        except ModelfleetError as e:
            raise _failed(opts, e) from e
        if opts.json_out:
            print_json({"downloaded": done})


def _init(metadata_dir: Path, trusted_root: Path) -> None:
    """Copy the trusted root into place (the spec: "no checks are expected").

    Raises:
        InvalidInputError: ``trusted_root`` cannot be read.
        StorageError: ``metadata_dir`` cannot be written.
    """
    try:
        data = trusted_root.read_bytes()
    except OSError as e:
        raise InvalidInputError(
            f"cannot read trusted root {trusted_root}: {e.strerror or e}"
        ) from e
    from modelfleet._atomic import atomic_write_bytes

    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(metadata_dir / "root.json", data)
    except OSError as e:
        raise StorageError(f"cannot write {metadata_dir}: {e.strerror or e}") from e
