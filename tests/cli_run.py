"""Run the real ``modelfleet`` command and a real hub, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelfleet.demo import free_port, modelfleet_cmd, start

__all__ = ["ServedHub", "healthy", "run_cli", "served_hub"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m modelfleet ARGS`` with no ``MODELFLEET_*`` variable but those in ``env``;
    with ``prelude``, that Python runs first (to hide a module, as an install without an
    extra would)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    if prelude:
        code = f"{prelude}\nfrom modelfleet.cli.main import main\nmain({list(args)!r})"
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "modelfleet", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {}), "COLUMNS": "200"},
    )


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ServedHub:
    url: str
    token: str

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"MODELFLEET_HUB": self.url, "MODELFLEET_TOKEN": token or self.token}


@contextmanager
def served_hub(home: Path, logdir: Path, env: dict[str, str] | None = None) -> Iterator[ServedHub]:
    """``modelfleet hub serve --home HOME`` (already initialised) until the block ends."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    proc = start(
        "hub",
        modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port)),
        logdir,
        env={**child_env, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a real process: poll it
        while not healthy(url) and proc.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert healthy(url), proc.output()
        yield ServedHub(url, (home / "admin.token").read_text().strip())
    finally:
        proc.stop()
