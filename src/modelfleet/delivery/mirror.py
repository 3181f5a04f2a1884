"""The site mirror (issue 11, ADR 0031): one WAN download per artefact for a whole plant.

``modelfleet site serve`` runs :class:`SiteMirror`'s Starlette app. Devices point their hub
URL at it; it serves the hub's URL layout and holds no signing keys: devices verify what it
serves exactly as they verify the hub (TUF: signatures, expiry, rollback, lengths and
hashes), so the mirror needs to trust nothing and verifies only what keeps its own cache
clean.

What it serves (the device's view is the hub's):

* ``GET /tuf/<repo>/targets/<.../<sha256>.<name>>`` — consistent-snapshot targets,
  immutable: fetched from the hub once (concurrent requests for one artefact share ONE
  upstream download: single flight; a cut download resumes with ``Range``), checked against
  the sha256 their name carries, written atomically into the cache (a site tree,
  :mod:`modelfleet.delivery.mirror_cache`) and served from disk (with HTTP ``Range``).
  Shared catalog targets are fetched with the mirror's own token (if configured).
* ``GET /tuf/.../metadata/<file>`` and ``GET /api/v1/trust-root`` — forwarded to the hub
  with the device's own token (per-device director metadata is per device) and cached;
  ``<N>.<role>.json`` versions are served from the cache once held, ``timestamp.json`` and
  the rest after ``metadata_ttl_s``. When the hub is unreachable the cached copy is served
  as it is (``X-Modelfleet-Mirror: stale``): the device's TUF client decides whether it is
  still acceptable (expiry, rollback).
* ``POST /api/v1/devices/<id>/telemetry`` — checked as the hub checks a batch, kept in the
  mirror's durable outbox (:mod:`modelfleet.delivery.mirror_relay`) and answered as the
  hub answers; a drain task sends the outbox upstream (the hub's exactly-once ingest
  dedupes a batch sent twice).
* any other ``/api/v1/...`` (check-ins, whoami, credential rotation) — forwarded; while the
  hub is unreachable: ``503`` with ``Retry-After`` (the agent backs off and keeps serving).
* ``GET /-/mirror/status`` — the mirror's counters (no secrets).

Who is served from the cache: a token the hub has accepted for that content before
(:class:`~modelfleet.delivery.mirror_cache.TokenMemo`; a device's own director files only to
a token accepted for that device). An unknown token is checked with the hub
(``/api/v1/whoami``) first; while the hub is away it gets ``503``.

A bandwidth budget (issue 11, ADR 0038): with ``max_rate_bytes_s`` set, the bodies of all
upstream artefact downloads together are paced by one token bucket
(:class:`~modelfleet.delivery.ratelimit.AsyncRateLimiter`): the site's WAN budget, however
many artefacts are fetched at once. Metadata, check-ins and telemetry are not paced (small,
and a device waiting on them would only retry).

Upstream calls use httpx with deadlines and retries with capped exponential backoff and full
jitter (:mod:`modelfleet.backoff`); after a failure the hub is left alone for a backoff
delay (requests in that time are served from the cache at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from modelfleet.backoff import BackoffPolicy
from modelfleet.delivery import site_tree
from modelfleet.delivery.mirror_cache import (
    ANY_DEVICE,
    SHARED,
    MirrorCache,
    TokenMemo,
    immutable_digest,
    is_versioned_metadata,
    scope_of,
)
from modelfleet.delivery.mirror_relay import TelemetryOutbox, accepted_answer
from modelfleet.delivery.ratelimit import AsyncRateLimiter
from modelfleet.delivery.tls import client_verify
from modelfleet.errors import (
    ArtefactVerificationError,
    ConfigError,
    InvalidInputError,
    StorageError,
    TransportError,
)

__all__ = ["MirrorConfig", "SiteMirror"]

log = logging.getLogger("modelfleet.mirror")

#: Statuses worth another try: the hub is there but busy or restarting.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_DEVICE_API = "/api/v1/devices/"
_HEADER = "X-Modelfleet-Mirror"
_UNKNOWN_OFFLINE = "the hub is unreachable and it has not accepted this token yet"
_OFFLINE_TELEMETRY = (
    "this site mirror is offline (fed by removable media): keep telemetry buffered for "
    "`modelfleet bundle report`"
)


@dataclass(frozen=True)
class MirrorConfig:
    """How the mirror reaches the hub and keeps its cache; every field is bounded.

    Attributes:
        hub_url: the hub's base URL (``http://`` or ``https://``).
        cache_dir: the cache (a site tree) and the mirror's own state (``.mirror/``).
        token: the mirror's own credential for shared catalog targets (None: the
            requesting device's token is used).
        hub_ca: a PEM file of the CA the hub's TLS certificate is checked against (None:
            the system's CAs).
        metadata_ttl_s: how long a fetched ``timestamp.json`` (and other unversioned
            metadata) is served without asking the hub again (0 to 1 h).
        connect_timeout_s: connection timeout to the hub (0.1 s to 2 min).
        read_timeout_s: longest gap between bytes from the hub (0.1 s to 10 min).
        attempts: tries per upstream GET (1 to 10).
        backoff: delays between tries, and how long the hub is left alone after a failure.
        drain_interval_s: how often the telemetry outbox is sent upstream (0.05 s to 1 h).
        max_target_bytes: no artefact download grows beyond this.
        max_body_bytes: the largest request body taken from a device.
        outbox_max_bytes: the telemetry outbox's bound.
        offline: fed by removable media (issue 11, ADR 0034): the hub is never contacted;
            tokens are those the imported bundles listed, ``whoami`` is answered from them,
            and telemetry is refused with 503 so it stays in each device's buffer for
            ``bundle report``.
        max_rate_bytes_s: the site's WAN budget for upstream artefact downloads, all of
            them together (1 KiB/s to 1 TiB/s; None: unlimited).
    """

    hub_url: str
    cache_dir: Path
    token: str | None = None
    hub_ca: Path | None = None
    metadata_ttl_s: float = 2.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    attempts: int = 3
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=0.5, cap_s=30.0))
    drain_interval_s: float = 2.0
    max_target_bytes: int = 64 << 30
    max_body_bytes: int = 16 << 20
    outbox_max_bytes: int = 256 << 20
    offline: bool = False
    max_rate_bytes_s: float | None = None

    def __post_init__(self) -> None:
        if not self.hub_url.startswith(("http://", "https://")):
            raise ConfigError(f"the hub URL must be http:// or https://, not {self.hub_url!r}")
        checks = (
            ("metadata_ttl_s", self.metadata_ttl_s, 0.0, 3600.0),
            ("connect_timeout_s", self.connect_timeout_s, 0.1, 120.0),
            ("read_timeout_s", self.read_timeout_s, 0.1, 600.0),
            ("attempts", self.attempts, 1, 10),
            ("drain_interval_s", self.drain_interval_s, 0.05, 3600.0),
            ("max_target_bytes", self.max_target_bytes, 1, 1 << 40),
            ("max_body_bytes", self.max_body_bytes, 1024, 1 << 30),
            ("outbox_max_bytes", self.outbox_max_bytes, 1 << 16, 1 << 40),
        )
        for name, value, low, high in checks:
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"mirror setting {name}={value} is outside [{low}, {high}]")
        rate = self.max_rate_bytes_s
        if rate is not None and not (math.isfinite(rate) and 1024.0 <= rate <= float(1 << 40)):
            raise ConfigError(
                f"mirror setting max_rate_bytes_s={rate} is outside [1024, {1 << 40}]"
            )
        if self.hub_ca is not None and not Path(self.hub_ca).is_file():
            raise ConfigError(f"--hub-ca {self.hub_ca}: no such file")

    def ssl_verify(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify=`` gets: a context pinning ``hub_ca`` (that CA and no
        other, as the agent does: :func:`modelfleet.delivery.tls.client_verify`), or the
        defaults.

        Raises:
            ConfigError: ``hub_ca`` is not a readable PEM CA file.
        """
        return client_verify(Path(self.hub_ca) if self.hub_ca is not None else None)


