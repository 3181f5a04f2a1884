"""The hub's REST API (FastAPI): a thin adapter over :class:`~modelfleet.hub.service.HubService`.

Versioned under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``); TUF metadata and
targets under ``/tuf/{catalog|director}/``. Every request but ``/api/v1/health`` needs a
bearer token. Errors are JSON ``{"error": "..."}``; HTTP status codes live only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfleet import __version__
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    PayloadTooLargeError,
    RefusedUpdateError,
    TransportError,
    UnauthenticatedError,
)
from modelfleet.hub.auth import Permission, Principal, Role, check
from modelfleet.hub.config import HubConfig, load_hub_config
from modelfleet.hub.service import ALL_DEVICES, HubService

__all__ = ["API_PREFIX", "build_hub_app", "serve", "status_of"]

API_PREFIX = "/api/v1"
log = logging.getLogger("modelfleet.hub")

_STATUS: tuple[tuple[type[ModelfleetError], int], ...] = (
    (PayloadTooLargeError, 413),
    (InvalidInputError, 400),
    (RefusedUpdateError, 400),
    (UnauthenticatedError, 401),
    (ForbiddenError, 403),
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TransportError, 502),
)


def status_of(error: ModelfleetError) -> int:
    """The HTTP status for a modelfleet error (500 for storage, config and trust faults)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


# -- request bodies ------------------------------------------------------------------------


class DeviceIn(BaseModel):
    id: str = Field(description="device id: letters, digits, '.', '_' or '-'")
    site: str | None = ""
    tags: list[str] = Field(default_factory=list)
    ticket: str | None = None


class TokenIn(BaseModel):
    role: str = Field(description="admin, publisher, operator, viewer or device")
    subject: str = Field(description="who holds the token (the device id for device tokens)")


class VersionIn(BaseModel):
    blob: str = Field(description="sha256 of the uploaded ONNX model blob")
    sample_input_blob: str | None = Field(
        default=None, description="sha256 of an uploaded .npy array of sample rows"
    )
    lineage: dict[str, Any] = Field(default_factory=dict)
    ticket: str | None = None


class RevokeIn(BaseModel):
    ticket: str | None = None


class DeploymentIn(BaseModel):
    model: str
    version: int
    devices: list[str] | None = None
    all: bool = False
    mode: str = "full"
    share: float = 0.0
    slo: dict[str, float] = Field(default_factory=dict)
    ticket: str | None = None


class RollbackIn(BaseModel):
    model: str
    devices: list[str] | None = None
    all: bool = False
    ticket: str | None = None


def _device_selection(devices: list[str] | None, all_devices: bool) -> list[str] | Literal["all"]:
    if all_devices and devices:
        raise InvalidInputError("give either a device list or all=true, not both")
    if all_devices:
        return ALL_DEVICES
    if not devices:
        raise InvalidInputError("name the devices, or set all=true")
    return devices


# -- authentication ------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="a hub token")


def _principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    service: HubService = request.app.state.service
    return service.authenticate(creds.credentials if creds else None)


Who = Annotated[Principal, Depends(_principal)]


# -- the app -------------------------------------------------------------------------------


