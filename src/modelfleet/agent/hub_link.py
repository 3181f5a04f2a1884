"""The agent's own link to the hub (issue 6, contract 8): who am I, the trust root, check-in,
telemetry batches (issue 7).

The agent never imports the operator SDK (``modelfleet.client``) or the hub. This is the
one interface the agent has to the hub's API; TUF metadata and artefacts travel through
:class:`~modelfleet.trust.client.DeviceTrustClient` instead. Tests use an in-memory
:class:`HubLink` or :class:`HttpHubLink` over an ``httpx.MockTransport``.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol

import httpx
import orjson

from modelfleet.backoff import BackoffPolicy
from modelfleet.errors import (
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    TransportError,
    UnauthenticatedError,
)

__all__ = ["HttpHubLink", "HubLink", "NoHubLink", "check_identity"]

log = logging.getLogger("modelfleet.agent.hub")

#: Statuses worth another try: the hub is there but busy or restarting.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class HubLink(Protocol):
    """What the agent asks of the hub's API."""

    def whoami(self) -> dict[str, Any]:
        """``{"subject", "role", "device_id"}`` of the token in use (contract 3)."""
        ...

    def trust_root(self) -> bytes:
        """The hub's trust-root bundle (only for trust on first use)."""
        ...

    def check_in(self, device_id: str, report: Mapping[str, Any]) -> dict[str, Any]:
        """Post a check-in report; returns the hub's answer (``applied_rollbacks``...)."""
        ...

    def send_telemetry(self, device_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Post one telemetry batch (issue 7 contract 1); one try, no retry.

        Returns:
            ``{"stored", "duplicates", "acked_through", "status"}``.

        Raises:
            TransportError: unreachable, a deadline passed, 5xx or 429 (try again later).
            InvalidInputError: 400 or 413 (this batch will never be taken as it is).
            UnauthenticatedError, ForbiddenError: 401, 403.
            NotFoundError: 404 (the hub does not know this device).
        """
        ...


class NoHubLink:
    """The link of an agent with no hub to talk to (``agent run --from-folder``, issue 11):
    every call fails at once with TransportError and nothing touches the network, so
    telemetry stays in the buffer for ``bundle report``."""

    def __init__(self, why: str = "no hub: this agent updates from a folder") -> None:
        self._why = why

    def whoami(self) -> dict[str, Any]:
        raise TransportError(self._why)

    def trust_root(self) -> bytes:
        raise TransportError(self._why)

    def check_in(self, device_id: str, report: Mapping[str, Any]) -> dict[str, Any]:
        raise TransportError(self._why)

    def send_telemetry(self, device_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        raise TransportError(self._why)


def check_identity(identity: Mapping[str, Any], device_id: str) -> None:
    """Refuse a token that is not this device's (issue 6, defect 3).

    Raises:
        ForbiddenError: the token's role is not ``device`` or it belongs to another device.
    """
    role = identity.get("role")
    owner = identity.get("device_id")
    if role != "device":
        raise ForbiddenError(
            f"the token given to the agent is a {role!r} token (subject "
            f"{identity.get('subject')!r}), not device {device_id!r}'s: refusing to use it; "
            "pass the token printed by `modelfleet device add` (--token-file or "
            "MODELFLEET_DEVICE_TOKEN)"
        )
    if owner != device_id:
        raise ForbiddenError(
            f"the token given to the agent belongs to device {owner!r}, not {device_id!r}: "
            "refusing to use it"
        )


class _Bearer(httpx.Auth):
    """``Authorization: Bearer`` from a callable, read per request (a rotated credential
    is used from the next request on)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        yield request


class HttpHubLink:
    """:class:`HubLink` over httpx with retries (capped exponential backoff, full jitter).

    Args:
        hub_url: the hub's base URL.
        token: this device's bearer token, or a callable giving the one in use now
            (:class:`~modelfleet.agent.credentials.CurrentCredential`).
        timeout: seconds per request (connect and each read).
        attempts: tries per call for transport failures and 429/502/503/504 (1 to 10).
        backoff: delays between tries.
        sleep: how to wait between tries (tests pass a recorder).
        rand: uniform random source in [0, 1) for the jitter.
        transport: an httpx transport (tests pass a ``MockTransport``).
        telemetry_timeout: seconds for a whole telemetry request (connect, upload, answer).
        verify: TLS verification for ``https://`` (a context pinning the hub's CA).
    """

    def __init__(
        self,
        hub_url: str,
        token: str | Callable[[], str],
        timeout: float = 10.0,
        *,
        attempts: int = 3,
        backoff: BackoffPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        transport: httpx.BaseTransport | None = None,
        telemetry_timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not 1 <= attempts <= 10:
            raise InvalidInputError("attempts must be between 1 and 10")
        self.base_url = hub_url.rstrip("/")
        self._attempts = attempts
        self._backoff = backoff or BackoffPolicy(base_s=0.5, cap_s=5.0)
        self._sleep = sleep
        self._rand = rand
        self._telemetry_timeout = httpx.Timeout(
            telemetry_timeout, connect=min(5.0, telemetry_timeout)
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "modelfleet-agent"},
            auth=_Bearer(token if callable(token) else lambda: token),
            follow_redirects=False,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def send_telemetry(self, device_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """See :meth:`HubLink.send_telemetry`: one request within ``telemetry_timeout``;
        the forwarder does its own backoff, so there is no retry here."""
        path = f"/api/v1/devices/{device_id}/telemetry"
        try:
            r = self._http.request(
                "POST",
                path,
                content=orjson.dumps(dict(batch)),
                headers={"Content-Type": "application/json"},
                timeout=self._telemetry_timeout,
            )
        except httpx.HTTPError as e:
            raise TransportError(f"cannot reach the hub at {self.base_url}: {e}") from e
        if r.status_code == 413:
            raise InvalidInputError(f"POST {path}: the hub says the batch is too large (413)")
        if not r.is_success:
            raise _status_error("POST", path, r)
        return self._json(r)

    def whoami(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/api/v1/whoami"))

    def trust_root(self) -> bytes:
        return self._request("GET", "/api/v1/trust-root").content

    def check_in(self, device_id: str, report: Mapping[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(dict(report))
        r = self._request(
            "POST",
            f"/api/v1/devices/{device_id}/report",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            return self._json(r)
        except TransportError:
            return {}  # an older hub may answer with no body

    def put_device_key(self, device_id: str, public_key_hex: str) -> dict[str, Any]:
        """Send this device's public key for return bundles (issue 11), with its own token.

        Raises:
            InvalidInputError: the hub holds another key for this device (409: an admin
                replaces it).
            TransportError: the hub cannot be reached.
        """
        r = self._request(
            "PUT",
            f"/api/v1/devices/{device_id}/key",
            content=orjson.dumps({"public_key": public_key_hex}),
            headers={"Content-Type": "application/json"},
        )
        return self._json(r)

    def rotate_credential(self, device_id: str, token: str) -> dict[str, Any]:
        """Renew the credential ``token`` (issue 10): the hub's answer with the new one
        (``device_id``, ``credential_id``, ``token``, ``not_after``). Retried as the other
        calls are.

        Raises:
            UnauthenticatedError: the hub refuses ``token`` (revoked, expired too long).
            TransportError: the hub cannot be reached.
        """
        r = self._request(
            "POST", f"/api/v1/devices/{device_id}/credentials/rotate", auth=_Bearer(lambda: token)
        )
        return self._json(r)

    def enrol(self, bootstrap_token: str, device_id: str) -> dict[str, Any]:
        """Exchange a one-time bootstrap token for this device's credential.

        Raises:
            UnauthenticatedError: unknown, used or expired bootstrap token.
            ForbiddenError: the token is for another device.
            TransportError: the hub cannot be reached.
        """
        r = self._request(
            "POST",
            "/api/v1/enrol",
            content=orjson.dumps({"device_id": device_id}),
            headers={"Content-Type": "application/json"},
            auth=_Bearer(lambda: bootstrap_token),
        )
        return self._json(r)

    # -- internals -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.Response:
        failures = 0
        while True:
            error: TransportError
            try:
                r = self._http.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    auth=auth or httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.HTTPError as e:
                error = TransportError(f"cannot reach the hub at {self.base_url}: {e}")
                error.__cause__ = e
            else:
                if r.is_success:
                    return r
                if r.status_code not in _RETRY_STATUSES:
                    raise _status_error(method, path, r)
                error = TransportError(f"{method} {path}: hub answered HTTP {r.status_code}")
            failures += 1
            if failures >= self._attempts:
                raise error
            delay = self._backoff.delay(failures, self._rand)
            log.debug("%s (retry %d in %.2f s)", error, failures, delay)
            self._sleep(delay)

    @staticmethod
    def _json(r: httpx.Response) -> dict[str, Any]:
        try:
            data = orjson.loads(r.content)
        except orjson.JSONDecodeError as e:
            raise TransportError(f"the hub answered {r.request.url.path} with invalid JSON") from e
        if not isinstance(data, dict):
            raise TransportError(f"the hub answered {r.request.url.path} with a non-object")
        return data


def _status_error(method: str, path: str, r: httpx.Response) -> Exception:
    msg = f"{method} {path}: hub answered HTTP {r.status_code}"
    if r.status_code == 401:
        reason = _hub_reason(r)
        return UnauthenticatedError(
            f"{msg}: the hub does not accept this device token" + (f" ({reason})" if reason else "")
        )
    if r.status_code == 403:
        return ForbiddenError(f"{msg}: the token may not do this")
    if r.status_code == 404:
        return NotFoundError(msg)
    if r.status_code in (400, 409, 422):
        return InvalidInputError(msg)
    return TransportError(msg)


def _hub_reason(r: httpx.Response) -> str:
    """The hub's ``error`` text of an error answer (e.g. why a credential is refused)."""
    try:
        body = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        return ""
    return str(body.get("error", ""))[:300] if isinstance(body, dict) else ""
