"""The hub under a real uvicorn server on loopback: streamed uploads, TUF over HTTP,
and the background task that re-signs expiring metadata."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.service import HubService


def _wait_for(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def live_url(service: HubService) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_hub_app(service, refresh_interval_s=0), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert _wait_for(lambda: server.started), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_streamed_upload_register_deploy_and_tuf_fetch_over_real_http(
    live_url: str, admin_token: str, tmp_path: Path, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(onnx_bytes)
    with HubClient(live_url, admin_token, timeout=30) as client:
        assert client.health()["status"] == "ok"
        device = client.add_device("edge-1", site="lab")
        v = client.register_version("iris", model_file, sample_rows[:4])
        assert v["version"] == 1 and v["smoke_vectors"] == 4
        client.deploy("iris", 1, ["edge-1"])
    headers = {"Authorization": f"Bearer {device['token']}"}
    with httpx.Client(base_url=live_url, headers=headers) as tuf:
        assert tuf.get("/tuf/director/metadata/timestamp.json").status_code == 200
        r = tuf.get(f"/tuf/catalog/targets/models/iris/1/{v['sha256']}.model.onnx")
        assert r.status_code == 200 and r.content == onnx_bytes
        big = b"\0" * (3 << 20)  # several chunks through the thread bridge
        up = httpx.post(
            f"{live_url}/api/v1/blobs",
            content=iter([big[: 1 << 20], big[1 << 20 :]]),
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert up.status_code == 201 and up.json()["length"] == len(big)


def test_background_task_resigns_expiring_metadata(service: HubService, clock: ManualClock) -> None:
    clock.advance(30 * 86400)  # past the director timestamp's lifetime
    with TestClient(build_hub_app(service, refresh_interval_s=0.01)):
        assert _wait_for(
            lambda: any(e["action"] == "tuf.refresh" for e in service.audit(limit=1000))
        )
    assert service.refresh_expiring() == []  # nothing left to re-sign


def test_edge_refusals_over_real_http(live_url: str, admin_token: str) -> None:
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=live_url, headers=headers, timeout=30) as http:
        empty = http.post("/api/v1/blobs", content=iter([b"", b""]))  # chunked, no bytes
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        huge = http.get("/api/v1/audit", params={"after_seq": str(2**64)})
        assert huge.status_code == 400
        assert http.get("/api/v1/whoami").json() == {
            "subject": "admin",
            "role": "admin",
            "device_id": None,
        }
        assert http.get("/api/v1/whoami", headers={"Authorization": "Bearer x"}).status_code == 401
        page = http.get("/api/v1/docs")
        assert page.status_code == 200 and "://" not in page.text
        assert http.get("/api/v1/docs/assets/swagger-ui-bundle.js").status_code == 200
