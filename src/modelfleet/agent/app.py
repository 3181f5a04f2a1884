"""The agent's HTTP app: Open Inference Protocol v2 REST, agent control, Prometheus metrics.

Endpoints (KServe ``required_api.md`` plus Triton's binary tensor extension):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (ready iff a model is routed)
* ``GET /v2`` server metadata; ``GET /v2/models/{m}[/versions/{v}]`` model metadata
* ``GET /v2/models/{m}[/versions/{v}]/ready``
* ``POST /v2/models/{m}[/versions/{v}]/infer`` (no Content-Type needed: ``tritonclient``
  sends none)
* ``GET /agent/status``, ``POST /agent/rollback`` (bearer control token)
* ``GET /metrics``

Errors are always ``{"error": "..."}``. Without a version in the URL the router picks one
(split/shadow); the response header ``modelfleet-version`` names it, and a caller that sends
it back pins that version; ``modelfleet-routing-key`` makes a split sticky.

ONNX Runtime runs inline on the event loop for small batches: for small models a thread hop
costs more than the inference itself. Batches above ``ServingLimits.inline_max_rows`` go to a
worker thread. Shadow copies are compared off the request path (:mod:`modelfleet.serving.shadow`).
Every served request (not 4xx) and shadow comparison can be reported to a
:class:`RequestObserver` (the SLO guard).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import orjson
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from modelfleet import __version__
from modelfleet.agent.metrics import (
    OUTCOME_CLIENT_ERROR,
    OUTCOME_SERVER_ERROR,
    OUTCOME_SUCCESS,
    AgentMetrics,
)
from modelfleet.agent.upstream import UpstreamAnswer, UpstreamClient
from modelfleet.errors import (
    AuthError,
    ConflictError,
    DeadlineExceededError,
    ForbiddenError,
    InvalidInputError,
    InvalidTensorError,
    ModelfleetError,
    NotFoundError,
    PayloadTooLargeError,
    UnauthenticatedError,
)
from modelfleet.serving.cascade import CascadeRoute, route_for
from modelfleet.serving.host import ModelHost
from modelfleet.serving.oip import HEADER_LENGTH, decode_infer_request, encode_infer_body
from modelfleet.serving.router import choose
from modelfleet.serving.runtime import LoadedModel
from modelfleet.serving.shadow import ShadowMirror

__all__ = [
    "EXTENSIONS",
    "PINNED_VERSION_HEADER",
    "PLATFORM",
    "ROUTING_KEY_HEADER",
    "VERSION_HEADER",
    "AgentControl",
    "RequestObserver",
    "ServingLimits",
    "ShadowSettings",
    "build_agent_app",
]

_log = logging.getLogger(__name__)

#: Response header naming the version that answered.
VERSION_HEADER: Final = "modelfleet-version"
#: Request header that pins a version (the value of an earlier ``modelfleet-version``).
PINNED_VERSION_HEADER: Final = "modelfleet-version"
#: Request header whose value makes a split sticky (a user, session or device id).
ROUTING_KEY_HEADER: Final = "modelfleet-routing-key"
PLATFORM: Final = "onnx_onnxv1"
EXTENSIONS: Final = ("binary_tensor_data",)

_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """Bounds on what one inference request may ask for.

    Attributes:
        max_body_bytes: largest request body (after decompression), else 413.
        max_batch: largest first dimension of any input tensor, else 413.
        inline_max_rows: requests up to this batch run ONNX Runtime inline on the event
            loop (a thread hop costs more than a small model's inference); larger ones run
            on a worker thread so they do not stall other requests (ORT releases the GIL).
        request_timeout_s: a body that has not fully arrived, or an off-loop inference
            that has not finished, within this many seconds gets 503 (inline inference of
            small batches is never interrupted).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 4096
    inline_max_rows: int = 64
    request_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """Shadow mirroring knobs.

    Attributes:
        queue_size: mirrored requests that may wait; more are dropped and counted.
        tolerance: largest absolute difference of floating-point outputs that still agrees.
    """

    queue_size: int = 64
    tolerance: float = 1e-4


class RequestObserver(Protocol):
    """Receives every served request and shadow comparison (e.g. the agent's SLO guard).

    Called on the serving event loop; implementations must be quick and must not block.
    Requests refused as the caller's fault (4xx) are not reported: they say nothing about
    the model version.
    """

    def observe(
        self,
        model: str,
        version: str,
        latency_s: float,
        error: bool = False,
        confidence: float | None = None,
    ) -> None:
        """One request served by ``version``: its latency, whether the server failed (5xx),
        and the mean top-class probability when the model has a probabilities output."""
        ...

    def observe_comparison(self, model: str, version: str, disagreed: bool) -> None:
        """One finished shadow comparison of candidate ``version`` against production."""
        ...


class AgentControl(Protocol):
    """What the agent daemon offers to the control endpoints."""

    @property
    def token(self) -> str:
        """The bearer token that ``/agent/*`` requests must present."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able description of the agent (slots, versions, update state)."""
        ...

    def rollback(self, reason: str) -> dict[str, Any]:
        """Roll every model back to its previous version; return a JSON-able result.

        Raises:
            ConflictError: there is nothing to roll back to.
        """
        ...


_STATUS_BY_ERROR: Final[tuple[tuple[type[ModelfleetError], int], ...]] = (
    (PayloadTooLargeError, 413),
    (DeadlineExceededError, 503),
    (NotFoundError, 404),
    (InvalidInputError, 400),
    (UnauthenticatedError, 401),
    (ForbiddenError, 403),
    (AuthError, 401),
    (ConflictError, 409),
)


def _status_of(error: ModelfleetError) -> int:
    for kind, status in _STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, _JSON)


