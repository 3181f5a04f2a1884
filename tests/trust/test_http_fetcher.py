"""HttpFetcher: bearer token, streaming, and the HTTP-to-tuf error mapping ngclient relies on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)

from modelfleet.delivery import HttpFetcher
from modelfleet.delivery.http_fetcher import (
    DownloadCancelledError,
    DownloadDeadlineError,
    DownloadSettings,
)
from modelfleet.errors import ConfigError


def _fetcher(handler: httpx.MockTransport, chunk_size: int = 1 << 16) -> HttpFetcher:
    return HttpFetcher("s3cret", chunk_size=chunk_size, client=httpx.Client(transport=handler))


def test_sends_bearer_token_and_streams_the_body_in_chunks() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"x" * 1000)

    f = _fetcher(httpx.MockTransport(handler), chunk_size=100)
    chunks = list(f.fetch("http://hub/tuf/catalog/metadata/timestamp.json"))
    assert b"".join(chunks) == b"x" * 1000
    assert seen[0].headers["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize("status", [401, 403, 404, 500, 204, 302])
def test_any_status_but_200_is_a_download_http_error_with_that_status(status: int) -> None:
    f = _fetcher(httpx.MockTransport(lambda r: httpx.Response(status, content=b"nope")))
    with pytest.raises(DownloadHTTPError) as err:
        f.fetch("http://hub/tuf/catalog/metadata/2.root.json")
    assert err.value.status_code == status


def test_connection_refused_is_a_download_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(DownloadError) as err:
        _fetcher(httpx.MockTransport(handler)).fetch("http://hub/x")
    assert not isinstance(err.value, DownloadHTTPError)


def test_timeout_is_a_slow_retrieval_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(SlowRetrievalError):
        _fetcher(httpx.MockTransport(handler)).fetch("http://hub/x")


def test_endless_body_is_cut_at_the_allowed_length() -> None:
    f = _fetcher(httpx.MockTransport(lambda r: httpx.Response(200, content=b"y" * 5000)))
    with pytest.raises(DownloadLengthMismatchError):
        f.download_bytes("http://hub/x", 4096)


def test_plain_get_through_download_bytes() -> None:
    f = _fetcher(httpx.MockTransport(lambda r: httpx.Response(200, content=b"{}")))
    assert f.download_bytes("http://hub/trust-root.json", 1024) == b"{}"


def test_no_token_sends_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with HttpFetcher(None, client=httpx.Client(transport=httpx.MockTransport(handler))) as f:
        list(f.fetch("http://hub/x"))
    assert "Authorization" not in seen[0].headers


# -- deadlines and cancellation (issue 6, defect 13) --------------------------------------


def test_deadline_is_sized_by_length_and_a_minimum_rate_and_capped() -> None:
    settings = DownloadSettings(min_rate_bytes_s=1000.0, base_s=10.0, max_s=100.0)
    assert settings.deadline_s(0) == 10.0
    assert settings.deadline_s(50_000) == 60.0
    assert settings.deadline_s(10**9) == 100.0


@pytest.mark.parametrize(
    "bad",
    [
        {"min_rate_bytes_s": 0.0},
        {"base_s": 0.0},
        {"max_s": float("inf")},
        {"read_timeout_s": 3600.0},
        {"connect_timeout_s": float("nan")},
    ],
    ids=["zero-rate", "zero-base", "no-cap", "read-timeout-too-long", "nan"],
)
def test_download_settings_outside_their_bounds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        DownloadSettings(**bad)


class _Steps:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_body_slower_than_the_minimum_rate_misses_its_deadline() -> None:
    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield b"z" * 10

    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body()))
    f = HttpFetcher(
        settings=DownloadSettings(min_rate_bytes_s=100.0, base_s=1.0),
        client=httpx.Client(transport=transport),
        monotonic=_Steps(),  # every piece "takes" a second: 10 B/s against 100 B/s
    )
    with pytest.raises(DownloadDeadlineError, match="11 s deadline"):
        f.download_bytes("http://hub/x", 1000)  # deadline 1 s + 1000 B / 100 B/s


def test_cancelled_download_stops_at_the_next_piece() -> None:
    cancel = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"a" * 10
        cancel.set()  # e.g. a newer desired state arrived
        yield b"b" * 10
        raise AssertionError("read on after cancellation")

    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body()))
    f = HttpFetcher(client=httpx.Client(transport=transport))
    with f.cancelled_by(cancel), pytest.raises(DownloadCancelledError):
        f.download_bytes("http://hub/x", 100)
    # outside the block the event no longer applies
    transport2 = httpx.MockTransport(lambda r: httpx.Response(200, content=b"ok"))
    g = HttpFetcher(client=httpx.Client(transport=transport2))
    with g.cancelled_by(cancel):
        pass
    assert g.download_bytes("http://hub/x", 10) == b"ok"


class _Drip(BaseHTTPRequestHandler):
    server: _DripServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                if self.server.closing.wait(0.1):
                    return
                self.wfile.write(b"d")
                self.wfile.flush()
        except OSError:
            return


class _DripServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Drip)
        self.closing = threading.Event()


def test_dripping_loopback_server_hits_the_deadline_not_the_read_timeout() -> None:
    server = _DripServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    settings = DownloadSettings(read_timeout_s=30.0, min_rate_bytes_s=1000.0, base_s=0.5)
    try:
        with HttpFetcher(settings=settings) as f:
            started = time.monotonic()
            with pytest.raises(DownloadDeadlineError):
                f.download_bytes(f"http://{host!s}:{port}/artefact", 1000)  # deadline 1.5 s
            assert time.monotonic() - started < 3.0  # each byte arrives well within 30 s
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
