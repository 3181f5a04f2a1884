"""``HttpHubLink.send_telemetry``: one try, a deadline, errors by kind (contract 1)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from modelfleet.agent.hub_link import HttpHubLink
from modelfleet.errors import (
    ForbiddenError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    TransportError,
    UnauthenticatedError,
)

BATCH = {"format": 1, "device_id": "edge-1", "records": []}


def link(status: int, calls: list[httpx.Request], body: bytes = b"{}") -> HttpHubLink:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, content=body)

    return HttpHubLink(
        "http://hub", "tok", transport=httpx.MockTransport(handler), sleep=lambda s: None
    )


def test_a_stored_batch_returns_the_hubs_answer() -> None:
    calls: list[httpx.Request] = []
    answer = {"stored": 2, "duplicates": 0, "acked_through": 7, "status": "recorded"}
    got = link(200, calls, orjson.dumps(answer)).send_telemetry("edge-1", BATCH)
    assert got == answer
    assert calls[0].url.path == "/api/v1/devices/edge-1/telemetry"
    assert orjson.loads(calls[0].content) == BATCH
    assert calls[0].headers["authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInputError),
        (413, InvalidInputError),
        (401, UnauthenticatedError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (429, TransportError),
        (500, TransportError),
        (503, TransportError),
    ],
)
def test_each_refusal_maps_to_its_error_and_is_never_retried_here(
    status: int, error: type[ModelfleetError]
) -> None:
    calls: list[httpx.Request] = []
    with pytest.raises(error):
        link(status, calls).send_telemetry("edge-1", BATCH)
    assert len(calls) == 1  # the forwarder backs off itself


def test_an_unreachable_hub_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    hub = HttpHubLink("http://hub", "tok", transport=httpx.MockTransport(handler))
    with pytest.raises(TransportError, match="cannot reach"):
        hub.send_telemetry("edge-1", BATCH)
