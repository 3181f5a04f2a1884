"""The agent's link to the hub: retries with backoff, errors by kind, the token check."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from modelfleet.agent.hub_link import HttpHubLink, check_identity
from modelfleet.backoff import BackoffPolicy
from modelfleet.errors import (
    ForbiddenError,
    NotFoundError,
    TransportError,
    UnauthenticatedError,
)


def _link(handler: Any, sleeps: list[float], attempts: int = 3) -> HttpHubLink:
    return HttpHubLink(
        "http://hub",
        "dev-token",
        attempts=attempts,
        backoff=BackoffPolicy(base_s=1.0, cap_s=3.0),
        sleep=sleeps.append,
        rand=lambda: 0.5,
        transport=httpx.MockTransport(handler),
    )


def test_busy_hub_is_retried_with_capped_jittered_backoff_then_succeeds() -> None:
    answers = [503, 502, 429, 200]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = answers.pop(0)
        body = {"status": "recorded", "applied_rollbacks": ["a"]} if status == 200 else {}
        return httpx.Response(status, json=body)

    sleeps: list[float] = []
    answer = _link(handler, sleeps, attempts=4).check_in("dev-1", {"rollbacks": []})
    assert answer == {"status": "recorded", "applied_rollbacks": ["a"]}
    assert sleeps == [0.5, 1.0, 1.5]  # 0.5 * min(3, 1 * 2^n)
    assert seen[0].url.path == "/api/v1/devices/dev-1/report"
    assert seen[0].headers["Authorization"] == "Bearer dev-token"
    assert orjson.loads(seen[0].content) == {"rollbacks": []}


def test_unreachable_hub_gives_up_after_its_attempts_with_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sleeps: list[float] = []
    with pytest.raises(TransportError, match="cannot reach the hub"):
        _link(handler, sleeps).whoami()
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, UnauthenticatedError), (403, ForbiddenError), (404, NotFoundError)],
)
def test_client_errors_are_not_retried(status: int, error: type[Exception]) -> None:
    sleeps: list[float] = []
    with pytest.raises(error):
        _link(lambda r: httpx.Response(status), sleeps).whoami()
    assert sleeps == []


@pytest.mark.parametrize(
    ("identity", "refused"),
    [
        ({"subject": "edge-1", "role": "device", "device_id": "edge-1"}, None),
        ({"subject": "admin", "role": "admin", "device_id": None}, "'admin' token"),
        ({"subject": "ops", "role": "operator", "device_id": None}, "'operator' token"),
        ({"subject": "edge-2", "role": "device", "device_id": "edge-2"}, "belongs to device"),
        ({}, "None"),
    ],
    ids=["own-device", "admin", "operator", "other-device", "empty-answer"],
)
def test_only_this_devices_token_is_accepted(identity: dict[str, Any], refused: str | None) -> None:
    if refused is None:
        check_identity(identity, "edge-1")
        return
    with pytest.raises(ForbiddenError, match=refused):
        check_identity(identity, "edge-1")


def test_the_no_hub_link_fails_every_call_at_once_without_a_network() -> None:
    from modelfleet.agent.hub_link import NoHubLink

    link = NoHubLink("offline for the test")
    for call in (
        link.whoami,
        link.trust_root,
        lambda: link.check_in("d", {}),
        lambda: link.send_telemetry("d", {}),
    ):
        with pytest.raises(TransportError, match="offline for the test"):
            call()
