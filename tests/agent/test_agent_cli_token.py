"""``modelfleet agent run`` takes only its device's token (issue 6, defect 3), via the real CLI.

The walkthrough sets MODELFLEET_TOKEN to the admin token; the agent used to take it and the
hub recorded its reports as the device. A small loopback stand-in for the hub answers
``/api/v1/whoami`` (contract 3) for the tokens it knows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.trust._trust_support import make_hub

DEVICE = "edge-1"
IDENTITIES = {
    "admin-token": {"subject": "admin", "role": "admin", "device_id": None},
    "edge-1-token": {"subject": "edge-1", "role": "device", "device_id": "edge-1"},
    "edge-2-token": {"subject": "edge-2", "role": "device", "device_id": "edge-2"},
}


class _Whoami(BaseHTTPRequestHandler):
    server: _FakeHub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.server.seen.append((self.path, token))
        identity = IDENTITIES.get(token)
        if self.path != "/api/v1/whoami":
            status, body = 404, b"{}"
        elif identity is None:
            status, body = 401, b'{"error": "unauthenticated"}'
        else:
            status, body = 200, json.dumps(identity).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Whoami)
        self.seen: list[tuple[str, str]] = []


@pytest.fixture
def fake_hub() -> Iterator[tuple[str, _FakeHub]]:
    server = _FakeHub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def trust_root(tmp_path: Path) -> Path:
    path = tmp_path / "trust-root.json"
    path.write_bytes(make_hub(tmp_path / "hub").trust.trust_root_bundle())
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent(
    hub_url: str,
    tmp_path: Path,
    trust_root: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int = 0,
) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    return subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "agent", "run", "--hub", hub_url,
         "--device-id", DEVICE, "--state-dir", str(tmp_path / "state"),
         "--trust-root", str(trust_root), "--port", str(port or _free_port()), *extra],
        env={**base, **(env or {}), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"agent did not exit: {out}") from None
    return proc.returncode, out


def test_operator_token_in_modelfleet_token_is_never_taken(
    fake_hub: tuple[str, _FakeHub], tmp_path: Path, trust_root: Path
) -> None:
    url, server = fake_hub
    proc = _agent(url, tmp_path, trust_root, env={"MODELFLEET_TOKEN": "admin-token"})
    code, out = _finish(proc)
    assert code == 2, out
    assert "no device token" in out and "MODELFLEET_TOKEN is the operator's token" in out
    assert "Traceback" not in out
    assert server.seen == []  # the admin token never left the machine


@pytest.mark.parametrize(
    ("token", "message"),
    [("admin-token", "'admin' token"), ("edge-2-token", "belongs to device 'edge-2'")],
    ids=["admin-token", "other-devices-token"],
)
def test_a_token_that_is_not_this_devices_is_refused_at_startup(
    fake_hub: tuple[str, _FakeHub], tmp_path: Path, trust_root: Path, token: str, message: str
) -> None:
    url, server = fake_hub
    proc = _agent(url, tmp_path, trust_root, env={"MODELFLEET_DEVICE_TOKEN": token})
    code, out = _finish(proc)
    assert code == 2, out
    assert "refusing" in out and message in out
    assert [p for p, _ in server.seen] == ["/api/v1/whoami"]  # no report, no TUF fetch


def test_token_file_readable_by_others_is_refused(
    fake_hub: tuple[str, _FakeHub], tmp_path: Path, trust_root: Path
) -> None:
    url, server = fake_hub
    token_file = tmp_path / "token"
    token_file.write_text("edge-1-token\n")
    token_file.chmod(0o644)
    code, out = _finish(_agent(url, tmp_path, trust_root, "--token-file", str(token_file)))
    assert code == 2, out
    assert "chmod 600" in out and server.seen == []


def test_device_token_from_a_file_is_used_and_the_agent_serves(
    fake_hub: tuple[str, _FakeHub], tmp_path: Path, trust_root: Path
) -> None:
    url, server = fake_hub
    token_file = tmp_path / "token"
    token_file.write_text("edge-1-token\n")
    token_file.chmod(0o600)
    port = _free_port()
    proc = _agent(url, tmp_path, trust_root, "--token-file", str(token_file), port=port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.1)
        assert ("/api/v1/whoami", "edge-1-token") in server.seen
        assert "edge-1-token" not in " ".join(proc.args)  # type: ignore[arg-type]
    finally:
        proc.terminate()
        _finish(proc, 30)
