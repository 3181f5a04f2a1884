"""MLServer in a virtual environment of its own, and model repositories for it.

MLServer is never a dependency of modelfleet: the benchmark creates ``.bench/mlserver-venv``
(git-ignored) with pip when it is missing. uvloop is pinned to 0.21.0 because MLServer 1.7.1's
inference worker (``parallel_workers >= 1``) crashes with uvloop >= 0.22
(see ``shared/research/anchors-measured.md``); httptools gives its uvicorn the C parser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._peer_venv import build_venv, imports_work, venv_python

MLSERVER_REQUIREMENTS = (
    "mlserver==1.7.1",
    "uvloop==0.21.0",
    "httptools",
    "onnxruntime",
    "numpy",
)
_RUNTIME_MODULE = "onnx_runtime"


class MLServerUnavailable(RuntimeError):
    """MLServer's virtual environment could not be created or does not work."""


@dataclass(frozen=True)
class MLServerVariant:
    """One MLServer configuration to benchmark.

    Attributes:
        key: short identifier used in results.
        label: human-readable description.
        settings: extra server settings (``settings.json``) on top of host and ports.
    """

    key: str
    label: str
    settings: dict[str, Any]


TUNED = MLServerVariant(
    "mlserver_tuned",
    "MLServer 1.7.1, custom ONNX runtime, tuned (parallel_workers=0, debug off, gzip off, "
    "metrics off, httptools)",
    {"parallel_workers": 0, "debug": False, "gzip_enabled": False, "metrics_endpoint": None},
)
DEFAULTS = MLServerVariant(
    "mlserver_defaults",
    "MLServer 1.7.1, custom ONNX runtime, default settings (parallel_workers=1, debug on, "
    "gzip on, metrics on)",
    {},
)


def ensure_venv(venv: Path, log: Path) -> Path:
    """Create ``venv`` with MLServer when it is missing or broken; return its ``mlserver``.

    Raises:
        MLServerUnavailable: venv creation or pip failed (details in ``log``).
    """
    mlserver = venv / "bin" / "mlserver"
    if mlserver.exists() and _works(venv):
        return mlserver
    build_venv(venv, MLSERVER_REQUIREMENTS, log, "MLServer", MLServerUnavailable)
    if not _works(venv):
        raise MLServerUnavailable(f"MLServer does not import in {venv}; see {log}")
    return mlserver


def _works(venv: Path) -> bool:
    return imports_work(venv, ("mlserver", "onnxruntime", "uvloop", "httptools"), 120)


def versions(venv: Path) -> dict[str, str]:
    """Versions of the key packages in MLServer's venv."""
    names = [
        "mlserver",
        "uvicorn",
        "uvloop",
        "httptools",
        "fastapi",
        "starlette",
        "pydantic",
        "onnxruntime",
        "numpy",
    ]
    code = (
        "import json, importlib.metadata as m\n"
        f"print(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    )
    done = subprocess.run(
        [str(venv_python(venv)), "-c", code], capture_output=True, text=True, timeout=60
    )
    result: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    return result


def write_repository(
    root: Path,
    model_file: Path,
    model_name: str,
    variant: MLServerVariant,
    ports: tuple[int, int, int],
) -> Path:
    """Write an MLServer model repository serving ``model_file`` as ``model_name``.

    Args:
        root: the repository folder (created).
        model_file: the ONNX file.
        model_name: the name clients use.
        variant: server settings on top of host and ports.
        ports: HTTP, gRPC and metrics ports (all bound to 127.0.0.1).

    Returns:
        ``root``, ready for ``mlserver start root``.
    """
    model_dir = root / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, model_dir / "model.onnx")
    shutil.copyfile(
        Path(__file__).with_name("mlserver_runtime.py"), model_dir / f"{_RUNTIME_MODULE}.py"
    )
    http_port, grpc_port, metrics_port = ports
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        **variant.settings,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model_name,
        "implementation": f"{_RUNTIME_MODULE}.OnnxRuntimeModel",
        "parameters": {"uri": "./model.onnx", "version": "1"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root
