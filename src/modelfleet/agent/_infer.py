"""The agent's inference endpoint, ``POST /v2/models/{m}[/versions/{v}]/infer``, as a bare ASGI app.

This is the serving hot path (benchmarked in ``benchmarks/serving``): it reads headers from
the ASGI scope once, bounds the body's size and arrival time, runs the model (inline or on a
worker thread), optionally cascades to an upstream server, and sends raw ASGI messages.
:func:`modelfleet.agent.app.build_agent_app` mounts it; it imports nothing of ``app``.
What happened to each request goes to one
:class:`~modelfleet.agent.observers.ObserverFanout` (issue 6, contract 7).
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import orjson

from modelfleet.agent.observers import (
    OUTCOME_CLIENT_ERROR,
    OUTCOME_OK,
    OUTCOME_SERVER_ERROR,
    OUTCOME_TIMEOUT,
    BatchObserver,
    ObserverFanout,
    Outcome,
    RequestTracer,
)
from modelfleet.agent.overrides import OVERRIDE_PARAMETER
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
from modelfleet.serving.model import Servable
from modelfleet.serving.oip import (
    HEADER_LENGTH,
    InferRequest,
    decode_infer_request,
    encode_infer_body,
)
from modelfleet.serving.router import Route, choose
from modelfleet.serving.shadow import ShadowMirror

# The logger keeps the name it had before the endpoint moved out of modelfleet.agent.app.
_log = logging.getLogger("modelfleet.agent.app")

#: Response header naming the version that answered.
VERSION_HEADER: Final = "modelfleet-version"
#: Request header that pins a version (the value of an earlier ``modelfleet-version``).
PINNED_VERSION_HEADER: Final = "modelfleet-version"
#: Request header whose value makes a split sticky (a user, session or device id).
ROUTING_KEY_HEADER: Final = "modelfleet-routing-key"
#: The ``role`` observers are told: what the route made of the serving version.
ROLE_PRODUCTION: Final = "production"
ROLE_CANDIDATE: Final = "candidate"


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


def status_of(error: ModelfleetError) -> int:
    """The HTTP status of a service error."""
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

    def __init__(self, timeout_s: float, timer: Callable[[], float] = time.perf_counter) -> None:
        self._timeout = timeout_s
        self._clock = timer
        self._period = min(max(timeout_s / 4, 0.005), 1.0)
        self._pending: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, started: float) -> asyncio.Task[Any] | None:
        """Register the current task's body read, begun at ``started``; pass the result to
        :meth:`leave` when the read ends (inline form of :meth:`read`, one coroutine less)."""
        task = asyncio.current_task()
        if task is not None:
            self._pending[task] = started
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)
        return task

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        """The read registered by :meth:`enter` ended."""
        if task is not None:
            del self._pending[task]

    def overran(self, task: asyncio.Task[Any] | None) -> DeadlineExceededError | None:
        """After a cancellation: the deadline error if this registry cancelled ``task``."""
        if task is None or task not in self._expired:
            return None
        self._expired.discard(task)
        task.uncancel()
        return DeadlineExceededError(f"the request body did not arrive within {self._timeout:g} s")

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
        limit = self._clock() - self._timeout
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


class _Pending:
    """The rest of a ``receive()`` that had to wait: awaiting this resumes it where it
    stopped (what ``await`` does, by hand, from its first suspension on)."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # a cancellation: into the coroutine, as await does
                try:
                    yielded = coro.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _awaiting(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _receive_now(receive: _Receive) -> dict[str, Any] | _Pending:
    """The next ASGI message if it is already there, else what is left to await of it.

    A small body has usually arrived with the headers, so ``receive()`` answers without
    waiting; only a ``receive()`` that waits needs the body deadline, whose registration
    (``asyncio.current_task()``, a ``getpid()`` system call on Python 3.11, and two dict
    writes) made reading such a body ~0.15 µs dearer than this (issue 6).
    """
    coro = receive()
    if type(coro) is not types.CoroutineType:
        coro = _awaiting(coro)
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        message: dict[str, Any] = done.value
        return message
    return _Pending(coro, yielded)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")


def _check_declared(declared: bytes, limit: int) -> None:
    """Refuse a bad or too large Content-Length before reading a byte of the body.

    Raises:
        PayloadTooLargeError: it declares more than ``limit``.
        InvalidTensorError: it is not an integer.
    """
    if not declared.isdigit():
        raise InvalidTensorError("Content-Length is not an integer")
    if int(declared) > limit:
        raise _too_large(limit)


async def _read_more(receive: _Receive, first: bytes, limit: int) -> bytes:
    """The rest of a body that came in several messages, refusing more than ``limit``.

    Raises:
        PayloadTooLargeError: the body exceeds ``limit``.
        _ClientGone: the client went away.
    """
    chunks = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Decompress a body sent with tritonclient's ``request_compression_algorithm``.

    Raises:
        PayloadTooLargeError: the decompressed body exceeds ``limit``.
        InvalidTensorError: an unsupported encoding, or a corrupt or truncated body.
    """
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidTensorError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == b"gzip" else 0))
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidTensorError(f"the compressed request body is corrupt: {e}") from None
    if len(plain) > limit:
        raise _too_large(limit)
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
    this endpoint reads the headers once from the scope and sends raw ASGI messages. What
    happened to each request goes to one :class:`ObserverFanout` (metrics, guard, …).

    Args:
        host: the route table.
        mirror: where shadow copies go.
        fanout: told of every request and (through ``mirror``) shadow comparison.
        limits: body, batch and time bounds.
        rng: uniform [0, 1) draws for unkeyed splits and shadow sampling.
        cascade: the upstream for unconfident answers, if any.
        count_route: counts each cascaded request's route.
        timer: seconds, monotonic (``time.perf_counter``; injected by tests).
        tracer: told the stage times of the requests it samples, if any.
        batches: told the tensors of answered requests of the versions it watches (drift
            profile counts), if any.
        overrides: given (model, route, value) of a request's ``modelfleet_override``
            parameter, before the inference (issue 9); raises InvalidInputError,
            NotFoundError or ConflictError for a bad one, which refuses the request.
    """

    def __init__(
        self,
        host: ModelHost,
        mirror: ShadowMirror,
        fanout: ObserverFanout,
        limits: ServingLimits,
        rng: Callable[[], float],
        cascade: UpstreamClient | None = None,
        count_route: Callable[[str, str], None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        tracer: RequestTracer | None = None,
        batches: BatchObserver | None = None,
        *,
        overrides: Callable[[str, Route, Any], object] | None = None,
    ) -> None:
        self._host = host
        self._overrides = overrides
        self._tracer = tracer
        self._batches = batches
        self._fanout = fanout
        self._cascade = cascade
        self._count_route = count_route or (lambda model, route: None)
        self._mirror = mirror
        self._max_body = limits.max_body_bytes
        self._max_batch = limits.max_batch
        self._inline_max_rows = limits.inline_max_rows
        self._timeout = limits.request_timeout_s
        self._deadlines = _BodyDeadlines(limits.request_timeout_s, timer)
        self._rng = rng
        self._timer = timer

    async def __call__(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        timer = self._timer
        start = timer()
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
        shadow_model: Servable | None = None
        if version is not None:
            found = route.find(version)
            if found is None:
                message = f"model {name!r} has no loaded version {version!r}"
                await _send_error(send, 404, message, None)
                return
            model = found
        elif route.candidate is None:  # nothing to choose between: no draw
            model = route.production
        else:
            model, shadow_model = choose(route, routing_key, pinned, self._rng())
        served = model.version
        cascade = self._cascade
        if cascade is not None and not cascade.settings.applies_to(name):
            cascade = None
        tracer = self._tracer
        sampled = False
        if tracer is not None:
            sampled = tracer.sampled(_role(route, model))
        run = _Run(model, start)
        body = b""
        decoded = computed = 0.0  # for the tracer: 0.0 until reached
        try:
            limit = self._max_body
            if declared is not None:
                _check_declared(declared, limit)
            received = _receive_now(receive)
            if (
                type(received) is dict
                and received["type"] == "http.request"
                and not received.get("more_body", False)
            ):
                body = received.get("body", b"")
            else:  # not all there yet: wait for it, within its deadline
                body = await self._read_body(receive, received, start, limit)
            if len(body) > limit:
                raise _too_large(limit)
            if encoding is not None and encoding != b"identity":
                body = _inflate(body, encoding, limit)
            run.body_done = timer()
            req, rows = self._decode(model, body, header_length)
            overrides = self._overrides
            if overrides is not None and req.parameters and OVERRIDE_PARAMETER in req.parameters:
                overrides(name, route, req.parameters[OVERRIDE_PARAMETER])
            wanted = req.output_names if req.outputs else None
            run_all = shadow_model is not None or cascade is not None
            batches = self._batches
            if batches is not None and not batches.watches(name, served):
                batches = None
            elif batches is not None:
                run_all = True  # the profile counts every output, whatever was asked
            decoded = timer()
            if rows <= self._inline_max_rows:
                outputs = model.infer(req.inputs, None if run_all else wanted)
            else:
                outputs = await self._off_loop(run, req.inputs, None if run_all else wanted)
            computed = timer()
            run.compute = computed - decoded
            if self._fanout.wants_confidence and model.confidence_output is not None:
                run.confidence = _mean_top_probability(outputs.get(model.confidence_output))
            upstream: UpstreamAnswer | None = None
            cascade_route = CascadeRoute.LOCAL
            if cascade is not None and self._unsure(cascade, model, outputs):
                run.done = timer()  # the upstream's time is not this model's
                upstream = await cascade.forward(name, body, header_length)
                cascade_route = CascadeRoute.UPSTREAM if upstream else CascadeRoute.FALLBACK
            if batches is not None:
                try:
                    batches.on_batch(name, served, _role(route, model), req.inputs, outputs, req.id)
                except Exception:  # a broken observer must not fail the request
                    _log.exception("batch observer %r failed", batches)
            if shadow_model is not None:
                self._mirror.submit(shadow_model, req.inputs, outputs)
            if run_all and wanted is not None:
                outputs = _pick(outputs, wanted)
            content, headers = _encode(req, model, outputs)
            run.outcome = OUTCOME_OK
        except _ClientGone:
            run.outcome = OUTCOME_CLIENT_ERROR
            return
        except ModelfleetError as e:
            status = status_of(e)
            if status < 500 or run.body_done is None:  # refused, or uploaded too slowly
                run.outcome = OUTCOME_CLIENT_ERROR
            else:
                timeout = isinstance(e, DeadlineExceededError)
                run.outcome = OUTCOME_TIMEOUT if timeout else OUTCOME_SERVER_ERROR
                _log.error("inference on %s failed: %s", model, e)
            await _send_error(send, status, str(e), served)
            return
        except Exception as e:
            _log.exception("inference on %s failed", model)
            run.outcome = OUTCOME_SERVER_ERROR
            if cascade is not None and body:
                # the local model is broken: the upstream may still answer the caller
                self._report(name, route, run, scope)
                upstream = await cascade.forward(name, body, header_length)
                if upstream is not None:
                    self._count_route(name, CascadeRoute.UPSTREAM)
                    await _send_upstream(send, upstream)
                    return
            await _send_error(send, 500, f"internal error: {type(e).__name__}", served)
            return
        finally:
            if not run.reported:
                self._report(name, route, run, scope)
            if sampled:
                self._trace(name, route, run, decoded, computed)
        if cascade is not None:
            self._count_route(name, cascade_route)
            if upstream is not None:
                await _send_upstream(send, upstream)
                return
            headers.append((_H_ROUTE, cascade_route.value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _read_body(
        self, receive: _Receive, first: dict[str, Any] | _Pending, started: float, limit: int
    ) -> bytes:
        """The body, from its first message (or what is left to await of it) on, within the
        deadline that began at ``started``.

        Raises:
            DeadlineExceededError: it did not arrive in time.
            PayloadTooLargeError: it exceeds ``limit``.
            _ClientGone: the client went away.
        """
        reading = self._deadlines.enter(started)
        try:
            received: dict[str, Any] = await first if isinstance(first, _Pending) else first
            if received["type"] != "http.request":
                raise _ClientGone
            body: bytes = received.get("body", b"")
            if received.get("more_body", False):
                body = await _read_more(receive, body, limit)
            return body
        except asyncio.CancelledError:
            overran = self._deadlines.overran(reading)
            if overran is None:
                raise
            raise overran from None
        finally:
            self._deadlines.leave(reading)

    def _trace(self, name: str, route: Route, run: _Run, decoded: float, computed: float) -> None:
        """Tell the tracer the stage times of a sampled request whose body arrived."""
        body_done = run.body_done
        tracer = self._tracer
        if body_done is None or tracer is None:
            return
        encoded = self._timer()
        if not computed:  # failed before the inference was done: its stages end now
            computed = encoded
            if not decoded:
                decoded = encoded
        model = run.model
        try:
            tracer.record(
                name,
                model.version,
                _role(route, model),
                body_done,
                decoded,
                computed,
                encoded,
                run.outcome,
            )
        except Exception:  # a broken tracer must not fail the request
            _log.exception("request tracer %r failed", tracer)

    def _decode(
        self, model: Servable, body: bytes, header_length: bytes | None
    ) -> tuple[InferRequest, int]:
        """The request, and its batch size (checked against the limit)."""
        length: int | None = None
        raw_input = None
        if header_length is not None:
            if not header_length.isdigit():
                raise InvalidTensorError("Inference-Header-Content-Length is not an integer")
            length = int(header_length)
            if length == 0:  # a raw binary request: the model's one input
                inputs = model.schema.inputs
                raw_input = inputs[0] if len(inputs) == 1 else None
        req = decode_infer_request(body, length, raw_input=raw_input)
        max_batch = self._max_batch
        rows = 0
        for arr in req.inputs.values():
            if arr.ndim:
                batch = arr.shape[0]
                if batch > rows:
                    if batch > max_batch:
                        raise PayloadTooLargeError(
                            f"batch of {batch} exceeds the limit of {max_batch}"
                        )
                    rows = batch
        return req, rows

    @staticmethod
    def _unsure(cascade: UpstreamClient, model: Servable, outputs: dict[str, np.ndarray]) -> bool:
        top = None
        if model.confidence_output is not None:
            top = _min_top_probability(outputs.get(model.confidence_output))
        unhealthy = cascade.unhealthy(model.name)
        return route_for(cascade.settings, top, unhealthy) is CascadeRoute.UPSTREAM

    async def _off_loop(
        self, run: _Run, inputs: Mapping[str, np.ndarray], wanted: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Run a large batch on a worker thread, within what is left of the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout - (self._timer() - run.started)
        try:
            async with asyncio.timeout_at(deadline):
                return await loop.run_in_executor(None, run.model.infer, inputs, wanted)
        except TimeoutError:
            raise DeadlineExceededError(
                f"inference did not finish within {self._timeout:g} s"
            ) from None

    def _report(self, name: str, route: Route, run: _Run, scope: dict[str, Any]) -> None:
        run.reported = True
        compute = run.compute
        queue: float | None = None
        body_done = run.body_done
        if body_done is not None:
            done = run.done
            queue = (self._timer() if done is None else done) - body_done
            if compute is not None:
                queue -= compute
            if queue < 0.0:
                queue = 0.0
        model = run.model
        client = scope.get("client")
        version = model.version
        role = ROLE_CANDIDATE if route.candidate is model else ROLE_PRODUCTION
        outcome = run.outcome
        confidence = run.confidence
        caller = client[0] if client else ""
        # ObserverFanout.on_request, inlined: one call fewer per request (issue 6)
        for on_request in self._fanout.request_handlers:
            try:
                on_request(name, version, role, outcome, compute, queue, confidence, caller)
            except Exception:  # a broken observer must not fail the request
                self._fanout.failed(on_request)


def _role(route: Route, model: Servable) -> str:
    return ROLE_CANDIDATE if route.candidate is model else ROLE_PRODUCTION


class _Run:
    """What one request did, for the observers (class defaults: cheap to create)."""

    outcome: Outcome = OUTCOME_SERVER_ERROR
    body_done: float | None = None
    compute: float | None = None
    done: float | None = None
    confidence: float | None = None
    reported = False

    def __init__(self, model: Servable, started: float) -> None:
        self.model = model
        self.started = started


def _encode(
    req: InferRequest, model: Servable, outputs: dict[str, np.ndarray]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and headers (JSON, or binary when the request asked for it)."""
    binary: Mapping[str, bool] | bool = (
        {o.name: req.binary_for(o.name) for o in req.outputs}
        if req.outputs
        else req.binary_data_output
    )
    version = model.version
    content, json_length = encode_infer_body(model.name, version, req.id, outputs, binary)
    if json_length is None:
        return content, [
            _JSON_HEADER,
            (b"content-length", b"%d" % len(content)),
            (_H_VERSION, version.encode()),
        ]
    return content, [
        _BINARY_HEADER,
        (b"content-length", b"%d" % len(content)),
        (_H_VERSION, version.encode()),
        (_H_HEADER_LENGTH, b"%d" % json_length),
    ]


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
    rows = probabilities.shape[0]
    if rows <= 16:  # small batches: Python floats cost a twentieth of numpy's reductions
        top: float = sum(map(max, probabilities.tolist())) / rows
        return top
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
