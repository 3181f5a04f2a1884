"""The agent-only install (issue 6): ``pip install modelfleet`` with no extras serves models.

One fresh venv per session (pip's cache makes rebuilds quick), built from a copy of this
repository; the hub runs from the test's own environment (it needs ``modelfleet[hub]``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from benchmarks.install_size import (
    MODEL,
    agent_serving,
    build_venv,
    clean_env,
    deploy,
    installed_bytes,
    oip_request,
    register,
    rss_bytes,
    running_hub,
    serves,
    source_copy,
    wait_until,
)

from tests.helpers import logistic_onnx

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` folder of a venv made by ``pip install <repo>`` only."""
    root = tmp_path_factory.mktemp("agent-only")
    python = build_venv(root / "venv", str(source_copy(root / "src")))
    yield python.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=clean_env())


@pytest.mark.parametrize("module", ["fastapi", "sqlalchemy", "alembic", "psycopg", "sklearn"])
def test_agent_only_install_lacks_the_hub_and_sklearn_libraries(
    agent_venv: Path, module: str
) -> None:
    result = run(str(agent_venv / "python"), "-c", f"import {module}")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args", [("hub", "serve", "--home", "/nonexistent"), ("init", "/nonexistent/home")]
)
def test_hub_commands_in_agent_only_install_name_the_extra(
    agent_venv: Path, args: tuple[str, ...]
) -> None:
    result = run(str(agent_venv / "modelfleet"), *args)
    assert result.returncode == 6, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "pip install 'modelfleet[hub]'" in result.stderr


def test_agent_from_agent_only_install_serves_a_deployed_model(
    agent_venv: Path, tmp_path: Path
) -> None:
    assert run(str(agent_venv / "modelfleet"), "--version").returncode == 0
    onnx_bytes, x = logistic_onnx()
    model = tmp_path / "lr.onnx"
    model.write_bytes(onnx_bytes)
    row = [float(v) for v in x[0]]
    with running_hub(tmp_path) as hub:
        version = register(hub, model)
        cmd = [str(agent_venv / "modelfleet")]
        with agent_serving(hub, cmd, "edge-1", tmp_path, clean_env()) as agent:
            deploy(hub, version, "edge-1")
            assert wait_until(lambda: serves(agent, row), 90), agent.process.output()
            answer = httpx.post(
                f"{agent.url}/v2/models/{MODEL}/infer", json=oip_request(row), timeout=5
            ).json()
            assert answer["model_version"] == str(version)
            rss = rss_bytes(agent.process.popen.pid)
    size = installed_bytes(agent_venv / "python")
    print(
        f"agent-only install: site-packages {size / 2**20:.0f} MiB, agent RSS {rss / 2**20:.0f} MiB"
    )
