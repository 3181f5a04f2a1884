"""The one place where errors become HTTP answers.

The service raises the :mod:`modelfleet.errors` tree and never an HTTP exception; this
module maps each kind to a status code, answers every failure as JSON
``{"error": "...", "type": "..."}`` and never lets a traceback reach a client. It also
says which error answers each route documents (:func:`error_responses`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfleet.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    PayloadTooLargeError,
    RefusedUpdateError,
    StorageError,
    TransportError,
    UnauthenticatedError,
)

__all__ = [
    "UNEXPECTED_ERROR",
    "ErrorBody",
    "error_answer",
    "error_responses",
    "install_error_handlers",
    "openapi_with_400s",
    "status_of",
]

log = logging.getLogger("modelfleet.hub")

# Most specific first: the first matching kind decides.
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
    (StorageError, 503),  # the database or the store is unavailable: retry later
)

_DESCRIPTIONS = {
    400: "Invalid request: malformed or out-of-range parameters or body",
    401: "Missing or invalid bearer token",
    403: "The token's role does not allow this",
    404: "Not found",
    409: "Conflicts with existing state",
    413: "The request body exceeds the configured limit",
    503: "Storage unavailable (database or artefact store); retry later",
}


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="what went wrong, for a person")
    type: str | None = Field(default=None, description="the modelfleet error class, if any")


def status_of(error: ModelfleetError) -> int:
    """The HTTP status for a modelfleet error (500 for config and trust faults)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_answer(exc: ModelfleetError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """How the hub answers a modelfleet error: status, :class:`ErrorBody` fields, headers
    (``WWW-Authenticate`` on a 401). A 5xx is logged, and answered with the first line of
    its message only: a database error goes on with the SQL statement and its parameters,
    which are for the hub log, not for clients."""
    status = status_of(exc)
    message = str(exc)
    if status >= 500:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        message = message.partition("\n")[0][:300]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return status, {"error": message, "type": type(exc).__name__}, headers


UNEXPECTED_ERROR: dict[str, Any] = {"error": "internal error; see the hub log", "type": None}
"""The body of a 500 for anything that is not a modelfleet error (details go to the log)."""


def error_responses(*statuses: int, storage: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer ``statuses``, plus 503 when it
    touches storage (every route that checks a token does)."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in sorted({*statuses, *((503,) if storage else ())})
    }


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()))
    kind = error.get("type")
    if kind == "enum":
        # e.g. "body.mode: unknown mode 'yolo'; use 'full', 'split' or 'shadow'"
        field = str(error["loc"][-1]) if error.get("loc") else "value"
        expected = error.get("ctx", {}).get("expected", "")
        return f"{where}: unknown {field} {error.get('input')!r}; use {expected}"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    """Answer modelfleet errors, request validation failures, HTTP errors (unknown
    route, wrong method) and anything unexpected as JSON error bodies."""

    async def modelfleet_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelfleetError)
        status, body, headers = error_answer(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(_problem(e) for e in exc.errors())
        body = ErrorBody(error=f"invalid request: {problems}", type="InvalidInputError")
        return JSONResponse(body.model_dump(), status_code=400)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            ErrorBody(error=str(exc.detail)).model_dump(),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(UNEXPECTED_ERROR, status_code=500)

    app.add_exception_handler(ModelfleetError, modelfleet_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def openapi_with_400s(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document without the 422 answers it adds to every route with
    parameters: the hub answers invalid requests with 400 and :class:`ErrorBody`, which
    each route documents through :func:`error_responses`."""
    if app.openapi_schema is None:
        doc = FastAPI.openapi(app)
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema
