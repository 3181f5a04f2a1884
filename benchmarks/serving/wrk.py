"""The load generator: ``wrk`` with a Lua POST script, and a parser for ``--latency`` output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")


class WrkUnavailable(RuntimeError):
    """wrk is not installed and could not be installed."""


def ensure_wrk() -> str:
    """Path of ``wrk``; install Debian's package when missing and running as root.

    Raises:
        WrkUnavailable: wrk is missing and cannot be installed here.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise WrkUnavailable(
            "wrk is not installed; install it (Debian/Ubuntu: `sudo apt-get install -y wrk`) "
            "and run the benchmark again"
        )
    print("wrk is missing; installing Debian's package ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "wrk"]):
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise WrkUnavailable(f"{' '.join(step)} failed:\n{done.stderr[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise WrkUnavailable("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    """First line of ``wrk -v`` (wrk prints it and exits with status 1)."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def write_lua(path: Path, body: bytes) -> Path:
    """Write the POST script: method, the fixed body and a JSON Content-Type."""
    text = body.decode()
    if "]]" in text:
        raise ValueError("body cannot go into a Lua long string")
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{text}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


@dataclass(frozen=True)
class WrkResult:
    """One wrk run.

    Attributes:
        concurrency: connections (``-c``).
        duration_s: ``-d``.
        requests: completed requests.
        rps: ``Requests/sec``.
        p50_ms, p75_ms, p90_ms, p99_ms: latency percentiles from ``--latency``.
        non_2xx: ``Non-2xx or 3xx responses``.
        socket_errors: connect + read + write + timeout errors.
    """

    concurrency: int
    duration_s: int
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _ms(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str, concurrency: int, duration_s: int) -> WrkResult:
    """Parse the text wrk prints with ``--latency``.

    Raises:
        ValueError: a required field is missing.
    """
    percentiles: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M):
        percentiles[pct] = _ms(value)
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if requests is None or rps is None or len(percentiles) != 4:
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=int(requests.group(1)),
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run(wrk: str, url: str, lua: Path, concurrency: int, duration_s: int) -> tuple[WrkResult, str]:
    """Run ``wrk -t1 -c{concurrency} -d{duration}s --timeout 5s --latency``; parse it.

    Returns:
        The parsed result and wrk's raw output.

    Raises:
        RuntimeError: wrk failed.
    """
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout, concurrency, duration_s), done.stdout
