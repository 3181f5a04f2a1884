"""Request timeout: a stalled body or a slow off-loop inference gets 503, not a hang."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelfleet.agent.app import ServingLimits, build_agent_app
from modelfleet.agent.daemon import bind_socket
from modelfleet.agent.server import ServerSettings, build_server
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from tests.helpers import logistic_onnx, slow_logistic_onnx

BODY = orjson.dumps(
    {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]}
)


def app_with(tmp_path: Path, model: bytes, limits: ServingLimits) -> Any:
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    host = ModelHost()
    host.set_route("m", Route(LoadedModel.load("m", "1", path, "0" * 64)))
    return build_agent_app(host, limits=limits)


async def call_with_stalled_body(
    app: Any, first_after_s: float | None = None, first: bytes = BODY[:20]
) -> tuple[int, bytes]:
    """Call ``app`` with a body whose first message comes after ``first_after_s`` (None: at
    once), and whose rest never comes unless ``first`` is the whole body."""
    messages = [
        {"type": "http.request", "body": first, "more_body": first != BODY},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            if first_after_s is not None:
                await asyncio.sleep(first_after_s)  # the body is not there yet
            return messages.pop(0)
        await asyncio.sleep(10)  # the client stalls mid-body
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "raw_path": b"",
        "root_path": "",
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"content-length", str(len(BODY)).encode())],
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent[0]["status"], sent[1]["body"]


def test_stalled_body_gets_503_within_the_timeout(tmp_path: Path) -> None:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits(request_timeout_s=0.05))
    status, body = asyncio.run(call_with_stalled_body(app))
    assert status == 503
    assert b"did not arrive within 0.05 s" in body


def test_a_first_body_message_that_never_comes_gets_503(tmp_path: Path) -> None:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits(request_timeout_s=0.05))
    status, body = asyncio.run(call_with_stalled_body(app, first_after_s=10))
    assert status == 503
    assert b"did not arrive within 0.05 s" in body


def test_a_body_that_comes_late_but_in_time_is_answered(tmp_path: Path) -> None:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits(request_timeout_s=5))
    status, body = asyncio.run(call_with_stalled_body(app, first_after_s=0.05, first=BODY))
    assert status == 200
    assert b'"model_version":"1"' in body


def test_slow_offloop_inference_gets_503(tmp_path: Path) -> None:
    limits = ServingLimits(request_timeout_s=0.001, inline_max_rows=0)
    app = app_with(tmp_path, slow_logistic_onnx(size=900), limits)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as c:
            x = np.zeros((1, 10), np.float32).ravel().tolist()
            body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": x}]}
            return await c.post("/v2/models/m/infer", json=body)

    r = asyncio.run(go())
    assert r.status_code == 503
    assert "did not finish" in r.json()["error"]


# --- issue 6, defect 15: header deadline and connection cap, real sockets on loopback -----


class AgentServer:
    """The agent's own server (agent/server.py) on a free loopback port, in a thread."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = build_server(app, settings)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> AgentServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # readiness poll: uvicorn offers no start callback
            assert self.thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``conn`` within ``seconds`` (reading whatever it sends)."""
    conn.settimeout(seconds)
    try:
        while conn.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def served(tmp_path: Path) -> Any:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits())
    with AgentServer(app, ServerSettings(header_timeout_s=0.5, max_connections=8)) as server:
        yield server


def test_headers_dripping_one_byte_at_a_time_are_cut_off(served: AgentServer) -> None:
    conn = socket.create_connection(("127.0.0.1", served.port))
    started = time.monotonic()
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: a\r\n"  # never finished
    try:
        for byte in request:
            conn.sendall(bytes([byte]))
            if closed_within(conn, 0.1):  # one byte every 0.1 s
                break
        else:
            pytest.fail("the server kept a connection whose headers never ended")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert time.monotonic() - started < 2.0
    conn.close()


def test_idle_connections_are_closed_and_capped(served: AgentServer) -> None:
    conns = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(12)]
    try:
        # the four beyond the cap of 8 are closed at once, the others at the header deadline
        time.sleep(0.2)  # real sockets: let the server accept (and refuse) them all
        readable, _, _ = select.select(conns, [], [], 0)
        assert len(readable) == 4 and all(c.recv(1) == b"" for c in readable)
        assert all(closed_within(c, 2.0) for c in conns)
        # and the server still answers a well-behaved client
        with httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
            assert client.get("/v2/health/live").status_code == 200
    finally:
        for c in conns:
            c.close()


def test_keep_alive_requests_within_the_header_deadline_are_served(served: AgentServer) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        for _ in range(3):
            response = client.post("/v2/models/m/infer", content=BODY)
            assert response.status_code == 200


# --- issue 6: one write per response (headers with the body), nothing held back --------


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_held_headers_go_out_with_the_body_or_at_the_latest_on_completion_or_close() -> None:
    from modelfleet.agent.server import _OneWrite

    transport = RecordingTransport()
    one = _OneWrite(transport)  # type: ignore[arg-type]
    one.write(b"unheld")
    one.hold_next()
    one.write(b"HEAD ")
    assert transport.writes == [b"unheld"]
    one.write(b"BODY")
    assert transport.writes == [b"unheld", b"HEAD BODY"]
    one.hold_next()
    one.write(b"HEAD only")
    one.flush()  # a HEAD response: no body write follows
    assert transport.writes[-1] == b"HEAD only"
    one.hold_next()
    one.write(b"started, then the app failed")
    one.close()
    assert transport.writes[-1] == b"started, then the app failed" and transport.closed


def http_exchange(port: int, request: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(5)
        conn.sendall(request)
        if body:
            assert conn.recv(100).startswith(b"HTTP/1.1 100 Continue")  # before the body
            conn.sendall(body)
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
        return received


def test_expect_100_continue_is_answered_before_the_body_is_sent(served: AgentServer) -> None:
    request = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
        b"content-length: %d\r\n\r\n" % len(BODY)
    )
    answer = http_exchange(served.port, request, BODY)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'"model_version":"1"' in answer


def test_pipelined_requests_each_get_their_whole_answer(served: AgentServer) -> None:
    one = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s" % (
        len(BODY),
        BODY,
    )
    with socket.create_connection(("127.0.0.1", served.port)) as conn:
        conn.settimeout(5)
        conn.sendall(one * 3)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 3 or not received.endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
    assert received.count(b'"model_version":"1"') == 3


def test_a_head_answer_without_a_body_write_is_not_held_back(served: AgentServer) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as conn:
        conn.settimeout(5)
        conn.sendall(b"HEAD /v2 HTTP/1.1\r\nhost: a\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK")


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(tmp_path: Path) -> None:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits())
    settings = ServerSettings(header_timeout_s=30.0, keep_alive_s=1)
    with AgentServer(app, settings) as served:
        request = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n"
        with socket.create_connection(("127.0.0.1", served.port)) as conn:
            conn.settimeout(5)
            conn.sendall(request % len(BODY) + BODY)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 OK")
            answered = time.monotonic()
            assert closed_within(conn, 3.0)  # idle: closed, long before the header deadline
            assert 0.9 < time.monotonic() - answered < 1.6
