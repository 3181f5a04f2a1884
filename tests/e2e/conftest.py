"""Fixtures that run the hub and agents as real processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelfleet.demo import free_port

__all__ = ["free_port"]


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


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def _spawn(name: str, *args: str) -> Proc:
        log = tmp_path / f"{name}.log"
        fh = open(log, "wb")  # noqa: SIM115
        popen = subprocess.Popen(
            [sys.executable, "-m", "modelfleet", *args], stdout=fh, stderr=subprocess.STDOUT
        )
        proc = Proc(popen, log)
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
