"""Fixtures that run the hub and agents as real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelfleet.demo import Process, free_port, modelfleet_cmd, start

__all__ = ["Proc", "free_port", "start_agent"]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m modelfleet ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll a condition on a real process (these tests cross process boundaries)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    return False


Proc = Process


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def _spawn(name: str, *args: str) -> Proc:
        proc = start(name, modelfleet_cmd(*args), tmp_path)
        procs.append(proc)
        return proc

    yield _spawn
    for p in reversed(procs):
        p.stop()


@dataclass
class Hub:
    home: Path
    url: str
    token: str
    proc: Proc

    def env(self) -> dict[str, str]:
        return {"MODELFLEET_HUB": self.url, "MODELFLEET_TOKEN": self.token}


@pytest.fixture
def hub(tmp_path: Path, spawn: Callable[..., Proc]) -> Hub:
    home = tmp_path / "hub"
    result = cli("init", str(home))
    assert result.returncode == 0, result.stderr
    token = (home / "admin.token").read_text().strip()
    assert token in result.stdout
    port = free_port()
    proc = spawn("hub", "hub", "serve", "--home", str(home), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200), proc.output()
    return Hub(home, url, token, proc)


def start_agent(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path, device: str, *extra: str
) -> tuple[str, Path, Proc]:
    """Enroll ``device`` and run its agent; return (base URL, state folder, process)."""
    added = cli("device", "add", device, "--site", "plant-a", "--json", env=hub.env())
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    port = free_port()
    state = tmp_path / device
    proc = spawn(
        f"agent-{device}",
        "agent",
        "run",
        "--hub",
        hub.url,
        "--device-id",
        device,
        "--token",
        token,
        "--state-dir",
        str(state),
        "--port",
        str(port),
        "--poll-interval",
        "0.2",
        "--trust-root",
        str(hub.home / "trust-root.json"),
        *extra,
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/v2/health/live").status_code == 200), proc.output()
    return url, state, proc
