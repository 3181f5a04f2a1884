"""``POST /api/v1/devices/{id}/report``, the check-in, as a bare ASGI endpoint (issue 8, H9).

Every device polls through this one route, so it skips what FastAPI costs per request: the
router, five dependencies of which four are run on the thread pool (one hop each), the
request and response objects. It reads the headers once from the scope and does the
whole check-in — token, permission, size limit, report — in one thread-pool call (for a
device credential one query: the credential, the stored report and the director version,
issue 10), then
sends raw ASGI messages. :class:`~modelfleet.hub.app.HubApp` hands it the matching requests
ahead of the router; the FastAPI route in :mod:`modelfleet.hub.api.devices` stays, for the
OpenAPI document and for any request this fast path does not take. Same rules, answers and
errors as that route (tests/hub/test_checkin_route.py holds them side by side).
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio.to_thread
import orjson

from modelfleet.errors import InvalidInputError, ModelfleetError
from modelfleet.hub.api._errors import UNEXPECTED_ERROR, error_answer
from modelfleet.hub.service import HubService

__all__ = ["CheckinEndpoint", "checkin_device_id"]

log = logging.getLogger("modelfleet.hub")

_PREFIX: Final = "/api/v1/devices/"
_SUFFIX: Final = "/report"
_JSON: Final = (b"content-type", b"application/json")


def checkin_device_id(path: str) -> str | None:
    """The device id of a check-in path ``/api/v1/devices/{id}/report`` (``path`` as in the
    ASGI scope: percent-decoded, without the root path), else None (pure)."""
    if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
        device_id = path[len(_PREFIX) : -len(_SUFFIX)]
        if device_id and "/" not in device_id:
            return device_id
    return None


def _bearer(value: bytes | None) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header, as FastAPI's ``HTTPBearer``
    (``auto_error=False``) reads them: None unless the scheme is bearer and a token follows."""
    if not value:
        return None
    scheme, _, credentials = value.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


def _refuse_nul(device_id: str, query: bytes) -> None:
    """What ``refuse_nul_in_path_and_query`` refuses (the app-wide dependency); the route
    takes no query parameters, so any other query string is ignored, as there.

    Raises:
        InvalidInputError: a NUL in the device id or in a query parameter.
    """
    if "\x00" in device_id:
        raise InvalidInputError("path parameter 'device_id' must not contain NUL characters")
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                raise InvalidInputError(f"query parameter {name!r} must not contain NUL characters")


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


class CheckinEndpoint:
    """The check-in route as an ASGI callable taking the device id from the path.

    Args:
        service: the hub operations.
    """

    def __init__(self, service: HubService) -> None:
        self._service = service
        self._limit = service.config.max_report_bytes

    async def __call__(
        self, scope: dict[str, Any], receive: Any, send: Any, device_id: str
    ) -> None:
        authorization = declared = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
            elif key == b"content-length":
                declared = value
        try:
            _refuse_nul(device_id, scope.get("query_string", b""))
            token = _bearer(authorization)
            limit = self._limit
            body: bytes | str
            if declared is not None and declared.isdigit() and int(declared) > limit:
                body = f"the request body exceeds the limit of {limit} bytes"
            else:
                body = await self._read_body(receive)
            outcome = await anyio.to_thread.run_sync(self._check_in, token, device_id, body)
        except _ClientGone:
            return
        except ModelfleetError as e:
            status, error, headers = error_answer(e)
            extra = [(b"www-authenticate", b"Bearer")] if headers else []
            await _send(send, status, orjson.dumps(error), extra)
            return
        except Exception:
            log.exception("unexpected error")
            await _send(send, 500, orjson.dumps(UNEXPECTED_ERROR), [])
            return
        await _send(send, 200, orjson.dumps({**outcome, "status": "recorded"}), [])

    async def _read_body(self, receive: Any) -> bytes | str:
        """The body, or once it exceeds the limit why it is refused (the rest is not read).

        Raises:
            _ClientGone: the client went away.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                return f"the report exceeds the limit of {self._limit} bytes"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _check_in(self, token: str | None, device_id: str, body: bytes | str) -> dict[str, Any]:
        """Token, permission, size, report: in this order, as the FastAPI route checks them
        (on the thread pool: each may read the database). ``body`` is the body, or why its
        size is refused (the messages the FastAPI route gives).

        Raises:
            UnauthenticatedError, ForbiddenError, PayloadTooLargeError, and what
            ``HubService.record_report`` raises.
        """
        return self._service.check_in(token, device_id, body)


async def _send(send: Any, status: int, content: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-length", b"%d" % len(content)), _JSON, *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
