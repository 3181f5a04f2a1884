"""HTTP transport for the TUF client (and plain GETs) over ``httpx``, with a bearer token.

python-tuf's ngclient only needs ``FetcherInterface._fetch(url) -> Iterator[bytes]``; the
base class bounds every download by the length the signed metadata allows. This module
maps HTTP answers to the exceptions ngclient understands: a non-200 status becomes
``DownloadHTTPError(msg, status)`` (ngclient relies on 403/404 to stop probing for newer
root versions), a timeout ``SlowRetrievalError``, any other transport failure
``DownloadError``.

Every download also has an overall deadline sized by the length it may have (issue 6,
defect 13: an artefact dripping at 1 byte/s froze the agent): ``base_s + max_length /
min_rate``, capped at ``max_s``. A download can be cancelled from another thread (a newer
desired state supersedes it); both are checked after every piece the socket delivers.

A body cut mid-way (peer closed, reset, read timeout) while the deadline has not passed
is resumed (issue 11): the GET is re-issued with ``Range: bytes=N-`` (N = bytes already
received), at most ``max_resumes`` times, after a capped exponential backoff with full
jitter. A ``206`` is accepted only if its ``Content-Range`` starts at N; a ``200`` (the
server ignored Range) is read from the start and its first N bytes skipped. That is safe
because targets are immutable consistent-snapshot files, and ngclient checks the whole
artefact's length and hashes at the end anyway, so a wrongly spliced body is refused.
The deadline and cancellation apply to the whole download, across resumes. Only a body
that was cut is resumed: an error status (a 503) is left to the caller's retries.
If a download fails all the same, the bytes received before are yielded first.

Across restarts (issue 11, ADR 0033 amendment): :meth:`HttpFetcher.fetch_from` starts a
download at an offset (the caller kept the first bytes) and says where the body really
starts: at the offset for a ``206`` that starts there, at 0 when the server ignored the
Range (``200``) or refused it (``416``, another range: asked again without Range).

A bandwidth budget (issue 11, ADR 0038): with ``max_rate_bytes_s`` set, every body this
fetcher reads is paced by one token bucket (:mod:`modelfleet.delivery.ratelimit`) shared
by all its threads, so a device on a thin link never takes more than its share. The wait
counts against the deadline (a wait that would end past it fails the download at once);
``max_rate >= min_rate`` is required so that a download paced alone always fits its
deadline. Cancellation is checked at least once a second while waiting.
"""

from __future__ import annotations

import logging
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import IO

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.backoff import BackoffPolicy
from modelfleet.delivery.ratelimit import RateLimiter
from modelfleet.errors import ConfigError

__all__ = [
    "DownloadCancelledError",
    "DownloadDeadlineError",
    "DownloadSettings",
    "HttpFetcher",
]

DEFAULT_CHUNK = 1 << 16

#: Delays between resumes of a cut body: short, the link is usually back at once.
DEFAULT_RESUME_BACKOFF = BackoffPolicy(base_s=0.5, cap_s=30.0)

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

log = logging.getLogger(__name__)


class DownloadDeadlineError(SlowRetrievalError):
    """A download ran past its overall deadline (too slow for its length)."""


class DownloadCancelledError(DownloadError):
    """A download was cancelled by its caller (e.g. superseded by a newer desired state)."""


