"""Evidently in a virtual environment of its own, for the drift comparison (issue 9).

Evidently is never a dependency of modelfleet: like MLServer for the serving benchmark
(``benchmarks/serving/mlserver.py``), the benchmark creates ``.bench/evidently-venv``
(git-ignored) with pip when it is missing. pandas is held below 3: Evidently 0.7 does not
import with pandas 3 (``shared/research/anchors-measured.md``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks._peer_venv import build_venv, imports_work, venv_python

EVIDENTLY_REQUIREMENTS = ("evidently==0.7.21", "pandas<3")
#: Evidently phones home unless told not to; the worker runs with these set.
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}


class EvidentlyUnavailable(RuntimeError):
    """Evidently's virtual environment could not be created or does not work."""


def ensure_venv(venv: Path, log: Path) -> Path:
    """Create ``venv`` with Evidently when it is missing or broken; return its python.

    Raises:
        EvidentlyUnavailable: venv creation or pip failed (no network, say; details in
            ``log``).
    """
    python = venv_python(venv)
    if python.exists() and _works(venv):
        return python
    build_venv(venv, EVIDENTLY_REQUIREMENTS, log, "Evidently", EvidentlyUnavailable)
    if not _works(venv):
        raise EvidentlyUnavailable(f"Evidently does not import in {venv}; see {log}")
    return python


def _works(venv: Path) -> bool:
    env = {**NO_TELEMETRY, "PATH": "/usr/bin:/bin"}
    return imports_work(venv, ("evidently", "pandas", "numpy"), 300, env)


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
