"""The agent's inference endpoint, ``POST /v2/models/{m}[/versions/{v}]/infer``, as a bare ASGI app.

This is the serving hot path (benchmarked in ``benchmarks/serving``): it reads headers from
the ASGI scope once, bounds the body's size and arrival time, runs the model (inline or on a
worker thread), optionally cascades to an upstream server, and sends raw ASGI messages.
:func:`modelfleet.agent.app.build_agent_app` mounts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import orjson

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

if TYPE_CHECKING:
    from modelfleet.agent.app import RequestObserver, ServingLimits

# The logger keeps the name it had before the endpoint moved out of modelfleet.agent.app.
_log = logging.getLogger("modelfleet.agent.app")

#: Response header naming the version that answered.
VERSION_HEADER: Final = "modelfleet-version"
#: Request header that pins a version (the value of an earlier ``modelfleet-version``).
PINNED_VERSION_HEADER: Final = "modelfleet-version"
#: Request header whose value makes a split sticky (a user, session or device id).
ROUTING_KEY_HEADER: Final = "modelfleet-routing-key"

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


def _pick(outputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
    picked: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in outputs:
            raise InvalidTensorError(f"unknown output {name!r}; the model has {list(outputs)}")
        picked[name] = outputs[name]
    return picked