@dataclass(frozen=True)
class DownloadSettings:
    """Limits of one download; every field is bounded.

    Attributes:
        connect_timeout_s: connection timeout (0.1 s to 5 min).
        read_timeout_s: longest gap between bytes (0.1 s to 10 min).
        min_rate_bytes_s: slowest acceptable average rate; sizes the deadline (>= 1 B/s).
        base_s: allowance on top of ``length / min_rate`` for the request itself (0.1 s
            to 10 min).
        max_s: no download, however long, may take longer than this (1 s to 1 day).
        max_resumes: how many times a body cut mid-way is resumed with an HTTP Range
            request (0 to 100; 0: never).
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    min_rate_bytes_s: float = 64 * 1024
    base_s: float = 30.0
    max_s: float = 3600.0
    max_resumes: int = 5
    max_rate_bytes_s: float | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_resumes, bool)
            or not isinstance(self.max_resumes, int)
            or not 0 <= self.max_resumes <= 100
        ):
            raise ConfigError(
                f"download setting max_resumes={self.max_resumes} is outside [0, 100]"
            )
        checks = (
            ("connect_timeout_s", self.connect_timeout_s, 0.1, 300.0),
            ("read_timeout_s", self.read_timeout_s, 0.1, 600.0),
            ("min_rate_bytes_s", self.min_rate_bytes_s, 1.0, float(1 << 40)),
            ("base_s", self.base_s, 0.1, 600.0),
            ("max_s", self.max_s, 1.0, 86400.0),
        )
        for name, value, low, high in checks:
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"download setting {name}={value} is outside [{low}, {high}]")
        rate = self.max_rate_bytes_s
        if rate is not None:
            if not (math.isfinite(rate) and 1024.0 <= rate <= float(1 << 40)):
                raise ConfigError(
                    f"download setting max_rate_bytes_s={rate} is outside [1024, {1 << 40}]"
                )
            if rate < self.min_rate_bytes_s:
                raise ConfigError(
                    f"download setting max_rate_bytes_s={rate:.0f} is below "
                    f"min_rate_bytes_s={self.min_rate_bytes_s:.0f}: every large download "
                    "would miss its deadline (lower min_rate_bytes_s too)"
                )

    def deadline_s(self, max_length: int) -> float:
        """Seconds a download of at most ``max_length`` bytes may take in all."""
        return min(self.max_s, self.base_s + max(0, max_length) / self.min_rate_bytes_s)


class _Limits(threading.local):
    """Per-thread limits of the download in progress (ngclient calls ``_fetch(url)`` only)."""

    max_length: int | None = None
    cancel: threading.Event | None = None


class HttpFetcher(FetcherInterface):
    """``FetcherInterface`` over one ``httpx.Client`` (connection reuse, streaming).

    Use :meth:`download_bytes` / :meth:`download_file` (from the base class) for plain
    GETs too: they enforce a maximum length and the deadline sized by it. Safe to use
    from several threads at once (each download's limits are per thread).
    """

    def __init__(
        self,
        token: str | Callable[[], str] | None = None,
        *,
        settings: DownloadSettings | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        verify: ssl.SSLContext | bool = True,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        resume_backoff: BackoffPolicy = DEFAULT_RESUME_BACKOFF,
    ) -> None:
        """Create a fetcher.

        Args:
            token: bearer token sent as ``Authorization: Bearer <token>`` (None or empty: no
                header), or a callable read per request (a device credential that rotates).
            settings: timeouts, minimum rate and deadline bounds.
            chunk_size: most bytes per yielded chunk.
            headers: extra headers for every request (e.g. ``User-Agent``).
            client: a ready ``httpx.Client`` (tests pass one with a ``MockTransport``);
                the fetcher then does not own it and :meth:`close` leaves it open.
            monotonic: the clock deadlines are measured on.
            verify: TLS verification for ``https://`` (a context pinning the hub's CA:
                :func:`modelfleet.delivery.tls.client_verify`).
            sleep: waits between resumes of a cut body (tests pass a fake).
            rand: uniform in [0, 1), the jitter of those waits.
            resume_backoff: the capped exponential backoff between resumes.

        With ``settings.max_rate_bytes_s`` set, bodies are paced on ``monotonic`` and
        ``sleep`` (one budget for the whole fetcher).
        """
        base = {"User-Agent": "modelfleet"}
        base.update(headers or {})
        if token and not callable(token):
            base["Authorization"] = f"Bearer {token}"
        self._token = token if callable(token) else None
        self.settings = settings or DownloadSettings()
        self._headers = base
        self._chunk = chunk_size
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._resume_backoff = resume_backoff
        self._limits = _Limits()
        rate = self.settings.max_rate_bytes_s
        self._budget = (
            RateLimiter(rate, monotonic=monotonic, sleep=sleep) if rate is not None else None
        )
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(
                self.settings.read_timeout_s, connect=self.settings.connect_timeout_s
            ),
            follow_redirects=False,
            verify=verify,
        )

    @contextmanager
    def cancelled_by(self, event: threading.Event | None) -> Iterator[None]:
        """Downloads this thread starts inside the block stop when ``event`` is set."""
        before = self._limits.cancel
        self._limits.cancel = event
        try:
            yield
        finally:
            self._limits.cancel = before

    @contextmanager
    def sized(self, max_length: int) -> Iterator[None]:
        """Downloads this thread starts inside the block get the deadline of a download of
        ``max_length`` bytes (the caller enforces the length itself)."""
        before = self._limits.max_length
        self._limits.max_length = max_length
        try:
            yield
        finally:
            self._limits.max_length = before

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """As the base class, with the deadline sized by ``max_length``."""
        with self.sized(max_length), super().download_file(url, max_length) as f:
            yield f

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Start a GET and return its body as chunks, resuming it if it is cut.

        Raises:
            DownloadHTTPError: any status other than 200 (the body is discarded); on a
                resume, any status other than 200 or 206.
            SlowRetrievalError: connect or read timeout; :class:`DownloadDeadlineError`
                past the overall deadline.
            DownloadCancelledError: cancelled before it started or while it ran.
            DownloadError: any other transport failure (a cut body once ``max_resumes``
                resumes are spent), or a 206 whose ``Content-Range`` does not start where
                the download left off.
        """
        return self._open(url, 0)[1]

    def fetch_from(self, url: str, offset: int) -> tuple[int, Iterator[bytes]]:
        """Start a GET of ``url`` from byte ``offset`` on (``Range: bytes=offset-``); return
        where its body really starts and the body as chunks (resumed if it is cut).

        Used to continue a download kept across restarts (issue 11, ADR 0033 amendment).
        The start is ``offset`` only for a ``206`` whose ``Content-Range`` starts there
        (and whose total, when given, is the length the download may have); a ``200``
        (Range ignored) is the whole body from 0; a ``416`` or a ``206`` with another
        range is dropped and the GET sent again without Range. Either way a start of 0
        tells the caller to start over. The deadline is sized by the bytes still to
        come (``max_length - offset`` inside :meth:`sized`), by the whole length once it
        starts over.

        Raises:
            as :meth:`_fetch`, every error a ``DownloadError``.
        """
        try:
            return self._open(url, max(0, offset))
        except DownloadError:
            raise
        except Exception as e:
            raise DownloadError(f"Failed to download {url}") from e

    def _open(self, url: str, offset: int) -> tuple[int, Iterator[bytes]]:
        cancel = self._limits.cancel
        max_length = self._limits.max_length
        started = self._monotonic()

        def sized_deadline(start: int) -> tuple[float, float]:
            if max_length is None:
                return started + self.settings.max_s, self.settings.max_s
            seconds = self.settings.deadline_s(max(0, max_length - start))
            return started + seconds, seconds

        deadline, deadline_s = sized_deadline(offset)
        if cancel is not None and cancel.is_set():
            raise DownloadCancelledError(f"GET {url}: cancelled")
        response: httpx.Response | None = self._get(url, deadline, deadline_s, offset)
        start = 0
        if offset and response is not None:
            if response.status_code == 206 and self._range_starts_at(response, offset, max_length):
                start = offset
            elif response.status_code in (206, 416):
                log.info(
                    "download %s: HTTP %d %r to a Range from %d, starting over",
                    url,
                    response.status_code,
                    response.headers.get("Content-Range"),
                    offset,
                )
                response.close()
                response = None
            elif response.status_code == 200:
                log.info("download %s: Range from %d ignored (200), starting over", url, offset)
            if start == 0:
                deadline, deadline_s = sized_deadline(0)
        if response is None:
            response = self._get(url, deadline, deadline_s, 0)
        if response.status_code != (206 if start else 200):
            response.close()
            raise DownloadHTTPError(f"GET {url}: HTTP {response.status_code}", response.status_code)
        return start, self._chunks(url, response, deadline, deadline_s, cancel, start)

    @staticmethod
    def _range_starts_at(response: httpx.Response, offset: int, total: int | None) -> bool:
        """Whether a 206's ``Content-Range`` starts at ``offset`` (and, when it names a
        total and ``total`` is known, names that one)."""
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            return False
        return total is None or match.group(3) == "*" or int(match.group(3)) == total

    def _get(self, url: str, deadline: float, deadline_s: float, offset: int) -> httpx.Response:
        """:meth:`_send`, transport failures translated."""
        try:
            return self._send(url, deadline, deadline_s, offset)
        except httpx.TimeoutException as e:
            raise SlowRetrievalError(f"GET {url}: timed out") from e
        except httpx.HTTPError as e:
            raise DownloadError(f"GET {url}: {type(e).__name__}: {e}") from e

    def _send(self, url: str, deadline: float, deadline_s: float, offset: int) -> httpx.Response:
        """Send one GET (from ``offset`` on if it is not 0), timeouts bounded by the deadline."""
        remaining = max(0.1, min(deadline_s, deadline - self._monotonic()))
        read_s = min(self.settings.read_timeout_s, remaining)
        timeout = httpx.Timeout(read_s, connect=min(self.settings.connect_timeout_s, remaining))
        headers = self._headers
        if self._token is not None:
            headers = {**headers, "Authorization": f"Bearer {self._token()}"}
        if offset:
            headers = {**headers, "Range": f"bytes={offset}-"}
        request = self._client.build_request("GET", url, headers=headers, timeout=timeout)
        return self._client.send(request, stream=True)

    def _deadline_error(self, url: str, deadline_s: float) -> DownloadDeadlineError:
        return DownloadDeadlineError(
            f"GET {url}: not finished within its {deadline_s:.0f} s deadline "
            f"(minimum rate {self.settings.min_rate_bytes_s:.0f} B/s)"
        )

    def _resume(
        self,
        url: str,
        offset: int,
        resumes: int,
        deadline: float,
        deadline_s: float,
        cancel: threading.Event | None,
    ) -> tuple[httpx.Response, int]:
        """Wait, then re-issue the GET from ``offset``; return the response and how many
        leading bytes of its body to skip (``offset`` when the server ignored Range)."""
        delay = self._resume_backoff.delay(resumes, self._rand)
        if self._monotonic() + delay > deadline:
            raise self._deadline_error(url, deadline_s)
        self._sleep(delay)
        if cancel is not None and cancel.is_set():
            raise DownloadCancelledError(f"GET {url}: cancelled")
        if self._monotonic() > deadline:
            raise self._deadline_error(url, deadline_s)
        log.info(
            "resuming download %s at offset %d (resume %d of %d)",
            url,
            offset,
            resumes,
            self.settings.max_resumes,
        )
        response = self._send(url, deadline, deadline_s, offset)
        if response.status_code == 200:
            return response, offset
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                response.close()
                raise DownloadError(
                    f"GET {url}: resumed at {offset} but got Content-Range "
                    f"{response.headers.get('Content-Range')!r}"
                )
            return response, 0
        response.close()
        raise DownloadHTTPError(
            f"GET {url}: HTTP {response.status_code} on resume at {offset}",
            response.status_code,
        )

    def _pace(
        self,
        url: str,
        n: int,
        deadline: float,
        deadline_s: float,
        cancel: threading.Event | None,
    ) -> None:
        """Wait as the bandwidth budget asks after ``n`` bytes, in slices of at most 1 s so
        that cancellation is seen; never past the deadline."""
        assert self._budget is not None
        delay = self._budget.reserve(n)
        if delay <= 0:
            return
        if self._monotonic() + delay > deadline:
            raise self._deadline_error(url, deadline_s)
        while delay > 0:
            step = min(delay, 1.0)
            self._sleep(step)
            delay -= step
            if cancel is not None and cancel.is_set():
                raise DownloadCancelledError(f"GET {url}: cancelled")

    def _chunks(
        self,
        url: str,
        response: httpx.Response,
        deadline: float,
        deadline_s: float,
        cancel: threading.Event | None,
        start: int = 0,
    ) -> Iterator[bytes]:
        buffered = bytearray()
        received = start  # bytes of the artefact received so far (kept, yielded or buffered)
        resumes = 0
        skip = 0  # leading bytes of the current body already received (Range ignored)
        current: httpx.Response | None = response
        try:
            while True:
                try:
                    if current is None:
                        resumes += 1
                        current, skip = self._resume(
                            url, received, resumes, deadline, deadline_s, cancel
                        )
                    # No chunk size: each piece the socket delivers comes back at once, so
                    # the deadline and cancellation are checked even when bytes arrive one
                    # by one.
                    for piece in current.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            raise DownloadCancelledError(f"GET {url}: cancelled")
                        if self._monotonic() > deadline:
                            raise self._deadline_error(url, deadline_s)
                        if self._budget is not None:
                            self._pace(url, len(piece), deadline, deadline_s, cancel)
                        if skip:
                            dropped = min(skip, len(piece))
                            skip -= dropped
                            piece = piece[dropped:]
                        buffered += piece
                        received += len(piece)
                        while len(buffered) >= self._chunk:
                            yield bytes(buffered[: self._chunk])
                            del buffered[: self._chunk]
                    if skip:
                        raise httpx.RemoteProtocolError(
                            "body ended before the bytes already received"
                        )
                    break
                except httpx.TimeoutException as e:
                    if self._monotonic() > deadline:
                        raise self._deadline_error(url, deadline_s) from e
                    if resumes >= self.settings.max_resumes:
                        raise SlowRetrievalError(f"GET {url}: timed out mid-body") from e
                except httpx.HTTPError as e:
                    if resumes >= self.settings.max_resumes:
                        raise DownloadError(f"GET {url}: body interrupted: {e}") from e
                if current is not None:
                    current.close()
                    current = None
            if buffered:
                yield bytes(buffered)
        except DownloadError:
            # The bytes received before a download fails are right: hand them over first,
            # so a caller that keeps a partial (issue 11) loses none of them.
            if buffered:
                rest = bytes(buffered)
                buffered.clear()
                yield rest
            raise
        finally:
            if current is not None:
                current.close()

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
