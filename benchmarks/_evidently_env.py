"""Evidently in a virtual environment of its own, for the drift comparison (issue 9).

Evidently is never a dependency of modelfleet: like MLServer for the serving benchmark
(``benchmarks/serving/mlserver.py``), the benchmark creates ``.bench/evidently-venv``
(git-ignored) with pip when it is missing. pandas is held below 3: Evidently 0.7 does not
import with pandas 3 (``shared/research/anchors-measured.md``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

EVIDENTLY_REQUIREMENTS = ("evidently==0.7.21", "pandas<3")
#: Evidently phones home unless told not to; the worker runs with these set.
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}


class EvidentlyUnavailable(RuntimeError):
    """Evidently's virtual environment could not be created or does not work."""


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log: Path) -> Path:
    """Create ``venv`` with Evidently when it is missing or broken; return its python.

    Raises:
        EvidentlyUnavailable: venv creation or pip failed (no network, say; details in
            ``log``).
    """
    python = venv_python(venv)
    if python.exists() and _works(venv):
        return python
    print(f"creating Evidently's virtual environment in {venv} (pip; log in {log}) ...", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *EVIDENTLY_REQUIREMENTS],
    ]
    with log.open("w") as out:
        for step in steps:
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise EvidentlyUnavailable(f"{' '.join(step)} failed: {e}") from e
            if done.returncode != 0:
                raise EvidentlyUnavailable(
                    f"{' '.join(step)} exited with {done.returncode}; see {log}"
                )
    if not _works(venv):
        raise EvidentlyUnavailable(f"Evidently does not import in {venv}; see {log}")
    return python


def _works(venv: Path) -> bool:
    try:
        done = subprocess.run(
            [str(venv_python(venv)), "-c", "import evidently, pandas, numpy"],
            capture_output=True,
            timeout=300,
            env={**NO_TELEMETRY, "PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def versions(python: Path) -> dict[str, str]:
    """Versions of the key packages in Evidently's venv (empty when it cannot tell)."""
    code = (
        "import json, importlib.metadata as m\n"
        "print(json.dumps({n: m.version(n) for n in "
        "('evidently', 'pandas', 'numpy', 'scipy', 'scikit-learn')}))"
    )
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    import json

    loaded: dict[str, str] = json.loads(done.stdout)
    return loaded
