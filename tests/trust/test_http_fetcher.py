"""HttpFetcher: bearer token, streaming, and the HTTP-to-tuf error mapping ngclient relies on."""

from __future__ import annotations

import httpx
import pytest
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)

from modelfleet.delivery import HttpFetcher


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
