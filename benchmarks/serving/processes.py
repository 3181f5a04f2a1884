"""Start benchmarked servers as child processes and always stop them again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One running server process (in its own process group).

    Attributes:
        key: short identifier used in results.
        label: human-readable description.
        url: the inference URL.
        ready_url: GET URL that answers 200 once the model is served.
        process: the child process.
        log: the file that receives its stdout and stderr.
    """

    key: str
    label: str
    url: str
    ready_url: str
    process: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def wait_ready(self, timeout: float) -> None:
        """Poll ``ready_url`` until it answers 200.

        Raises:
            RuntimeError: the process exited or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.key} exited with {self.process.returncode} before it was ready; "
                    f"see {self.log}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.key} was not ready after {timeout:.0f} s; see {self.log}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the server's process group."""
        try:
            pgid = os.getpgid(self.process.pid)
        except ProcessLookupError:
            return 0.0
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / _CLOCK_TICKS

    def stop(self) -> None:
        """SIGINT the process group, again if needed (MLServer hangs on the first), then KILL."""
        try:
            pgid = os.getpgid(self.process.pid)
        except ProcessLookupError:
            pgid = None
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            try:
                if pgid is not None:
                    os.killpg(pgid, sig)
                else:
                    self.process.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # The group may still hold children (MLServer's inference worker).
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start(
    key: str,
    label: str,
    command: list[str],
    *,
    url: str,
    ready_url: str,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``command`` in a new process group, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(key, label, url, ready_url, process, log, out)
