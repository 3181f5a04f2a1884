"""The agent as a user starts it: a hub, a device enrolled with it, ``modelfleet agent run``.

Issue 6 ("Performance"): an agent built on the benchmark's own harness measured 0.92–1.01×
the hand-written endpoint while the agent a user starts measured 0.72–0.84×. So ``make
bench`` measures *this* agent: a real hub process (``modelfleet hub serve``), the bench
model registered and deployed to one device, and that device's ``modelfleet agent run``
with the CLI's defaults (poll interval, log level, guard, metrics, update loop) — the
process a user runs. The in-harness app (``benchmarks.serving.serve --app agent``) is
still measured, as ``agent_app``, to show what the daemon around it costs.

:func:`start_hub` and :func:`start_agent` are the two halves, for benchmarks that enrol
several devices with one hub (``benchmarks/drift_deployed.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving import processes
from benchmarks.serving.model import MODEL_NAME

__all__ = ["Hub", "start_agent", "start_enrolled_agent", "start_hub"]

DEVICE_ID = "bench-agent"


def _modelfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfleet", *args]


@dataclass(frozen=True)
class Hub:
    """A running ``modelfleet hub serve``.

    Attributes:
        server: the process; stop it.
        url: its base URL.
        home: its home folder (``trust-root.json`` is there).
        token: the admin token ``init_home`` made.
    """

    server: processes.Server
    url: str
    home: Path
    token: str


def start_hub(run_dir: Path, env: dict[str, str], cwd: Path) -> Hub:
    """Start ``modelfleet hub serve`` on a fresh home under ``run_dir``; wait until ready.

    Raises:
        RuntimeError: the hub did not start.
    """
    from modelfleet.hub.service import init_home

    home = run_dir / "hub-home"
    token = init_home(home)
    hub_port = processes.free_port()
    hub_url = f"http://127.0.0.1:{hub_port}"
    hub = processes.start(
        "hub",
        "modelfleet hub (for the enrolled agent)",
        _modelfleet("hub", "serve", "--home", str(home), "--port", str(hub_port)),
        url=hub_url,
        ready_url=hub_url + "/api/v1/health",
        log=run_dir / "hub.log",
        cwd=cwd,
        env=env,
    )
    try:
        hub.wait_ready(60.0)
    except Exception:
        hub.stop()
        raise
    return Hub(hub, hub_url, home, token)


def start_agent(
    hub: Hub,
    device_id: str,
    device_token: str,
    run_dir: Path,
    env: dict[str, str],
    cwd: Path,
    *,
    key: str = "agent",
    extra_args: Sequence[str] = (),
) -> processes.Server:
    """Start ``modelfleet agent run`` for an enrolled device, the CLI's defaults plus
    ``extra_args``; state in ``run_dir/{key}-state``, output in ``run_dir/{key}.log``.

    Returns:
        The agent (not waited for: its ``ready_url`` answers once the model is loaded).
    """
    agent_port = processes.free_port()
    base = f"http://127.0.0.1:{agent_port}"
    command = _modelfleet(
        "agent", "run",
        "--hub", hub.url,
        "--device-id", device_id,
        "--token", device_token,
        "--state-dir", str(run_dir / f"{key}-state"),
        "--port", str(agent_port),
        "--trust-root", str(hub.home / "trust-root.json"),
        *extra_args,
    )  # fmt: skip
    return processes.start(
        key,
        "modelfleet agent run (enrolled with a hub; uvicorn, httptools, uvloop)",
        command,
        url=base + f"/v2/models/{MODEL_NAME}/infer",
        ready_url=base + f"/v2/models/{MODEL_NAME}/ready",
        log=run_dir / f"{key}.log",
        cwd=cwd,
        env=env,
    )


def start_enrolled_agent(
    model_path: Path, run_dir: Path, env: dict[str, str], cwd: Path
) -> tuple[processes.Server, processes.Server]:
    """Start a hub and an agent enrolled with it, serving ``model_path`` as deployed.

    Returns:
        ``(agent, hub)``; stop both. The agent is ready once its model is loaded.

    Raises:
        RuntimeError: the hub did not start or refused the registration or deployment.
    """
    from modelfleet.client import HubClient

    hub = start_hub(run_dir, env, cwd)
    try:
        client = HubClient(hub.url, hub.token)
        device = client.add_device(DEVICE_ID, site="bench")
        version = client.register_version(MODEL_NAME, model_path)["version"]
        client.deploy(MODEL_NAME, int(version), devices=[DEVICE_ID], mode="full")
        agent = start_agent(hub, DEVICE_ID, device["token"], run_dir, env, cwd)
    except Exception:
        hub.server.stop()
        raise
    return agent, hub.server