def _json(doc: Any) -> Response:
    return Response(orjson.dumps(doc), 200, None, _JSON)


class _Send(Protocol):
    async def __call__(self, message: dict[str, Any]) -> None: ...


class _Receive(Protocol):
    async def __call__(self) -> dict[str, Any]: ...


class _BodyDeadlines:
    """Bounds how long a request body may take to arrive, at well under 1 µs per request.

    ``asyncio.timeout`` costs ~5 µs per use (a Timeout object plus a timer scheduled and
    cancelled), a third of the agent's whole overhead budget. Instead, each body read is
    registered with its start time, and one timer callback, re-armed only while reads are
    pending, cancels the reads that overran; :meth:`read` turns that cancellation into
    :class:`DeadlineExceededError`.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._period = min(max(timeout_s / 4, 0.005), 1.0)
        self._pending: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, reading: Any, started: float) -> bytes:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under ASGI servers
            body: bytes = await reading
            return body
        self._pending[task] = started
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)
        try:
            body = await reading
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                task.uncancel()
                raise DeadlineExceededError(
                    f"the request body did not arrive within {self._timeout:g} s"
                ) from None
            raise
        finally:
            del self._pending[task]
        return body

    def _tick(self) -> None:
        self._timer = None
        if not self._pending:
            return
        limit = time.perf_counter() - self._timeout
        for task, started in list(self._pending.items()):
            if started < limit and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _ClientGone(Exception):
    """The client disconnected before the body was read."""


async def _read_body(
    receive: _Receive, declared: bytes | None, encoding: bytes | None, limit: int
) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes before buffering them all.

    Raises:
        PayloadTooLargeError: the body (or its decompressed form) exceeds ``limit``.
        InvalidTensorError: a bad Content-Length or compressed body.
        _ClientGone: the client went away.
    """
    too_large = f"the request body exceeds the limit of {limit} bytes"
    if declared is not None:
        if not declared.isdigit():
            raise InvalidTensorError("Content-Length is not an integer")
        if int(declared) > limit:
            raise PayloadTooLargeError(too_large)
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
    elif len(body) > limit:
        raise PayloadTooLargeError(too_large)
    if encoding is None or encoding == b"identity":
        return body
    # tritonclient's request_compression_algorithm="gzip"|"deflate"
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidTensorError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == b"gzip" else 0))
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidTensorError(f"the compressed request body is corrupt: {e}") from None
    if len(plain) > limit:
        raise PayloadTooLargeError(too_large)
    if not inflater.eof:
        raise InvalidTensorError("the compressed request body is truncated")
    return plain


