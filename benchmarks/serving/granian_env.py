"""granian (a Rust HTTP server for ASGI apps) for the HTTP stack comparison.

Not a project dependency: installed with pip into a git-ignored folder
(``.bench/granian-pkgs``, ``pip install --target``) that only the benchmark's granian server
process puts on its ``PYTHONPATH``; it runs on the project's interpreter and packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class GranianUnavailable(RuntimeError):
    """granian could not be installed."""


def _importable(target: Path) -> bool:
    code = f"import sys; sys.path.insert(0, {str(target)!r}); import granian"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    return done.returncode == 0


def ensure_granian(target: Path, log: Path) -> Path:
    """Install granian into ``target`` when it is not there yet; return ``target``.

    Raises:
        GranianUnavailable: pip failed (details in ``log``).
    """
    if target.exists() and _importable(target):
        return target
    print(f"installing granian into {target} (pip --target) ...", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "granian"]
    with log.open("w") as out:
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GranianUnavailable(f"pip failed: {e}") from e
    if done.returncode != 0 or not _importable(target):
        raise GranianUnavailable(f"pip could not install granian; see {log}")
    return target


def version(target: Path) -> str:
    """granian's version in ``target``."""
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); "
        "import importlib.metadata as m; print(m.version('granian'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else "unknown"
