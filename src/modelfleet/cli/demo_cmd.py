"""``modelfleet demo``: the whole loop on this machine, told as a story."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfleet.cli._errors import require_extra

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Attach ``demo`` to the main app."""

    @app.command("demo")
    def demo(
        workdir: Annotated[
            Path | None,
            typer.Option(help="Keep everything in this folder (default: a temporary one)."),
        ] = None,
        keep: Annotated[
            bool, typer.Option(help="Leave hub and agents running at the end.")
        ] = False,
    ) -> None:
        """Init a hub, start it and three agents, register, deploy, split, refuse, roll back."""
        what = "`modelfleet demo`"
        require_extra("hub", "fastapi", "sqlalchemy", "alembic", "uvicorn", what=what)
        require_extra("sklearn", "sklearn", "skl2onnx", what=what)
        from modelfleet.demo import run_demo

        ok = run_demo(workdir=workdir, keep=keep)
        raise typer.Exit(0 if ok else 1)
