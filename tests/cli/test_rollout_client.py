"""The SDK's rollout methods: the request each sends, and the hub's errors as exceptions
(httpx.MockTransport stands in for the hub)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from modelfleet.client import ROLLOUT_COMMANDS, HubClient
from modelfleet.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    TransportError,
)

Sent = list[tuple[str, str, Any]]


def client_with(answer: Callable[[httpx.Request], httpx.Response]) -> tuple[HubClient, Sent]:
    sent: Sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        sent.append((request.method, str(request.url).removeprefix("http://hub"), body))
        assert request.headers["authorization"] == "Bearer tok"
        return answer(request)

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://hub")
    return HubClient("http://hub", "tok", http=http), sent


def ok(body: Any, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


def test_each_method_sends_its_request() -> None:
    client, sent = client_with(ok({"id": "ro-1"}))
    client.create_rollout({"model": "iris", "version": 2, "target": {"all": True}})
    client.get_rollout("ro-1")
    for command in ROLLOUT_COMMANDS:
        client.rollout_command("ro-1", command, reason="why", ticket="CHG-1")
    client.set_model("iris", safety_classified=True)
    lists, list_sent = client_with(ok([]))
    lists.list_rollouts(state="paused", model="iris", limit=5)
    lists.list_rollouts()
    lists.rollout_evaluations("ro-1", limit=3)
    assert sent == [
        ("POST", "/api/v1/rollouts", {"model": "iris", "version": 2, "target": {"all": True}}),
        ("GET", "/api/v1/rollouts/ro-1", None),
        *[
            ("POST", f"/api/v1/rollouts/ro-1/{c}", {"reason": "why", "ticket": "CHG-1"})
            for c in ROLLOUT_COMMANDS
        ],
        ("PATCH", "/api/v1/models/iris", {"safety_classified": True}),
    ]
    assert list_sent == [
        ("GET", "/api/v1/rollouts?state=paused&model=iris&limit=5", None),
        ("GET", "/api/v1/rollouts", None),
        ("GET", "/api/v1/rollouts/ro-1/evaluations?limit=3", None),
    ]


@pytest.mark.parametrize(
    ("status", "kind", "exception"),
    [
        (400, "InvalidInputError", InvalidInputError),
        (403, "ForbiddenError", ForbiddenError),
        (404, "NotFoundError", NotFoundError),
        (409, "ConflictError", ConflictError),
        (502, None, TransportError),
    ],
)
def test_hub_errors_are_modelfleet_errors_with_the_hubs_message(
    status: int, kind: str | None, exception: type[Exception]
) -> None:
    client, _ = client_with(ok({"error": "cannot resume a running rollout", "type": kind}, status))
    with pytest.raises(exception, match=f"cannot resume a running rollout \\(HTTP {status}\\)"):
        client.rollout_command("ro-1", "resume")


@pytest.mark.parametrize("bad", ["ro-1/pause", "../models", "", "ro 1", "ro-1?x=1", "-x"])
def test_an_id_that_would_reach_another_endpoint_is_refused_unsent(bad: str) -> None:
    client, sent = client_with(ok({}))
    with pytest.raises(InvalidInputError, match="not a rollout id"):
        client.get_rollout(bad)
    with pytest.raises(InvalidInputError, match="not a model name"):
        client.set_model(bad, safety_classified=False)
    assert sent == []


def test_an_unknown_command_is_refused_unsent() -> None:
    client, sent = client_with(ok({}))
    with pytest.raises(InvalidInputError, match="unknown rollout command 'restart'"):
        client.rollout_command("ro-1", "restart")
    assert sent == []


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (lambda c: c.get_rollout("ro-1"), []),
        (lambda c: c.list_rollouts(), {"id": "x"}),
        (lambda c: c.list_rollouts(), [1, 2]),
    ],
    ids=["object-expected", "list-expected", "list-of-objects-expected"],
)
def test_an_answer_of_the_wrong_shape_is_a_transport_error(
    call: Callable[[HubClient], Any], answer: Any
) -> None:
    client, _ = client_with(ok(answer))
    with pytest.raises(TransportError, match="the hub answered"):
        call(client)
