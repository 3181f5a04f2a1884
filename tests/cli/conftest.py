"""Fixtures of the CLI tests: a fake hub on loopback and the real CLI run in-process."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from modelfleet.cli.main import main
from tests.cli.fake_hub import FakeHub
from tests.serving._support import ServerThread


@dataclass
class Served:
    fake: FakeHub
    url: str

    def env(self, token: str = "op-token") -> dict[str, str]:
        return {"MODELFLEET_HUB": self.url, "MODELFLEET_TOKEN": token}


@pytest.fixture
def fake_hub() -> Iterator[Served]:
    fake = FakeHub()
    with ServerThread(fake.app) as server:
        yield Served(fake, server.url)


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``modelfleet ARGS`` through :func:`modelfleet.cli.main.main` in this process (the
    same code path as the command; no interpreter start per call), with only the
    ``MODELFLEET_*`` variables given."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        for key in list(os.environ):
            if key.startswith("MODELFLEET_"):
                monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        out = capsys.readouterr()
        code = exit_.value.code
        return Result(code if isinstance(code, int) else 1, out.out, out.err)

    return run


def on_terminal(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m modelfleet ARGS`` with stdout on a pseudo-terminal (rich draws live
    views there); returns (exit code, what the terminal showed, stderr)."""
    leader, follower = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **env, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(follower)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            screen += chunk
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    return proc.returncode, screen.decode(errors="replace"), err
