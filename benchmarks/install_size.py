"""Installed size and the agent's memory: the agent-only install against the full one.

``python -m benchmarks.install_size [--full] [--workdir DIR]``

Builds a fresh virtualenv with ``pip install <this repo>`` (no extras: what an edge gateway
installs), measures its ``site-packages`` on disk (``du -s``, with and without the pip and
setuptools every venv has),
then starts a hub from the current interpreter (it needs ``modelfleet[hub,sklearn]``),
registers and deploys the benchmark's logistic-regression model, runs ``modelfleet agent run``
from the new venv, sends it 200 OIP v2 requests and reads the agent's resident memory
(``VmRSS``). ``--full`` does the same with a second venv of ``.[hub,sklearn]``. Results are
printed as a Markdown table for ``docs/benchmarks.md``. The repository is copied first, so
building leaves no ``build/`` or ``*.egg-info`` behind in the working tree.

The test ``tests/test_agent_only_install.py`` drives the same functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelfleet.demo import Process, free_port, start, wait_until

REPO = Path(__file__).resolve().parents[1]
#: What every fresh venv holds before anything is installed; not counted.
BASELINE = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")
MODEL = "lr"


def source_copy(dest: Path, repo: Path = REPO) -> Path:
    """Copy what ``pip install`` needs of the repository into ``dest``; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(repo / name, dest / name)
    shutil.copytree(
        repo / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        dirs_exist_ok=True,
    )
    return dest


def build_venv(venv: Path, requirement: str, python: str = sys.executable) -> Path:
    """``python -m venv VENV`` and ``pip install REQUIREMENT`` into it; return its python.

    Raises:
        RuntimeError: venv creation or pip failed (its output in the message).
    """
    for cmd in (
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return venv / "bin" / "python"


def site_packages(venv_python: Path) -> Path:
    out = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def disk_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    """Disk usage of the files under ``path`` (as ``du -s``), top-level entries named
    like ``skip`` left out."""
    total = 0
    for root, dirs, files in os.walk(path):
        if Path(root) == path:
            dirs[:] = [d for d in dirs if not d.startswith(skip)] if skip else dirs
            files = [f for f in files if not f.startswith(skip)] if skip else files
        for f in files:
            st = Path(root, f).lstat()
            total += st.st_blocks * 512
    return total


def installed_bytes(venv_python: Path, *, with_pip: bool = True) -> int:
    """Disk usage of the venv's site-packages (``du -s``; the figure of issue 6), or without
    pip and setuptools, which any venv has."""
    sp = site_packages(venv_python)
    return disk_bytes(sp) if with_pip else disk_bytes(sp, BASELINE)


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def clean_env() -> dict[str, str]:
    """The environment for a process that must use only its own venv's packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@dataclass
class RunningHub:
    url: str
    home: Path
    admin_token: str
    process: Process


@contextmanager
def running_hub(workdir: Path) -> Iterator[RunningHub]:
    """``modelfleet init`` and ``hub serve`` from the current interpreter."""
    home = workdir / "hub"
    init = subprocess.run(
        [sys.executable, "-m", "modelfleet", "init", str(home), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0:
        raise RuntimeError(f"modelfleet init failed: {init.stderr}")
    token = (home / "admin.token").read_text().strip()
    port = free_port()
    proc = start(
        "hub",
        [
            sys.executable,
            "-m",
            "modelfleet",
            "hub",
            "serve",
            "--home",
            str(home),
            "--port",
            f"{port}",
        ],
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200, 60):
            raise RuntimeError(f"the hub did not start:\n{proc.tail()}")
        yield RunningHub(url, home, token, proc)
    finally:
        proc.stop()


def oip_request(row: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": "X", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}


@dataclass
class ServingAgent:
    url: str
    process: Process


@contextmanager
def agent_serving(
    hub: RunningHub,
    agent_cmd: list[str],
    device_id: str,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[ServingAgent]:
    """Enroll ``device_id`` and start ``AGENT_CMD agent run`` for it."""
    from modelfleet.client import HubClient

    with HubClient(hub.url, hub.admin_token) as client:
        device_token = client.add_device(device_id)["token"]
    port = free_port()
    args = [
        *agent_cmd,
        "agent",
        "run",
        "--hub",
        hub.url,
        "--device-id",
        device_id,
        "--state-dir",
        str(workdir / device_id),
        "--port",
        str(port),
        "--poll-interval",
        "0.2",
        "--trust-root",
        str(hub.home / "trust-root.json"),
    ]
    # The token travels in the environment, not in argv (visible in ps).
    proc = start(
        f"agent-{device_id}",
        args,
        workdir,
        env={**(env or os.environ), "MODELFLEET_DEVICE_TOKEN": device_token},
    )
    try:
        yield ServingAgent(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.stop()


def serves(agent: ServingAgent, row: list[float]) -> bool:
    r = httpx.post(f"{agent.url}/v2/models/{MODEL}/infer", json=oip_request(row), timeout=5)
    return r.status_code == 200


def register(hub: RunningHub, model: Path) -> int:
    """Register ``model`` as the next version of ``lr``; return the version number."""
    from modelfleet.client import HubClient

    with HubClient(hub.url, hub.admin_token) as client:
        return int(client.register_version(MODEL, model)["version"])


def deploy(hub: RunningHub, version: int, device_id: str) -> None:
    from modelfleet.client import HubClient

    with HubClient(hub.url, hub.admin_token) as client:
        client.deploy(MODEL, version, [device_id])


def measure_agent_rss(
    hub: RunningHub,
    agent_cmd: list[str],
    device_id: str,
    version: int,
    row: list[float],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> int:
    """RSS of an agent serving ``lr`` v``version`` after 200 requests."""
    with agent_serving(hub, agent_cmd, device_id, workdir, env) as agent:
        deploy(hub, version, device_id)
        if not wait_until(lambda: serves(agent, row), 90):
            raise RuntimeError(f"agent {device_id} never served {MODEL}:\n{agent.process.tail()}")
        with httpx.Client(timeout=5) as http:
            for _ in range(200):
                http.post(f"{agent.url}/v2/models/{MODEL}/infer", json=oip_request(row))
        return rss_bytes(agent.process.popen.pid)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.install_size",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true", help="also build .[hub,sklearn]")
    parser.add_argument("--workdir", type=Path, help="keep venvs and logs here")
    args = parser.parse_args(argv)
    from benchmarks.serving.model import make_model

    with tempfile.TemporaryDirectory(prefix="mf-install-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = source_copy(work / "src")
        rows: list[tuple[str, int, int, int]] = []
        specs = [("agent only: `pip install modelfleet`", str(src))]
        if args.full:
            specs.append(("full: `pip install 'modelfleet[hub,sklearn]'`", f"{src}[hub,sklearn]"))
        model = make_model(work / "model")
        row = [float(v) for v in model.row.ravel()]
        with running_hub(work) as hub:
            version = register(hub, model.path)
            for i, (label, spec) in enumerate(specs):
                python = build_venv(work / f"venv-{i}", spec)
                size = installed_bytes(python)
                own = installed_bytes(python, with_pip=False)
                cmd = [str(python.parent / "modelfleet")]
                rss = measure_agent_rss(hub, cmd, f"dev-{i}", version, row, work, clean_env())
                rows.append((label, size, own, rss))
    print("| install | site-packages (du) | without pip, setuptools | agent RSS serving LR |")
    print("|---|---:|---:|---:|")
    for label, size, own, rss in rows:
        print(f"| {label} | {_mib(size)} | {_mib(own)} | {_mib(rss)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
