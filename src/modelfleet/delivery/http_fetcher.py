"""HTTP transport for the TUF client (and plain GETs) over ``httpx``, with a bearer token.

python-tuf's ngclient only needs ``FetcherInterface._fetch(url) -> Iterator[bytes]``; the
base class bounds every download by the length the signed metadata allows. This module
maps HTTP answers to the exceptions ngclient understands: a non-200 status becomes
``DownloadHTTPError(msg, status)`` (ngclient relies on 403/404 to stop probing for newer
root versions), a timeout ``SlowRetrievalError``, any other transport failure
``DownloadError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
from tuf.ngclient.fetcher import FetcherInterface

__all__ = ["HttpFetcher"]

DEFAULT_CHUNK = 1 << 16


class HttpFetcher(FetcherInterface):
    """``FetcherInterface`` over one ``httpx.Client`` (connection reuse, streaming).

    Use :meth:`download_bytes` / :meth:`download_file` (from the base class) for plain
    GETs too: they enforce a maximum length.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        chunk_size: int = DEFAULT_CHUNK,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        """Create a fetcher.

        Args:
            token: bearer token sent as ``Authorization: Bearer <token>`` (None or empty: no
                header).
            timeout_s: read/write/pool timeout, i.e. the longest gap between bytes.
            connect_timeout_s: connection timeout.
            chunk_size: bytes per yielded chunk.
            headers: extra headers for every request (e.g. ``User-Agent``).
            client: a ready ``httpx.Client`` (tests pass one with a ``MockTransport``);
                the fetcher then does not own it and :meth:`close` leaves it open.
        """
        base = {"User-Agent": "modelfleet"}
        base.update(headers or {})
        if token:
            base["Authorization"] = f"Bearer {token}"
        self._headers = base
        self._chunk = chunk_size
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Start a GET and return its body as chunks.

        Raises:
            DownloadHTTPError: any status other than 200 (the body is discarded).
            SlowRetrievalError: connect or read timeout.
            DownloadError: any other transport failure.
        """
        request = self._client.build_request("GET", url, headers=self._headers)
        try:
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise SlowRetrievalError(f"GET {url}: timed out") from e
        except httpx.HTTPError as e:
            raise DownloadError(f"GET {url}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            response.close()
            raise DownloadHTTPError(f"GET {url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(url, response)

    def _chunks(self, url: str, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(self._chunk)
        except httpx.TimeoutException as e:
            raise SlowRetrievalError(f"GET {url}: timed out mid-body") from e
        except httpx.HTTPError as e:
            raise DownloadError(f"GET {url}: body interrupted: {e}") from e
        finally:
            response.close()

    def close(self) -> None:
        """Close the HTTP client if this fetcher created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