class _UpstreamStatusError(Exception):
    """The hub answered an artefact request with a final non-success status."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


class SiteMirror:
    """The mirror: its cache, its outbox, its link to the hub and the ASGI app over them.

    Args:
        config: see :class:`MirrorConfig`.
        transport: an httpx async transport to the hub (tests pass one that counts or
            fails); None: a real connection.
        monotonic: the clock TTLs and the hub's backoff are measured on.
        rand: uniform random source in [0, 1) for the jitter.
        sleep: how to wait between tries, and as the bandwidth budget asks.
        drain: run the outbox drain task with the app (tests call :meth:`drain_once`).

    Raises:
        ConfigError: a bad CA file. StorageError: the cache cannot be created.
    """

    def __init__(
        self,
        config: MirrorConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        drain: bool = True,
    ) -> None:
        self.config = config
        self.cache = MirrorCache(config.cache_dir)
        self.memo = TokenMemo(self.cache.state_dir / "tokens.json")
        self.outbox = TelemetryOutbox(
            self.cache.state_dir / "telemetry-outbox.sqlite", max_bytes=config.outbox_max_bytes
        )
        self._hub = config.hub_url.rstrip("/")
        self._transport = transport
        self._verify = config.ssl_verify()
        self._clock = monotonic
        self._rand = rand
        self._sleep = sleep
        self._drain = drain
        rate = config.max_rate_bytes_s
        #: One budget for every upstream artefact download of this mirror (the site's WAN).
        self._budget = (
            AsyncRateLimiter(rate, monotonic=monotonic, sleep=sleep) if rate is not None else None
        )
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self._fetched_at: dict[str, float] = {}
        self._missing_at: dict[str, float] = {}  # 404s from the hub, kept for the TTL
        self._failures = 0
        self._down_until = 0.0
        self._wake: asyncio.Event | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "upstream_requests",
                "upstream_bytes",
                "upstream_target_downloads",
                "upstream_target_bytes",
                "served_from_cache",
                "served_stale",
                "cache_rejected",
                "hub_failures",
            ),
            0,
        )
        self.app = Starlette(
            routes=[
                Route("/api/v1/trust-root", self._trust_root, methods=["GET"]),
                Route("/api/v1/devices/{device_id}/telemetry", self._telemetry, methods=["POST"]),
                Route(
                    "/api/v1/{rest:path}",
                    self._forward,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
                Route("/tuf/{rest:path}", self._tuf, methods=["GET"]),
                Route("/-/mirror/status", self._status, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # -- lifecycle ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        del app
        self._wake = asyncio.Event()
        drain = self._drain and not self.config.offline
        task = asyncio.create_task(self._drain_forever()) if drain else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.aclose()

    async def aclose(self) -> None:
        """Close the hub connection and the outbox."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.outbox.close()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._hub,
                transport=self._transport,
                verify=self._verify,
                timeout=httpx.Timeout(
                    self.config.read_timeout_s, connect=self.config.connect_timeout_s
                ),
                headers={"User-Agent": "modelfleet-site-mirror"},
                follow_redirects=False,
            )
        return self._client

    def status(self) -> dict[str, Any]:
        """Counters, the outbox's figures and whether the hub is being left alone."""
        return {
            "hub": self._hub,
            "offline": self.config.offline,
            "hub_reachable": not self._hub_down(),
            "counters": dict(self.counters),
            "telemetry_outbox": self.outbox.stats(),
            "downloads_in_flight": len(self._inflight),
        }

    # -- the hub's health --------------------------------------------------------------------

    def _hub_down(self) -> bool:
        return self.config.offline or self._clock() < self._down_until

    def _unavailable(self, message: str) -> Response:
        """503 with ``Retry-After``: when the mirror will ask the hub again (at least 1 s)."""
        wait = 300 if self.config.offline else max(1, math.ceil(self._down_until - self._clock()))
        return JSONResponse(
            {"error": message},
            status_code=503,
            headers={"Retry-After": str(wait), _HEADER: "hub-unreachable"},
        )

    def _hub_failed(self, why: str) -> None:
        self._failures += 1
        self.counters["hub_failures"] += 1
        delay = self.config.backoff.delay(self._failures, self._rand)
        self._down_until = self._clock() + delay
        if self._failures == 1:
            log.warning("hub %s unreachable (%s): serving the cache", self._hub, why)
        else:
            log.debug("hub still unreachable (%s); next try in %.1f s", why, delay)

    def _hub_ok(self) -> None:
        if self._failures:
            log.info("hub %s reachable again", self._hub)
        self._failures = 0
        self._down_until = 0.0

    async def _upstream(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        attempts: int | None = None,
    ) -> httpx.Response | None:
        """One request to the hub with retries; None when it could not be reached (or kept
        answering 429/502/503/504), and the hub is then left alone for a backoff delay."""
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        tries = attempts or self.config.attempts
        why = ""
        for n in range(1, tries + 1):
            self.counters["upstream_requests"] += 1
            try:
                r = await self._http().request(method, path, content=content, headers=headers)
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            else:
                self.counters["upstream_bytes"] += len(r.content)
                if r.status_code not in _RETRY_STATUSES:
                    self._hub_ok()  # it answered (a 500 too: passed on, not retried)
                    return r
                why = f"HTTP {r.status_code}"
            if n < tries:
                await self._sleep(self.config.backoff.delay(n, self._rand))
        self._hub_failed(f"{method} {path}: {why}")
        return None

    def _learn(self, token: str, scope: str, status: int) -> None:
        if 200 <= status < 300 or status == 404:
            self.memo.learn(token, scope)
        elif status == 401:
            self.memo.forget(token)
        elif status == 403:
            self.memo.forget(token, scope)

    # -- metadata ----------------------------------------------------------------------

    async def _trust_root(self, request: Request) -> Response:
        return await self._metadata(request, site_tree.TRUST_ROOT, "/api/v1/trust-root")

    async def _tuf(self, request: Request) -> Response:
        relative = "tuf/" + str(request.path_params["rest"])
        try:
            site_tree.tree_path(relative)
        except InvalidInputError as e:
            return _error(400, str(e))
        if immutable_digest(relative) is not None:
            return await self._target(request, relative)
        return await self._metadata(request, relative, "/" + relative)

    async def _metadata(self, request: Request, relative: str, upstream: str) -> Response:
        token = _bearer(request)
        if token is None:
            return _error(401, "no bearer token")
        scope = scope_of(relative)
        allowed = self.memo.allows(token, scope)
        cached = self.cache.read(relative) if allowed else None
        if cached is not None and (is_versioned_metadata(relative) or self._fresh(relative)):
            self.counters["served_from_cache"] += 1
            return _metadata_response(cached, "hit")
        if allowed and cached is None and self._fresh(relative, self._missing_at):
            # every device's refresh probes for the next root version: asked once per TTL
            self.counters["served_from_cache"] += 1
            return _error(404, f"{relative}: the hub has no such file")
        if not self._hub_down():
            r = await self._upstream("GET", upstream, token)
            if r is not None:
                self._learn(token, scope, r.status_code)
                if r.status_code == 200:
                    self._missing_at.pop(relative, None)
                    self._keep(relative, r.content)
                    return _metadata_response(r.content, "miss")
                if r.status_code == 404:
                    self._missing_at[relative] = self._clock()
                return _passthrough(r)
        if not self.memo.allows(token, scope):
            return self._unavailable(_UNKNOWN_OFFLINE)
        cached = self.cache.read(relative)
        if cached is None:
            # 404, as the hub answers a root version it does not have: ngclient stops
            # probing for newer roots there and goes on with what it holds.
            return _error(404, f"{relative}: not in the mirror's cache (hub unreachable)")
        self.counters["served_stale"] += 1
        return _metadata_response(cached, "stale")

    def _fresh(self, relative: str, seen: dict[str, float] | None = None) -> bool:
        at = (self._fetched_at if seen is None else seen).get(relative)
        return at is not None and self._clock() - at < self.config.metadata_ttl_s

    def _keep(self, relative: str, data: bytes) -> None:
        try:
            self.cache.store(relative, data)
        except StorageError as e:
            log.warning("not cached: %s", e)
            return
        self._fetched_at[relative] = self._clock()

    # -- targets ---------------------------------------------------------------------------

    async def _target(self, request: Request, relative: str) -> Response:
        token = _bearer(request)
        if token is None:
            return _error(401, "no bearer token")
        scope = scope_of(relative)
        refused = await self._authorize(token, scope)
        if refused is not None:
            return refused
        path = await run_in_threadpool(self.cache.verified_target, relative)
        if path is not None:
            self.counters["served_from_cache"] += 1
            return FileResponse(
                path, media_type="application/octet-stream", headers={_HEADER: "hit"}
            )
        if self._hub_down():
            return self._unavailable(f"{relative}: not in the mirror's cache and the hub is away")
        fetch_token = self.config.token if scope == SHARED and self.config.token else token
        try:
            path = await self._single_flight(relative, fetch_token)
        except _UpstreamStatusError as e:
            if e.status == 401 and fetch_token == token:
                self.memo.forget(token)
            return Response(e.body, status_code=e.status, media_type=e.content_type)
        except TransportError as e:
            return self._unavailable(str(e))
        except ArtefactVerificationError as e:
            self.counters["cache_rejected"] += 1
            log.warning("REFUSED to cache %s: %s", relative, e)
            return _error(502, str(e))
        except StorageError as e:
            return _error(507, str(e))
        return FileResponse(path, media_type="application/octet-stream", headers={_HEADER: "miss"})

    async def _authorize(self, token: str, scope: str) -> Response | None:
        """None when ``token`` may read ``scope`` (known, or the hub says so now)."""
        if self.memo.allows(token, scope):
            return None
        if self._hub_down():
            return self._unavailable(_UNKNOWN_OFFLINE)
        r = await self._upstream("GET", "/api/v1/whoami", token)
        if r is None:
            return self._unavailable(_UNKNOWN_OFFLINE)
        if r.status_code != 200:
            self._learn(token, SHARED, r.status_code)
            return _passthrough(r)
        self._learn_identity(token, r.content)
        if self.memo.allows(token, scope):
            return None
        return _error(403, "this token may not read another device's files")

    def _learn_identity(self, token: str, body: bytes) -> None:
        try:
            who = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(who, dict):
            return
        if who.get("role") == "device" and isinstance(who.get("device_id"), str):
            self.memo.learn(token, f"device:{who['device_id']}")
        elif who.get("role"):
            self.memo.learn(token, ANY_DEVICE)

    async def _single_flight(self, relative: str, token: str) -> Path:
        """The cached file of ``relative``, downloaded once however many ask at once."""
        task = self._inflight.get(relative)
        if task is None:
            task = asyncio.ensure_future(self._download(relative, token))
            self._inflight[relative] = task
            task.add_done_callback(lambda _t: self._inflight.pop(relative, None))
        # shield: a device hanging up does not cancel the download the others wait for
        return await asyncio.shield(task)

    async def _download(self, relative: str, token: str) -> Path:
        """Fetch ``relative`` from the hub into the cache, resuming a cut download with
        ``Range``; the whole file is checked against its name's sha256 before it is kept.

        Raises:
            _UpstreamStatusError: the hub refused (404, 401...). TransportError: it could not
                be reached in ``attempts`` tries. ArtefactVerificationError: wrong bytes.
        """
        tmp = self.cache.partial_path(relative)
        await run_in_threadpool(tmp.parent.mkdir, parents=True, exist_ok=True)
        self.counters["upstream_target_downloads"] += 1
        log.info("fetching %s from the hub", relative)
        why = ""
        for n in range(1, self.config.attempts + 1):
            try:
                done = await self._download_piece(relative, token, tmp)
            except (httpx.HTTPError, TransportError) as e:
                why = f"{type(e).__name__}: {e}"
                done = False
            if done:
                self._hub_ok()
                return await run_in_threadpool(self.cache.commit_partial, relative)
            if n < self.config.attempts:
                await self._sleep(self.config.backoff.delay(n, self._rand))
        self._hub_failed(f"GET {relative}: {why}")
        raise TransportError(f"{relative}: the hub could not be reached ({why})")

    async def _download_piece(self, relative: str, token: str, tmp: Path) -> bool:
        have = tmp.stat().st_size if tmp.exists() else 0
        headers = {"Authorization": f"Bearer {token}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        self.counters["upstream_requests"] += 1
        async with self._http().stream("GET", "/" + relative, headers=headers) as r:
            if r.status_code == 206 and have:
                mode = "ab"
            elif r.status_code == 200:
                mode, have = "wb", 0
            elif r.status_code == 416 and have:
                return True  # the partial file is whole already; its hash decides
            elif r.status_code in _RETRY_STATUSES:
                raise TransportError(f"HTTP {r.status_code}")
            else:
                body = await r.aread()
                raise _UpstreamStatusError(
                    r.status_code, body, r.headers.get("content-type", "application/json")
                )
            with open(tmp, mode) as out:
                async for chunk in r.aiter_bytes():
                    have += len(chunk)
                    self.counters["upstream_bytes"] += len(chunk)
                    self.counters["upstream_target_bytes"] += len(chunk)
                    if have > self.config.max_target_bytes:
                        out.close()
                        tmp.unlink(missing_ok=True)
                        raise ArtefactVerificationError(
                            f"{relative}: larger than {self.config.max_target_bytes} bytes"
                        )
                    out.write(chunk)
                    if self._budget is not None:
                        await self._budget.wait(len(chunk))
        return True

    # -- relay -----------------------------------------------------------------------------

    async def _telemetry(self, request: Request) -> Response:
        token = _bearer(request)
        if token is None:
            return _error(401, "no bearer token")
        device_id = str(request.path_params["device_id"])
        body = await _body(request, self.config.max_body_bytes)
        if body is None:
            return _error(413, "the batch is too large")
        scope = f"device:{device_id}"
        if self.config.offline:
            # media-fed: the device keeps its windows for `bundle report` (the return channel)
            return _error(503, _OFFLINE_TELEMETRY, retry_after=3600)
        if not self.memo.allows(token, scope):
            # Never seen: the hub decides (and the mirror learns the token from its answer).
            if self._hub_down():
                return self._unavailable(_UNKNOWN_OFFLINE)
            r = await self._upstream(
                "POST", request.url.path, token, content=body,
                content_type="application/json", attempts=1,
            )  # fmt: skip
            if r is None:
                return self._unavailable("the hub is unreachable")
            self._learn(token, scope, r.status_code)
            return _passthrough(r)
        try:
            answer = accepted_answer(body, device_id)
        except InvalidInputError as e:
            log.warning("telemetry batch of %s refused: %s", device_id, e)
            return _error(400, str(e))
        try:
            await run_in_threadpool(self.outbox.add, device_id, token, body)
        except StorageError as e:
            log.warning("telemetry batch of %s not buffered: %s", device_id, e)
            return self._unavailable(str(e))
        if self._wake is not None:
            self._wake.set()
        return JSONResponse(answer)

    async def drain_once(self) -> int:
        """Send buffered batches upstream until the outbox is empty or the hub fails;
        returns how many left the outbox."""
        sent = 0
        while not self._hub_down():
            items = await run_in_threadpool(self.outbox.pending, 20)
            if not items:
                break
            for item in items:
                path = f"{_DEVICE_API}{item.device_id}/telemetry"
                r = await self._upstream(
                    "POST", path, item.token, content=item.body,
                    content_type="application/json", attempts=1,
                )  # fmt: skip
                if r is not None and r.status_code == 401 and self.config.token:
                    r = await self._upstream(
                        "POST", path, self.config.token, content=item.body,
                        content_type="application/json", attempts=1,
                    )  # fmt: skip
                if r is None or r.status_code >= 500 or r.status_code == 429:
                    await run_in_threadpool(self.outbox.failed, item.id)
                    if r is not None:
                        self._hub_failed(f"POST {path}: HTTP {r.status_code}")
                    return sent
                if r.is_success:
                    await run_in_threadpool(self.outbox.done, item.id, "forwarded")
                else:
                    log.warning(
                        "telemetry batch %d of %s dropped: the hub refused it (HTTP %d: %.200s)",
                        item.id, item.device_id, r.status_code, r.text,
                    )  # fmt: skip
                    await run_in_threadpool(self.outbox.done, item.id, "dropped")
                sent += 1
        return sent

    async def _drain_forever(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.drain_once()
            except Exception:  # the loop must outlive any one failure
                log.exception("telemetry drain failed")
            wait = self.config.drain_interval_s
            if self._hub_down():
                wait = max(wait, self._down_until - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()

    async def _forward(self, request: Request) -> Response:
        """Any other ``/api/v1`` call (check-ins, whoami, rotation): forwarded once."""
        token = _bearer(request)
        path = request.url.path
        if self.config.offline and path == "/api/v1/whoami" and request.method == "GET":
            return self._offline_whoami(token)
        if self._hub_down():
            return self._unavailable("the hub is unreachable: try again later")
        body = await _body(request, self.config.max_body_bytes)
        if body is None:
            return _error(413, "the request body is too large")
        if request.url.query:
            path = f"{path}?{request.url.query}"
        r = await self._upstream(
            request.method, path, token, content=body or None,
            content_type=request.headers.get("content-type"),
            attempts=self.config.attempts if request.method == "GET" else 1,
        )  # fmt: skip
        if r is None:
            return self._unavailable("the hub is unreachable: try again later")
        if token:
            if request.url.path == "/api/v1/whoami" and r.status_code == 200:
                self._learn_identity(token, r.content)
            elif request.url.path.startswith(_DEVICE_API):
                device = request.url.path[len(_DEVICE_API) :].split("/", 1)[0]
                self._learn(token, f"device:{device}", r.status_code)
        return _passthrough(r)

    def _offline_whoami(self, token: str | None) -> Response:
        """``whoami`` from the imported bundles' credential digests (offline mirrors)."""
        device = None if token is None else self.memo.device_of(token)
        if device is None:
            return _error(401, "this offline mirror's bundles list no such device credential")
        return JSONResponse({"subject": device, "role": "device", "device_id": device})

    async def _status(self, request: Request) -> Response:
        del request
        return JSONResponse(self.status())


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def _body(request: Request, limit: int) -> bytes | None:
    """The request body, or None past ``limit`` bytes."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _metadata_response(data: bytes, how: str) -> Response:
    return Response(
        data,
        media_type="application/json",
        headers={"Cache-Control": "no-store", _HEADER: how},
    )


def _passthrough(r: httpx.Response) -> Response:
    headers = {_HEADER: "forwarded"}
    if "retry-after" in r.headers:
        headers["Retry-After"] = r.headers["retry-after"]
    return Response(
        r.content,
        status_code=r.status_code,
        media_type=r.headers.get("content-type"),
        headers=headers,
    )


def _error(status: int, message: str, retry_after: int | None = None) -> Response:
    headers = {_HEADER: "error"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message}, status_code=status, headers=headers)
