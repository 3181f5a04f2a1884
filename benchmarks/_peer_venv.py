"""A peer's own virtual environment under ``.bench/`` (git-ignored), built with pip.

Peers we measure against (MLServer for serving, Evidently for drift) are never dependencies
of modelfleet: each benchmark builds its peer's venv when it is missing or broken, with the
same three steps (venv, pip upgrade, the pinned requirements) and an import check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["build_venv", "imports_work", "venv_python"]


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    return venv / "bin" / "python"


def imports_work(
    venv: Path, modules: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> bool:
    """Whether ``venv``'s python imports every one of ``modules`` (with ``env``, if given)."""
    try:
        done = subprocess.run(
            [str(venv_python(venv)), "-c", "import " + ", ".join(modules)],
            capture_output=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def build_venv(
    venv: Path,
    requirements: Sequence[str],
    log: Path,
    name: str,
    unavailable: type[Exception],
) -> None:
    """(Re)create ``venv`` with ``requirements`` installed; pip's output goes to ``log``.

    Raises:
        unavailable: creating the venv or a pip step failed or timed out (the message
            names the step and ``log``).
    """
    print(f"creating {name}'s virtual environment in {venv} (pip; log in {log}) ...", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    log.parent.mkdir(parents=True, exist_ok=True)
    python = venv_python(venv)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *requirements],
    ]
    with log.open("w") as out:
        for step in steps:
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise unavailable(f"{' '.join(step)} failed: {e}") from e
            if done.returncode != 0:
                raise unavailable(f"{' '.join(step)} exited with {done.returncode}; see {log}")
