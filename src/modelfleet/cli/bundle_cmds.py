"""The ``bundle`` command group (issue 11). Temporary on the return-channel branch: helper
MEDIA's version (``bundle export``, ``bundle import``) replaces this file at the merge, and
:func:`modelfleet.cli.return_cmds.register` adds ``bundle report`` and ``bundle ingest``."""

from __future__ import annotations

import typer

__all__ = ["bundle_app"]

bundle_app = typer.Typer(
    help="Removable-media bundles: updates in, reports and telemetry out.", no_args_is_help=True
)