_H_CONTENT_LENGTH: Final = b"content-length"
_H_CONTENT_ENCODING: Final = b"content-encoding"
_H_HEADER_LENGTH: Final = HEADER_LENGTH.encode()
_H_ROUTING_KEY: Final = ROUTING_KEY_HEADER.encode()
_H_PINNED: Final = PINNED_VERSION_HEADER.encode()
_H_VERSION: Final = VERSION_HEADER.encode()
_H_ROUTE: Final = b"modelfleet-route"
_JSON_HEADER: Final = (b"content-type", b"application/json")
_BINARY_HEADER: Final = (b"content-type", b"application/octet-stream")


class _InferEndpoint:
    """``POST .../infer`` as a bare ASGI app.

    Starlette's Request/Response objects cost more than the inference of a small model, so
    this endpoint reads the headers once from the scope and sends raw ASGI messages.
    """

    def __init__(
        self,
        host: ModelHost,
        mirror: ShadowMirror,
        stats: AgentMetrics,
        limits: ServingLimits,
        rng: Callable[[], float],
        observer: RequestObserver | None,
        cascade: UpstreamClient | None = None,
        count_route: Callable[[str, str], None] | None = None,
    ) -> None:
        self._host = host
        self._observer = observer
        self._cascade = cascade
        self._count_route = count_route or (lambda model, route: None)
        self._mirror = mirror
        self._observe = stats.observe_request
        self._max_body = limits.max_body_bytes
        self._max_batch = limits.max_batch
        self._inline_max_rows = limits.inline_max_rows
        self._timeout = limits.request_timeout_s
        self._deadlines = _BodyDeadlines(limits.request_timeout_s)
        self._rng = rng

    async def __call__(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        start = time.perf_counter()
        params = scope["path_params"]
        name: str = params["model"]
        version: str | None = params.get("version")
        declared = encoding = header_length = routing_key = pinned = None
        for key, value in scope["headers"]:
            if key == _H_CONTENT_LENGTH:
                declared = value
            elif key == _H_HEADER_LENGTH:
                header_length = value
            elif key == _H_ROUTING_KEY:
                routing_key = value.decode("latin-1")
            elif key == _H_PINNED:
                pinned = value.decode("latin-1")
            elif key == _H_CONTENT_ENCODING:
                encoding = value.lower()
        route = self._host.route(name)  # read once: a concurrent swap cannot split a request
        if route is None:
            await _send_error(send, 404, f"unknown model {name!r}", None)
            return
        shadow_model: LoadedModel | None = None
        if version is None:
            model, shadow_model = choose(route, routing_key, pinned, self._rng())
        else:
            found = route.find(version)
            if found is None:
                message = f"model {name!r} has no loaded version {version!r}"
                await _send_error(send, 404, message, None)
                return
            model = found
        served = model.version
        outcome = OUTCOME_SERVER_ERROR
        confidence: float | None = None
        cascade = self._cascade
        if cascade is not None and not cascade.settings.applies_to(name):
            cascade = None
        upstream: UpstreamAnswer | None = None
        cascade_route = CascadeRoute.LOCAL
        body = b""
        local_elapsed: float | None = None
        compute: float | None = None
        try:
            body = await self._deadlines.read(
                _read_body(receive, declared, encoding, self._max_body), start
            )
            length: int | None = None
            if header_length is not None:
                if not header_length.isdigit():
                    raise InvalidTensorError("Inference-Header-Content-Length is not an integer")
                length = int(header_length)
            inputs = model.schema.inputs
            req = decode_infer_request(
                body, length, raw_input=inputs[0] if len(inputs) == 1 else None
            )
            max_batch = self._max_batch
            rows = 0
            for arr in req.inputs.values():
                if arr.ndim:
                    if arr.shape[0] > max_batch:
                        raise PayloadTooLargeError(
                            f"batch of {arr.shape[0]} exceeds the limit of {max_batch}"
                        )
                    rows = max(rows, arr.shape[0])
            wanted = req.output_names
            run_all = shadow_model is not None or cascade is not None
            compute_start = time.perf_counter()
            if rows <= self._inline_max_rows:
                outputs = model.infer(req.inputs, None if run_all else wanted)
            else:
                loop = asyncio.get_running_loop()
                try:
                    async with asyncio.timeout_at(
                        start - time.perf_counter() + loop.time() + self._timeout
                    ):
                        outputs = await loop.run_in_executor(
                            None, model.infer, req.inputs, None if run_all else wanted
                        )
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"inference did not finish within {self._timeout:g} s"
                    ) from None
            compute = time.perf_counter() - compute_start
            if self._observer is not None and model.confidence_output is not None:
                confidence = _mean_top_probability(outputs.get(model.confidence_output))
            if cascade is not None:
                local_elapsed = time.perf_counter() - start
                top = None
                if model.confidence_output is not None:
                    top = _min_top_probability(outputs.get(model.confidence_output))
                if (
                    route_for(cascade.settings, top, cascade.unhealthy(name))
                    is CascadeRoute.UPSTREAM
                ):
                    upstream = await cascade.forward(name, body, header_length)
                    cascade_route = CascadeRoute.UPSTREAM if upstream else CascadeRoute.FALLBACK
            if shadow_model is not None:
                self._mirror.submit(shadow_model, req.inputs, outputs)
            if (shadow_model is not None or cascade is not None) and wanted is not None:
                outputs = _pick(outputs, wanted)
            binary: Mapping[str, bool] | bool = (
                {o.name: req.binary_for(o.name) for o in req.outputs}
                if req.outputs
                else req.binary_data_output
            )
            content, json_length = encode_infer_body(name, served, req.id, outputs, binary)
            headers = [
                _JSON_HEADER if json_length is None else _BINARY_HEADER,
                (b"content-length", str(len(content)).encode()),
                (_H_VERSION, served.encode()),
            ]
            if json_length is not None:
                headers.append((_H_HEADER_LENGTH, str(json_length).encode()))
            outcome = OUTCOME_SUCCESS
        except _ClientGone:
            outcome = OUTCOME_CLIENT_ERROR
            return
        except ModelfleetError as e:
            status = _status_of(e)
            if status < 500:
                outcome = OUTCOME_CLIENT_ERROR
            else:
                _log.error("inference on %s failed: %s", model, e)
            await _send_error(send, status, str(e), served)
            return
        except Exception as e:
            _log.exception("inference on %s failed", model)
            if cascade is not None and body:
                # the local model is broken: the upstream may still answer the caller
                upstream = await cascade.forward(name, body, header_length)
                if upstream is not None:
                    self._count_route(name, CascadeRoute.UPSTREAM)
                    await _send_upstream(send, upstream)
                    return
            await _send_error(send, 500, f"internal error: {type(e).__name__}", served)
            return
        finally:
            elapsed = time.perf_counter() - start
            self._observe(name, served, outcome, elapsed, compute)
            if self._observer is not None and outcome != OUTCOME_CLIENT_ERROR:
                error = outcome == OUTCOME_SERVER_ERROR
                try:
                    self._observer.observe(
                        name, served, local_elapsed or elapsed, error, confidence
                    )
                except Exception:  # a broken observer must not fail the request
                    _log.exception("request observer failed")
        if cascade is not None:
            self._count_route(name, cascade_route)
            if upstream is not None:
                await _send_upstream(send, upstream)
                return
            headers.append((_H_ROUTE, cascade_route.value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _send_upstream(send: _Send, answer: UpstreamAnswer) -> None:
    headers = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(answer.content)).encode()),
        (_H_ROUTE, CascadeRoute.UPSTREAM.value.encode()),
    ]
    if answer.header_length is not None:
        headers.append((_H_HEADER_LENGTH, answer.header_length.encode("latin-1")))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer.content})