async def _refresh_loop(service: HubService, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            done = await anyio.to_thread.run_sync(service.refresh_expiring)
            if done:
                log.info("re-signed expiring TUF metadata: %s", ", ".join(done))
        except ModelfleetError as e:
            log.error("cannot re-sign expiring TUF metadata: %s", e)


def build_hub_app(service: HubService, refresh_interval_s: float | None = None) -> FastAPI:
    """Create the hub's ASGI app.

    Args:
        service: the hub operations.
        refresh_interval_s: how often a background task re-signs expiring TUF metadata
            while the app runs (``service.config.refresh_interval_s`` if None; 0 disables).

    Returns:
        The FastAPI app.
    """
    interval = (
        service.config.refresh_interval_s if refresh_interval_s is None else refresh_interval_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_refresh_loop(service, interval)) if interval > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="modelfleet hub",
        version=__version__,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    _install_error_handlers(app)
    api = API_PREFIX

    @app.get(f"{api}/health", tags=["hub"])
    def health() -> dict[str, str]:
        """Liveness; needs no token."""
        return {"status": "ok", "version": __version__}

    @app.get(f"{api}/trust-root", tags=["trust"])
    def trust_root(who: Who) -> Response:
        """The trust-root bundle devices bootstrap TUF from (any valid token)."""
        check(who, Permission.TUF)
        return Response(service.trust_root(), media_type="application/json")

    @app.post(f"{api}/tokens", status_code=201, tags=["auth"])
    def create_token(body: TokenIn, who: Who) -> dict[str, str]:
        """Mint a token (admin). The token is shown only in this answer."""
        check(who, Permission.ADMIN)
        token = service.create_token(body.role, body.subject, actor=who.actor)
        return {"token": token, "role": body.role, "subject": body.subject}

    # devices

    @app.post(f"{api}/devices", status_code=201, tags=["devices"])
    def add_device(body: DeviceIn, who: Who) -> dict[str, Any]:
        """Enrol a device (operator); answers its token, shown only here."""
        check(who, Permission.OPERATE)
        device, token = service.add_device(
            body.id, body.site, body.tags, actor=who.actor, ticket=body.ticket
        )
        return {**device, "token": token}

    @app.get(f"{api}/devices", tags=["devices"])
    def list_devices(who: Who) -> list[dict[str, Any]]:
        """Every device with its assignments and last report (viewer)."""
        check(who, Permission.READ)
        return service.list_devices()

    @app.get(f"{api}/devices/{{device_id}}", tags=["devices"])
    def get_device(device_id: str, who: Who) -> dict[str, Any]:
        """One device (viewer, or the device itself)."""
        check(who, Permission.READ, device_id=device_id)
        return service.get_device(device_id)

    @app.post(f"{api}/devices/{{device_id}}/report", tags=["devices"])
    def report(
        device_id: str, body: Annotated[dict[str, Any], Body()], request: Request, who: Who
    ) -> dict[str, str]:
        """A device's check-in (its own token, or admin)."""
        check(who, Permission.ADMIN, device_id=device_id)
        _check_length(request, service.config.max_report_bytes)
        service.record_report(device_id, body)
        return {"status": "recorded"}

    # blobs and models

    @app.post(
        f"{api}/blobs",
        status_code=201,
        tags=["models"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def upload_blob(request: Request, who: Who) -> dict[str, Any]:
        """Stream a raw body into the artefact store (publisher); answers its digest."""
        check(who, Permission.PUBLISH)
        _check_length(request, service.config.max_upload_bytes)
        stream = request.stream().__aiter__()

        async def next_chunk() -> bytes:
            return await stream.__anext__()

        def chunks() -> Iterator[bytes]:
            # Runs in a worker thread: pulls each chunk from the event loop, so the body
            # is streamed into the store without being held in memory.
            while True:
                try:
                    chunk = anyio.from_thread.run(next_chunk)
                except StopAsyncIteration:
                    return
                if chunk:
                    yield chunk

        digest, length = await anyio.to_thread.run_sync(service.put_blob, chunks(), who.actor)
        return {"sha256": digest, "length": length}

    @app.post(f"{api}/models/{{name}}/versions", status_code=201, tags=["models"])
    def register_version(name: str, body: VersionIn, who: Who) -> dict[str, Any]:
        """Register the next version of a model from uploaded blobs (publisher)."""
        check(who, Permission.PUBLISH)
        return service.register_version(
            name,
            body.blob,
            body.sample_input_blob,
            actor=who.actor,
            lineage=body.lineage,
            ticket=body.ticket,
        )

    @app.get(f"{api}/models", tags=["models"])
    def list_models(who: Who) -> list[dict[str, Any]]:
        check(who, Permission.READ)
        return service.list_models()

    @app.get(f"{api}/models/{{name}}", tags=["models"])
    def get_model(name: str, who: Who) -> dict[str, Any]:
        check(who, Permission.READ)
        return service.get_model(name)

    @app.get(f"{api}/models/{{name}}/versions/{{version}}", tags=["models"])
    def get_version(name: str, version: int, who: Who) -> dict[str, Any]:
        check(who, Permission.READ)
        return service.get_version(name, version)

    @app.get(f"{api}/models/{{name}}/versions/{{version}}/manifest", tags=["models"])
    def get_manifest(name: str, version: int, who: Who) -> Response:
        """The package manifest JSON of a version."""
        check(who, Permission.READ)
        return Response(service.manifest_bytes(name, version), media_type="application/json")

    @app.post(f"{api}/models/{{name}}/versions/{{version}}/revoke", tags=["models"])
    def revoke_version(name: str, version: int, body: RevokeIn, who: Who) -> dict[str, Any]:
        """Remove a version from the signed catalog (publisher)."""
        check(who, Permission.PUBLISH)
        return service.revoke_version(name, version, actor=who.actor, ticket=body.ticket)

    # rollout

    @app.post(f"{api}/deployments", status_code=201, tags=["rollout"])
    def deploy(body: DeploymentIn, who: Who) -> dict[str, Any]:
        """Assign a version to devices (operator)."""
        check(who, Permission.OPERATE)
        return service.deploy(
            body.model,
            body.version,
            _device_selection(body.devices, body.all),
            body.mode,
            body.share,
            body.slo,
            actor=who.actor,
            ticket=body.ticket,
        )

    @app.post(f"{api}/rollbacks", status_code=201, tags=["rollout"])
    def rollback(body: RollbackIn, who: Who) -> dict[str, Any]:
        """Send devices back to their last good version (operator)."""
        check(who, Permission.OPERATE)
        return service.rollback(
            body.model,
            _device_selection(body.devices, body.all),
            actor=who.actor,
            ticket=body.ticket,
        )

    # audit

    @app.get(f"{api}/audit", tags=["audit"])
    def audit(who: Who, after_seq: int = 0, limit: int = 100) -> dict[str, Any]:
        """Audit entries after ``after_seq``, oldest first (viewer)."""
        check(who, Permission.READ)
        return {"entries": service.audit(after_seq, limit)}

    @app.get(f"{api}/audit/verify", tags=["audit"])
    def audit_verify(who: Who) -> dict[str, Any]:
        """Check the audit hash chain (viewer)."""
        check(who, Permission.READ)
        broken = service.verify_audit()
        return {"intact": broken is None, "first_broken_seq": broken}

    # TUF

    @app.get("/tuf/{repo}/metadata/{filename}", tags=["trust"])
    def tuf_metadata(repo: str, filename: str, who: Who) -> FileResponse:
        """Signed metadata of the catalog or director repository (any valid token)."""
        check(who, Permission.TUF)
        return FileResponse(
            service.tuf_metadata(repo, filename),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/tuf/{repo}/targets/{path:path}", tags=["trust"])
    def tuf_target(repo: str, path: str, who: Who) -> FileResponse:
        """A listed target by its consistent-snapshot path (any valid token).

        A device token reads only its own director targets: one device cannot learn what
        another is told to run.
        """
        check(who, Permission.TUF)
        if (
            who.role is Role.DEVICE
            and repo == "director"
            and not path.startswith(f"devices/{who.subject}/")
        ):
            raise ForbiddenError("a device may read only its own desired state")
        return FileResponse(service.tuf_target(repo, path), media_type="application/octet-stream")

    return app


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")


def _install_error_handlers(app: FastAPI) -> None:
    async def modelfleet_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelfleetError)
        status = status_of(exc)
        if status >= 500:
            log.error("request failed: %s", exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            {"error": str(exc), "type": type(exc).__name__}, status_code=status, headers=headers
        )

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse({"error": "internal error; see the hub log"}, status_code=500)

    app.add_exception_handler(ModelfleetError, modelfleet_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def serve(
    config: HubConfig | Path,
    *,
    host: str | None = None,
    port: int | None = None,
    clock: Clock | None = None,
) -> None:
    """Run the hub API with uvicorn until interrupted (the process edge).

    Args:
        config: the hub config, or the hub home to load it from (then
            ``MODELFLEET_DATABASE_URL`` from the environment overrides the database).
        host, port: override the config's listening address.
        clock: time source (the system clock if None).

    Raises:
        ConfigError: the home is not initialised.
        StorageError: the database cannot be reached or migrated.
    """
    import uvicorn

    if not isinstance(config, HubConfig):
        config = load_hub_config(Path(config), os.environ)
    service = HubService(config, clock or SystemClock())
    try:
        app = build_hub_app(service)
        uvicorn.run(
            app,
            host=host if host is not None else config.host,
            port=port if port is not None else config.port,
            log_level="info",
        )
    finally:
        service.close()
