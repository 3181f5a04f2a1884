"""The agent's HTTP app: Open Inference Protocol v2 REST, agent control, Prometheus metrics.

Endpoints (KServe ``required_api.md`` plus Triton's binary tensor extension):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (200 iff a model is routed, else 503
  as Triton and KServe answer)
* ``GET /v2`` server metadata; ``GET /v2/models/{m}[/versions/{v}]`` model metadata
* ``GET /v2/models/{m}[/versions/{v}]/ready`` (503 while that model or version is not loaded)
* ``POST /v2/models/{m}[/versions/{v}]/infer`` (no Content-Type needed: ``tritonclient``
  sends none)
* ``POST /v2/models/{m}[/versions/{v}]/overrides``: a human overrode or confirmed an answer
  (issue 9; also the inference request parameter ``modelfleet_override``, see
  :mod:`modelfleet.agent.overrides`)
* ``GET /agent/status``, ``POST /agent/rollback`` (bearer control token)
* ``GET /metrics``

Errors are always ``{"error": "..."}``. Without a version in the URL the router picks one
(split/shadow); the response header ``modelfleet-version`` names it, and a caller that sends
it back pins that version; ``modelfleet-routing-key`` makes a split sticky.

ONNX Runtime runs inline on the event loop for small batches: for small models a thread hop
costs more than the inference itself. Batches above ``ServingLimits.inline_max_rows`` go to a
worker thread. Shadow copies are compared off the request path (:mod:`modelfleet.serving.shadow`).
Every request and shadow comparison is reported once, to an
:class:`~modelfleet.agent.observers.ObserverFanout` whose observers are the metrics, the
SLO guard and whatever else the daemon adds (issue 6, contract 7).
"""

from __future__ import annotations

import hmac
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from modelfleet import __version__
from modelfleet.agent._infer import (
    PINNED_VERSION_HEADER,
    ROUTING_KEY_HEADER,
    VERSION_HEADER,
    ServingLimits,
    _InferEndpoint,
    status_of,
)
from modelfleet.agent.metrics import AgentMetrics
from modelfleet.agent.observers import (
    BatchObserver,
    ComparisonResult,
    ObserverFanout,
    RequestObserver,
    RequestTracer,
)
from modelfleet.agent.overrides import OverrideSink, parse_override, resolve_override
from modelfleet.agent.upstream import UpstreamClient
from modelfleet.errors import ModelfleetError
from modelfleet.serving.host import ModelHost
from modelfleet.serving.model import Servable
from modelfleet.serving.router import Route
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

PLATFORM: Final = "onnx_onnxv1"
EXTENSIONS: Final = ("binary_tensor_data",)

_JSON: Final = "application/json"
_DEFAULT_LIMITS: Final = ServingLimits()


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """Shadow mirroring knobs.

    Attributes:
        queue_size: mirrored requests that may wait; more are dropped and counted.
        tolerance: largest absolute difference of floating-point outputs that still agrees.
    """

    queue_size: int = 64
    tolerance: float = 1e-4


@dataclass(frozen=True, slots=True)
class _Compared:
    """A shadow comparison reported as a plain ``disagreed`` flag."""

    disagreed: bool
    score_shift: float | None = None


class _Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


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


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, _JSON)


def _json(doc: Any) -> Response:
    return Response(orjson.dumps(doc), 200, None, _JSON)


def _model_metadata(model: Servable, versions: list[str]) -> dict[str, Any]:
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
    limits: ServingLimits = _DEFAULT_LIMITS,
    shadow: ShadowSettings = ShadowSettings(),
    metrics: AgentMetrics | None = None,
    rng: Callable[[], float] = random.random,
    observers: Iterable[RequestObserver] = (),
    observer: RequestObserver | None = None,
    cascade: UpstreamClient | None = None,
    timer: Callable[[], float] = time.perf_counter,
    tracer: RequestTracer | None = None,
    on_cascade_route: Callable[[str, str], None] | None = None,
    on_shadow_dropped: Callable[[str, str], None] | None = None,
    batches: BatchObserver | None = None,
    on_override: OverrideSink | None = None,
) -> Starlette:
    """Build the agent's serving app around a :class:`ModelHost`.

    Args:
        host: the routes to serve; the daemon swaps them while the app runs.
        server_name: ``name`` in the server metadata.
        control: the daemon's control surface; without it ``/agent/*`` is not mounted.
        limits: body and batch limits.
        shadow: shadow queue size and disagreement tolerance.
        metrics: the metrics to record into (the first observer); by default a fresh
            registry per app.
        rng: uniform [0, 1) draws for unkeyed splits and shadow sampling.
        observers: told of every request and shadow comparison after the metrics (the
            SLO guard, telemetry).
        observer: one more observer, after ``observers``.
        cascade: forward unconfident (or unhealthy) requests to an upstream OIP v2 server;
            answers carry ``modelfleet-route: local | upstream | fallback``.
        timer: monotonic seconds for the request path's own timings (compute, queue,
            body deadline); injected by tests.
        tracer: told the stage times of the inference requests it samples (for a tracing
            exporter); None costs the request path one ``is None`` check.
        on_cascade_route: told (model, route) of each cascaded request after the metric
            counts it (telemetry windows count cascade routes).
        on_shadow_dropped: told (model, candidate version) of each shadow request dropped
            at a full queue.
        batches: told the tensors of answered requests of the versions it watches (the
            drift profile counts, issue 9); None costs one ``is None`` check.
        on_override: told (model, version, role, outcome) of each operator override or
            confirmation, from the overrides endpoint or the ``modelfleet_override``
            request parameter (telemetry windows count them; issue 9).

    Returns:
        A Starlette app; ``app.state`` holds ``host``, ``metrics``, ``fanout`` (the
        :class:`ObserverFanout`) and ``shadow`` (the :class:`ShadowMirror`, whose
        ``join()`` waits for pending comparisons).
    """
    stats = metrics if metrics is not None else AgentMetrics(host)
    fanout = ObserverFanout([stats, *observers, *([observer] if observer is not None else [])])

    def on_comparison(model: _Named, result: bool | ComparisonResult) -> None:
        comparison = _Compared(result) if isinstance(result, bool) else result
        fanout.on_comparison(model.name, model.version, comparison)

    mirror = ShadowMirror(
        on_comparison,
        stats.observe_shadow_dropped,
        queue_size=shadow.queue_size,
        tolerance=shadow.tolerance,
        on_drop_of=(
            None
            if on_shadow_dropped is None
            else lambda candidate: on_shadow_dropped(candidate.name, candidate.version)
        ),
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
            if on_cascade_route is not None:
                on_cascade_route(model, str(route))

    def count_override(
        name: str, route: Route | None, doc: Any, path_version: str | None
    ) -> dict[str, str]:
        override = parse_override(doc)
        version, role = resolve_override(route, name, override, path_version)
        stats.overrides.labels(name, version, override.outcome).inc()
        if on_override is not None:
            on_override(name, version, role, override.outcome)
        return {"model": name, "version": version, "role": role, "outcome": override.outcome}

    infer = _InferEndpoint(
        host,
        mirror,
        fanout,
        limits,
        rng,
        cascade,
        count_route,
        timer,
        tracer,
        batches,
        overrides=lambda name, route, doc: count_override(name, route, doc, None),
    )

    def _lookup(request: Request, missing: int = 404) -> tuple[Servable, list[str]] | Response:
        name: str = request.path_params["model"]
        version: str | None = request.path_params.get("version")
        route = host.route(name)
        if route is None:
            what = "unknown model" if missing == 404 else "not loaded: model"
            return _error(missing, f"{what} {name!r}")
        versions = [m.version for m in route.versions()]
        if version is None:
            return route.production, versions
        found = route.find(version)
        if found is None:
            return _error(missing, f"model {name!r} has no loaded version {version!r}")
        return found, versions

    async def model_metadata(request: Request) -> Response:
        found = _lookup(request)
        if isinstance(found, Response):
            return found
        return _json(_model_metadata(*found))

    async def model_ready(request: Request) -> Response:
        found = _lookup(request, missing=503)  # not ready (yet), as KServe answers
        return found if isinstance(found, Response) else Response(b"", 200)

    async def live(request: Request) -> Response:
        return Response(b"", 200)

    async def ready(request: Request) -> Response:
        if host.routes():
            return Response(b"", 200)
        return _error(503, "no model is loaded yet")

    async def server_meta(request: Request) -> Response:
        return Response(server_metadata, 200, None, _JSON)

    async def override(request: Request) -> Response:
        name: str = request.path_params["model"]
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _MAX_OVERRIDE_BODY:
            return _error(413, f"an override body is at most {_MAX_OVERRIDE_BODY} bytes")
        body = await request.body()
        if len(body) > _MAX_OVERRIDE_BODY:
            return _error(413, f"an override body is at most {_MAX_OVERRIDE_BODY} bytes")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, 'the body must be JSON like {"outcome": "overridden"}')
        try:
            counted = count_override(
                name, host.route(name), doc, request.path_params.get("version")
            )
        except ModelfleetError as e:
            return _error(status_of(e), str(e))
        return _json(counted)

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
        HttpRoute("/v2/models/{model}/overrides", override, methods=["POST"]),
        HttpRoute("/v2/models/{model}/versions/{version}/overrides", override, methods=["POST"]),
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
    app.state.fanout = fanout
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
        # path -> its infer path params (None: not an infer path); bounded, read-only values
        self._paths: dict[str, dict[str, str] | None] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            try:
                params = self._paths[path]
            except KeyError:
                params = _infer_params(path)
                if len(self._paths) < _PATH_CACHE_SIZE:
                    self._paths[path] = params
            if params is not None:
                scope["path_params"] = params
                await self._infer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


_PATH_CACHE_SIZE: Final = 1024
_MAX_OVERRIDE_BODY: Final = 64 * 1024


def _infer_params(path: str) -> dict[str, str] | None:
    """``{"model": m}`` or ``{"model": m, "version": v}`` for an infer path, else None."""
    parts = path.split("/")
    # "", "v2", "models", m, "infer"  |  "", "v2", "models", m, "versions", v, "infer"
    if parts[-1] == "infer" and parts[1:3] == ["v2", "models"] and all(parts[3:-1]):
        if len(parts) == 5:
            return {"model": parts[3]}
        if len(parts) == 7 and parts[4] == "versions":
            return {"model": parts[3], "version": parts[5]}
    return None


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
            return _error(status_of(e), str(e))

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
            return _error(status_of(e), str(e))

    return [
        HttpRoute("/agent/status", status, methods=["GET"]),
        HttpRoute("/agent/rollback", rollback, methods=["POST"]),
    ]