def _min_top_probability(probabilities: np.ndarray | None) -> float | None:
    if probabilities is None or probabilities.ndim != 2 or probabilities.size == 0:
        return None
    return float(probabilities.max(axis=1).min())


def _mean_top_probability(probabilities: np.ndarray | None) -> float | None:
    if probabilities is None or probabilities.ndim != 2 or probabilities.size == 0:
        return None
    return float(probabilities.max(axis=1).mean())


async def _send_error(send: _Send, status: int, message: str, version: str | None) -> None:
    content = orjson.dumps({"error": message})
    headers = [_JSON_HEADER, (b"content-length", str(len(content)).encode())]
    if version is not None:
        headers.append((_H_VERSION, version.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _model_metadata(model: LoadedModel, versions: list[str]) -> dict[str, Any]:
    schema = model.schema
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [t.to_dict() for t in schema.inputs],
        "outputs": [t.to_dict() for t in schema.outputs],
    }


def build_agent_app(
    host: ModelHost,
    *,
    server_name: str = "modelfleet",
    control: AgentControl | None = None,
    limits: ServingLimits = ServingLimits(),
    shadow: ShadowSettings = ShadowSettings(),
    metrics: AgentMetrics | None = None,
    rng: Callable[[], float] = random.random,
    observer: RequestObserver | None = None,
    cascade: UpstreamClient | None = None,
) -> Starlette:
    """Build the agent's serving app around a :class:`ModelHost`.

    Args:
        host: the routes to serve; the daemon swaps them while the app runs.
        server_name: ``name`` in the server metadata.
        control: the daemon's control surface; without it ``/agent/*`` is not mounted.
        limits: body and batch limits.
        shadow: shadow queue size and disagreement tolerance.
        metrics: the metrics to record into; by default a fresh registry per app.
        rng: uniform [0, 1) draws for unkeyed splits and shadow sampling.
        observer: told of every served request and shadow comparison (the SLO guard).
        cascade: forward unconfident (or unhealthy) requests to an upstream OIP v2 server;
            answers carry ``modelfleet-route: local | upstream | fallback``.

    Returns:
        A Starlette app; ``app.state`` holds ``host``, ``metrics`` and ``shadow`` (the
        :class:`ShadowMirror`, whose ``join()`` waits for pending comparisons).
    """
    stats = metrics if metrics is not None else AgentMetrics(host)

    def on_comparison(model: LoadedModel, disagreed: bool) -> None:
        stats.observe_shadow(model.name, model.version, disagreed)
        if observer is not None:
            observer.observe_comparison(model.name, model.version, disagreed)

    mirror = ShadowMirror(
        on_comparison,
        stats.observe_shadow_dropped,
        queue_size=shadow.queue_size,
        tolerance=shadow.tolerance,
    )
    server_metadata = orjson.dumps(
        {"name": server_name, "version": __version__, "extensions": list(EXTENSIONS)}
    )
    count_route = None
    if cascade is not None:
        routes_total = Counter(
            "modelfleet_agent_cascade_total",
            "Inference requests by cascade route (local, upstream, fallback).",
            ["model", "route"],
            registry=stats.registry,
        )

        def count_route(model: str, route: str) -> None:
            routes_total.labels(model, route).inc()

    infer = _InferEndpoint(host, mirror, stats, limits, rng, observer, cascade, count_route)

    def _lookup(request: Request) -> tuple[LoadedModel, list[str]] | Response:
        name: str = request.path_params["model"]
        version: str | None = request.path_params.get("version")
        route = host.route(name)
        if route is None:
            return _error(404, f"unknown model {name!r}")
        versions = [m.version for m in route.versions()]
        if version is None:
            return route.production, versions
        found = route.find(version)
        if found is None:
            return _error(404, f"model {name!r} has no loaded version {version!r}")
        return found, versions

    async def model_metadata(request: Request) -> Response:
        found = _lookup(request)
        if isinstance(found, Response):
            return found
        return _json(_model_metadata(*found))

    async def model_ready(request: Request) -> Response:
        found = _lookup(request)
        return found if isinstance(found, Response) else Response(b"", 200)

    async def live(request: Request) -> Response:
        return Response(b"", 200)

    async def ready(request: Request) -> Response:
        if host.routes():
            return Response(b"", 200)
        return _error(400, "no model is loaded yet")

    async def server_meta(request: Request) -> Response:
        return Response(server_metadata, 200, None, _JSON)

    async def metrics_endpoint(request: Request) -> Response:
        text, content_type = stats.render()
        return Response(text, 200, {"content-type": content_type})

    routes = [
        HttpRoute("/v2/models/{model}/infer", infer, methods=["POST"]),
        HttpRoute("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        HttpRoute("/v2/health/live", live, methods=["GET"]),
        HttpRoute("/v2/health/ready", ready, methods=["GET"]),
        HttpRoute("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        HttpRoute("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        HttpRoute("/v2/models/{model}", model_metadata, methods=["GET"]),
        HttpRoute("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        HttpRoute("/v2", server_meta, methods=["GET"]),
        HttpRoute("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if control is not None:
        routes.extend(_control_routes(control))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await mirror.close()
        infer._deadlines.close()
        if cascade is not None:
            await cascade.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    app = _AgentApp(
        infer, routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.host = host
    app.state.metrics = stats
    app.state.shadow = mirror
    return app


class _AgentApp(Starlette):
    """Starlette, plus a fast path that hands ``POST /v2/models/.../infer`` straight to the
    infer endpoint.

    Starlette's middleware and router cost about 13 µs a request on the reference 2-core box,
    more than ONNX Runtime spends on a small model. The endpoint answers every error itself,
    so skipping the error middleware loses nothing; any other request takes the normal path.
    """

    def __init__(self, infer: _InferEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._infer = infer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            parts = path.split("/")
            # "", "v2", "models", m, "infer"  |  "", "v2", "models", m, "versions", v, "infer"
            if parts[-1] == "infer" and parts[1:3] == ["v2", "models"] and all(parts[3:-1]):
                if len(parts) == 5:
                    scope["path_params"] = {"model": parts[3]}
                    await self._infer(scope, receive, send)
                    return
                if len(parts) == 7 and parts[4] == "versions":
                    scope["path_params"] = {"model": parts[3], "version": parts[5]}
                    await self._infer(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def _pick(outputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
    picked: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in outputs:
            raise InvalidTensorError(f"unknown output {name!r}; the model has {list(outputs)}")
        picked[name] = outputs[name]
    return picked


def _control_routes(control: AgentControl) -> list[HttpRoute]:
    def authorised(request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if (
            not control.token
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(presented.strip().encode(), control.token.encode())
        ):
            return _error(401, "a valid control token is required", {"www-authenticate": "Bearer"})
        return None

    async def status(request: Request) -> Response:
        refused = authorised(request)
        if refused is not None:
            return refused
        try:
            return _json(await run_in_threadpool(control.status))
        except ModelfleetError as e:
            return _error(_status_of(e), str(e))

    async def rollback(request: Request) -> Response:
        refused = authorised(request)
        if refused is not None:
            return refused
        reason = "rollback requested through the agent API"
        body = await request.body()
        if body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return _error(400, 'the body must be JSON like {"reason": "..."}')
            if isinstance(doc, dict) and isinstance(doc.get("reason"), str) and doc["reason"]:
                reason = doc["reason"]
        try:
            return _json(await run_in_threadpool(control.rollback, reason))
        except ModelfleetError as e:
            return _error(_status_of(e), str(e))

    return [
        HttpRoute("/agent/status", status, methods=["GET"]),
        HttpRoute("/agent/rollback", rollback, methods=["POST"]),
    ]
