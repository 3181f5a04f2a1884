"""What every router needs: the service, the authenticated caller, bounded parameters."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from modelfleet.errors import InvalidInputError, PayloadTooLargeError
from modelfleet.hub.auth import Principal
from modelfleet.hub.service import HubService

__all__ = [
    "INT32_MAX",
    "Service",
    "VersionNumber",
    "Who",
    "check_length",
    "no_nul",
    "refuse_nul_in_path_and_query",
    "refuse_unknown_query",
]

# Version numbers, serials and audit sequence numbers are 32-bit INTEGER columns on
# PostgreSQL (SQLite's are 64-bit): bound every integer parameter by the narrower, so an
# out-of-range number is a 400, never an OverflowError (issue 6, defect 4).
INT32_MAX = 2**31 - 1

_bearer = HTTPBearer(auto_error=False, description="a hub token")


def _service(request: Request) -> HubService:
    service: HubService = request.app.state.service
    return service


Service = Annotated[HubService, Depends(_service)]


def _principal(
    service: Service,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return service.authenticate(creds.credentials if creds else None)


Who = Annotated[Principal, Depends(_principal)]

VersionNumber = Annotated[int, Path(ge=1, le=INT32_MAX, description="a version number")]


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length exceeds ``limit`` before reading it.

    Raises:
        PayloadTooLargeError: ``Content-Length`` is above ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")


def refuse_unknown_query(request: Request) -> None:
    """Refuse query parameters a route that takes some does not declare (a typo such as
    ``?after_sequence=`` would otherwise be ignored without a word). Routes that take
    none ignore a query string, as a health probe's cache-buster expects.

    Raises:
        InvalidInputError: a query parameter the route does not know.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _query_names(route.dependant)  # a few fields: cheaper than caching safely
    unknown = sorted(set(request.query_params) - known)
    if known and unknown:
        names = ", ".join(repr(name) for name in unknown)
        allowed = ", ".join(sorted(known))
        raise InvalidInputError(f"unknown query parameter {names} (this route takes: {allowed})")
    # No route takes a list: ``?version=1&version=2`` would silently mean the last one.
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, n in counts.items() if n > 1 and name in known)
    if repeated:
        names = ", ".join(repr(name) for name in repeated)
        raise InvalidInputError(f"query parameter {names} given more than once")


def _query_names(dependant: Dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def no_nul(value: str) -> str:
    """``value``, if it holds no NUL character (PostgreSQL text cannot store one: the
    request would fail in the database as a 503 instead of a 400).

    Raises:
        ValueError: it does (pydantic reports it as a validation error, so a 400).
    """
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def refuse_nul_in_path_and_query(request: Request) -> None:
    """Refuse NUL characters in path and query parameters (see :func:`no_nul`).

    Raises:
        InvalidInputError: a parameter holds one.
    """
    for where, params in (("path", request.path_params), ("query", request.query_params)):
        for name, value in params.items():
            if "\x00" in str(value) or "\x00" in name:
                raise InvalidInputError(
                    f"{where} parameter {name!r} must not contain NUL characters"
                )
