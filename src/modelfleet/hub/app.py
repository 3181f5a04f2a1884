"""The hub's REST API (FastAPI): a thin adapter over :class:`~modelfleet.hub.service.HubService`.

Versioned under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``, Swagger UI at
``/api/v1/docs``); TUF metadata and targets under ``/tuf/{catalog|director}/``. Every
request but ``/api/v1/health`` and the docs needs a bearer token. Errors are JSON
``{"error": "...", "type": "..."}``. The routes live in :mod:`modelfleet.hub.api`, one
router per area; this module assembles them and runs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI

from modelfleet import __version__
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import ModelfleetError
from modelfleet.hub.api import (
    audit,
    devices,
    drift,
    health,
    metrics,
    models,
    releases,
    review,
    rollout,
    rollouts,
    telemetry,
    tokens,
    tuf,
    webhooks,
)
from modelfleet.hub.api._checkin import CheckinEndpoint, checkin_device_id
from modelfleet.hub.api._deps import refuse_nul_in_path_and_query, refuse_unknown_query
from modelfleet.hub.api._errors import install_error_handlers, openapi_with_400s, status_of
from modelfleet.hub.api.credentials import router as credentials_router  # issue 10
from modelfleet.hub.api.docs import docs_router
from modelfleet.hub.config import HubConfig, load_hub_config
from modelfleet.hub.rollout_lease import ControllerLease, ControllerLoop
from modelfleet.hub.service import HubService
from modelfleet.hub.webhooks_loop import WebhookLoop

__all__ = ["API_PREFIX", "HubApp", "build_hub_app", "serve", "status_of"]

API_PREFIX = "/api/v1"
_TITLE = "modelfleet hub"
log = logging.getLogger("modelfleet.hub")


async def _refresh_loop(service: HubService, interval_s: float) -> None:
    # Clock time: under a scaled clock (MODELFLEET_SIM_CLOCK) the rounds come as often
    # in simulated time as they would in real time.
    real_seconds = getattr(service.clock, "real_seconds", None)
    wait_s = float(real_seconds(interval_s)) if callable(real_seconds) else interval_s
    while True:
        await asyncio.sleep(wait_s)
        try:
            done = await anyio.to_thread.run_sync(service.refresh_expiring)
            if done:
                log.info("re-signed expiring TUF metadata: %s", ", ".join(done))
        except ModelfleetError as e:
            log.error("cannot re-sign expiring TUF metadata: %s", e)


class HubApp(FastAPI):
    """FastAPI, plus a fast path that hands ``POST /api/v1/devices/{id}/report`` (the
    check-in every device sends every poll) straight to :class:`CheckinEndpoint` (issue 8,
    H9), as the agent does with its infer route (ADR 0003). The endpoint answers every
    error itself; any other request takes FastAPI's router, middleware and handlers.
    """

    checkin: CheckinEndpoint | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        checkin = self.checkin
        if checkin is not None and scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            device_id = checkin_device_id(path)
            if device_id is not None:
                await checkin(scope, receive, send, device_id)
                return
        await super().__call__(scope, receive, send)


def build_hub_app(
    service: HubService,
    refresh_interval_s: float | None = None,
    *,
    controller_interval_s: float = 0.0,
    webhook_interval_s: float = 0.0,
) -> FastAPI:
    """Create the hub's ASGI app.

    Args:
        service: the hub operations.
        refresh_interval_s: how often a background task re-signs expiring TUF metadata
            while the app runs (``service.config.refresh_interval_s`` if None; 0 disables).
        controller_interval_s: how often (hub-clock seconds) the rollout controller thread
            ticks while the app runs, when this process holds the controller lease
            (:mod:`modelfleet.hub.controller`); 0 runs no controller.
        webhook_interval_s: how often (hub-clock seconds) the webhook thread runs a
            delivery round (:mod:`modelfleet.hub.webhooks`); 0 delivers none.

    Returns:
        The FastAPI app (its check-in route on a fast path, see :class:`HubApp`).
    """
    interval = (
        service.config.refresh_interval_s if refresh_interval_s is None else refresh_interval_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_refresh_loop(service, interval)) if interval > 0 else None
        loop = None
        if controller_interval_s > 0:
            loop = ControllerLoop(
                service.controller,
                ControllerLease(service.engine),
                controller_interval_s,
                service.clock,
            )
            loop.start()
        hooks = None
        if webhook_interval_s > 0:
            hooks = WebhookLoop(service.webhooks, webhook_interval_s, service.clock)
            hooks.start()
        try:
            yield
        finally:
            if hooks is not None:
                await anyio.to_thread.run_sync(hooks.stop)
            if loop is not None:
                await anyio.to_thread.run_sync(loop.stop)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    openapi_url = f"{API_PREFIX}/openapi.json"
    app = HubApp(
        title=_TITLE,
        version=__version__,
        openapi_url=openapi_url,
        docs_url=None,  # our own page, with local assets (see hub/api/docs.py)
        redoc_url=None,
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query), Depends(refuse_nul_in_path_and_query)],
    )
    app.state.service = service
    app.checkin = CheckinEndpoint(service)
    install_error_handlers(app)
    for area in (
        health.router,
        tokens.router,
        tuf.api_router,
        devices.router,
        models.router,
        rollout.router,
        rollouts.router,
        audit.router,
        telemetry.router,
        drift.router,
        review.router,
        webhooks.router,
        releases.router,  # issue 10: approvals
        credentials_router,
    ):
        app.include_router(area, prefix=API_PREFIX)
    app.include_router(tuf.tuf_router)
    app.include_router(metrics.router)
    docs = docs_router(f"{API_PREFIX}/docs", openapi_url, _TITLE)
    if docs is not None:
        app.include_router(docs)
    app.openapi = lambda: openapi_with_400s(app)  # type: ignore[method-assign]
    return app


def _pick(module: str, fallback: str) -> str:
    """``module`` if importable (the ``hub`` extra installs it), else ``fallback``."""
    import importlib.util

    return module if importlib.util.find_spec(module) is not None else fallback


def serve(
    config: HubConfig | Path,
    *,
    host: str | None = None,
    port: int | None = None,
    clock: Clock | None = None,
    controller_interval_s: float = 5.0,
    webhook_interval_s: float = 5.0,
    access_log: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Run the hub API with uvicorn until interrupted (the process edge).

    Args:
        config: the hub config, or the hub home to load it from (then
            ``MODELFLEET_DATABASE_URL`` from the environment overrides the database).
        host, port: override the config's listening address.
        clock: time source (the system clock if None).
        controller_interval_s: the rollout controller's tick interval (hub-clock seconds);
            0 runs no controller in this process.
        webhook_interval_s: seconds (hub clock) between webhook delivery rounds; 0 sends
            no webhooks from this process.
        access_log: log a line per request (off by default: at fleet rates it cost more
            than a check-in itself; issue 8, H9).
        tls: (certificate chain PEM, private key PEM): serve HTTPS only (issue 10).

    Raises:
        ConfigError: the home is not initialised.
        StorageError: the database cannot be reached or migrated.
    """
    import uvicorn

    if not isinstance(config, HubConfig):
        config = load_hub_config(Path(config), os.environ)
    service = HubService(config, clock or SystemClock())
    try:
        app = build_hub_app(
            service,
            controller_interval_s=controller_interval_s,
            webhook_interval_s=webhook_interval_s,
        )
        # What start-up loaded lives as long as the process: out of the collector's way,
        # so the full collections that large telemetry batches trigger stay short.
        gc.freeze()
        uvicorn.run(
            app,
            host=host if host is not None else config.host,
            port=port if port is not None else config.port,
            log_level="info",
            access_log=access_log,
            # uvicorn's "auto" picks these when installed; asked for by name so that the
            # hub never drops silently to h11 and asyncio's loop (ADR 0003: ~2x)
            http=_pick("httptools", "auto"),
            loop=_pick("uvloop", "auto"),
            log_config=None,  # the CLI's logging (telemetry/logs.py) formats uvicorn's lines
            ssl_certfile=None if tls is None else str(tls[0]),
            ssl_keyfile=None if tls is None else str(tls[1]),
        )
    finally:
        service.close()
