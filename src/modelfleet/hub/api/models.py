"""Blobs and models: uploads, version registration, lookups, revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Request, Response

from modelfleet.errors import InvalidInputError
from modelfleet.hub.api._deps import Service, VersionNumber, Who, check_length
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import (
    BlobOut,
    ModelOut,
    ModelSafetyIn,
    ModelSummaryOut,
    RevokeIn,
    VersionIn,
    VersionOut,
)
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["models"])

_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}


@router.post(
    "/blobs",
    status_code=201,
    response_model=BlobOut,
    responses=error_responses(400, 401, 403, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_blob(request: Request, who: Who, service: Service) -> dict[str, Any]:
    """Stream a raw body into the artefact store (publisher); answers its digest.
    An empty body is refused (400)."""
    check(who, Permission.PUBLISH)
    check_length(request, service.config.max_upload_bytes)
    if request.headers.get("content-length") == "0":
        raise InvalidInputError("the upload is empty")
    stream = _non_empty(request.stream())
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        raise InvalidInputError("the upload is empty") from None

    async def next_chunk() -> bytes:
        return await stream.__anext__()

    def chunks() -> Iterator[bytes]:
        # Runs in a worker thread: pulls each chunk from the event loop, so the body is
        # streamed into the store without being held in memory.
        yield first
        while True:
            try:
                yield anyio.from_thread.run(next_chunk)
            except StopAsyncIteration:
                return

    digest, length = await anyio.to_thread.run_sync(service.put_blob, chunks(), who.actor)
    return {"sha256": digest, "length": length}


async def _non_empty(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stream:
        if chunk:
            yield chunk


@router.post(
    "/models/{name}/versions",
    status_code=201,
    response_model=VersionOut,
    responses=error_responses(400, 401, 403, 409),
)
def register_version(name: str, body: VersionIn, who: Who, service: Service) -> dict[str, Any]:
    """Register the next version of a model from uploaded blobs (publisher). A model
    ONNX Runtime cannot load, or that fails its smoke test, is refused (400)."""
    check(who, Permission.PUBLISH)
    return service.register_version(
        name,
        body.blob,
        body.sample_input_blob,
        actor=who.actor,
        lineage=body.lineage,
        ticket=body.ticket,
        decisions={k: d.model_dump() for k, d in body.decisions.items()}
        if body.decisions
        else None,
        reference_profile=body.reference_profile,
        anomaly_scorer=body.anomaly_scorer,
        target=body.target,
    )


@router.get("/models", response_model=list[ModelSummaryOut], responses=error_responses(401, 403))
def list_models(who: Who, service: Service) -> list[dict[str, Any]]:
    """Every model with its latest version number and version count (viewer)."""
    check(who, Permission.READ)
    return service.list_models()


@router.get(
    "/models/{name}", response_model=ModelOut, responses=error_responses(400, 401, 403, 404)
)
def get_model(name: str, who: Who, service: Service) -> dict[str, Any]:
    """A model and all its versions (viewer)."""
    check(who, Permission.READ)
    return service.get_model(name)


@router.patch(
    "/models/{name}", response_model=ModelOut, responses=error_responses(400, 401, 403, 404)
)
def update_model(name: str, body: ModelSafetyIn, who: Who, service: Service) -> dict[str, Any]:
    """Mark a model safety-classified or not (publisher): its rollouts then need a change
    ticket and a second person's approval."""
    check(who, Permission.PUBLISH)
    return service.set_model_safety(
        name, body.safety_classified, actor=who.actor, ticket=body.ticket
    )


@router.get(
    "/models/{name}/versions/{version}",
    response_model=VersionOut,
    responses=error_responses(400, 401, 403, 404),
)
def get_version(name: str, version: VersionNumber, who: Who, service: Service) -> dict[str, Any]:
    """One version, with the devices it is deployed to (viewer)."""
    check(who, Permission.READ)
    return service.get_version(name, version)


@router.get(
    "/models/{name}/versions/{version}/manifest",
    response_class=Response,
    responses={
        200: {"description": "the manifest JSON", "content": _JSON_OBJECT},
        **error_responses(400, 401, 403, 404),
    },
)
def get_manifest(name: str, version: VersionNumber, who: Who, service: Service) -> Response:
    """The package manifest JSON of a version (viewer)."""
    check(who, Permission.READ)
    return Response(service.manifest_bytes(name, version), media_type="application/json")


@router.post(
    "/models/{name}/versions/{version}/revoke",
    response_model=VersionOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def revoke_version(
    name: str, version: VersionNumber, body: RevokeIn, who: Who, service: Service
) -> dict[str, Any]:
    """Remove a version from the signed catalog (publisher); devices using it fall back
    to their previous version (``fallback`` says which moved)."""
    check(who, Permission.PUBLISH)
    return service.revoke_version(
        name, version, actor=who.actor, ticket=body.ticket, reason=body.reason
    )
