"""Operator overrides on the agent: the endpoint and the OIP request parameter count into
the window of the version (and role) whose answer a human judged; bad reports are clear
4xx answers and count nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet.agent.app import build_agent_app
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.telemetry.windows import WindowRecorder
from modelfleet.telemetry.wire import merge_windows, parse_batch
from tests.fakes_model import linear_classifier
from tests.serving._support import AppClient
from tests.telemetry._records import T0

W = np.array([[1.0, -1.0], [0.5, 0.2], [-0.3, 0.8]])
X = np.zeros((2, 3), dtype=np.float32)


def _host(mode: Mode = Mode.SPLIT) -> ModelHost:
    host = ModelHost()
    v1 = linear_classifier("iris", "1", W)
    v2 = linear_classifier("iris", "2", W)
    v0 = linear_classifier("iris", "0", W)
    host.set_route("iris", Route(v1, candidate=v2, mode=mode, share=0.5, previous=v0))
    return host


@pytest.fixture
def recorder() -> WindowRecorder:
    return WindowRecorder("edge-1", T0)


@pytest.fixture
def client(recorder: WindowRecorder) -> Iterator[AppClient]:
    with AppClient(build_agent_app(_host(), on_override=recorder.on_override)) as c:
        yield c


def _counts(recorder: WindowRecorder) -> dict[tuple[str, str], dict[str, int]]:
    records = recorder.close(T0)
    if not records:
        return {}
    doc = {"format": 1, "device_id": "edge-1", "buffer_id": "b", "sent_at": T0.isoformat(),
           "records": [{"seq": i + 1, **r} for i, r in enumerate(records)]}  # fmt: skip
    checked = parse_batch(doc, "edge-1").records  # the hub's own check passes
    return {
        (r["version"], r["role"]): r["overrides"] for r in checked if any(r["overrides"].values())
    }


def _post(client: AppClient, doc: Any, path: str = "/v2/models/iris/overrides") -> Any:
    return client.post(path, content=orjson.dumps(doc))


P2 = "/v2/models/iris/versions/2/overrides"


def test_overrides_count_in_the_window_of_the_judged_version_and_its_role(
    client: AppClient, recorder: WindowRecorder
) -> None:
    answers = [
        _post(client, {"outcome": "overridden"}),  # no version: production now
        _post(client, {"outcome": "confirmed", "version": "2", "request_id": "r-1"}),
        _post(
            client,
            {"outcome": "overridden", "label": "setosa"},
            "/v2/models/iris/versions/2/overrides",
        ),
        _post(client, {"outcome": "confirmed", "version": "0", "label": 3}),  # previous
    ]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert answers[1].json() == {
        "model": "iris", "version": "2", "role": "candidate", "outcome": "confirmed"
    }  # fmt: skip
    assert _counts(recorder) == {
        ("1", "production"): {"overridden": 1, "confirmed": 0},
        ("2", "candidate"): {"overridden": 1, "confirmed": 1},
        ("0", "production"): {"overridden": 0, "confirmed": 1},
    }
    metrics = client.get("/metrics").text
    assert (
        'modelfleet_agent_overrides_total{model="iris",outcome="overridden",version="2"} 1.0'
        in metrics
    )


def test_an_inference_request_may_carry_an_override_of_the_previous_answer(
    client: AppClient, recorder: WindowRecorder
) -> None:
    tensor = {"name": "X", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()}
    override = {"outcome": "overridden", "version": "2", "request_id": "prev"}
    body = {"inputs": [tensor], "parameters": {"modelfleet_override": override}}
    r = client.post("/v2/models/iris/versions/1/infer", content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"
    bad = {"inputs": [tensor], "parameters": {"modelfleet_override": {"outcome": "maybe"}}}
    r = client.post("/v2/models/iris/infer", content=orjson.dumps(bad))
    assert r.status_code == 400 and "outcome" in r.json()["error"]
    assert _counts(recorder) == {("2", "candidate"): {"overridden": 1, "confirmed": 0}}


P = "/v2/models/iris/overrides"
P1 = "/v2/models/iris/versions/1/overrides"
C = b'{"outcome": "confirmed"'
BIG = C + b', "label": "' + b"x" * 70000 + b'"}'


@pytest.mark.parametrize(
    ("path", "content", "status", "text"),
    [
        (P, b'{"outcome": "maybe"}', 400, "'overridden' or 'confirmed'"),
        (P, C + b', "why": 1}', 400, "unknown override field"),
        (P, b"[1]", 400, "JSON object"),
        (P, b"{nope", 400, "must be JSON"),
        (P, C + b', "label": true}', 400, "label"),
        (P, C + b', "version": ""}', 400, "version"),
        (P1, C + b', "version": "2"}', 400, "path names"),
        (P, C + b', "version": "9"}', 404, "no loaded version"),
        ("/v2/models/rose/overrides", b'{"outcome": "confirmed"}', 404, "unknown model"),
        (P, BIG, 413, "at most"),
    ],
)  # fmt: skip
def test_a_bad_override_is_a_clear_4xx_and_counts_nothing(
    client: AppClient, recorder: WindowRecorder, path: str, content: bytes, status: int, text: str
) -> None:
    r = client.post(path, content=content)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]
    assert _counts(recorder) == {}


def test_a_shadow_candidate_cannot_be_overridden(recorder: WindowRecorder) -> None:
    app = build_agent_app(_host(Mode.SHADOW), on_override=recorder.on_override)
    with AppClient(app) as client:
        r = _post(client, {"outcome": "overridden", "version": "2"})
    assert r.status_code == 409 and "shadow" in r.json()["error"]


def test_override_counters_merge_exactly_across_windows() -> None:
    windows = []
    for n in (1, 2, 3):
        rec = WindowRecorder("edge-1", T0)
        for _ in range(n):
            rec.on_override("iris", "2", "candidate", "overridden")
        rec.on_override("iris", "2", "candidate", "confirmed")
        windows.extend(rec.close(T0))
    totals = merge_windows(windows)
    assert totals.counters["overrides.overridden"] == 6
    assert totals.counters["overrides.confirmed"] == 3
    assert totals.to_record()["overrides"] == {"overridden": 6, "confirmed": 3}
    with pytest.raises(KeyError):
        WindowRecorder("edge-1", T0).on_override("iris", "2", "candidate", "maybe")


def test_apps_sharing_one_metrics_object_count_overrides_in_it() -> None:
    from modelfleet.agent.metrics import AgentMetrics

    host = _host()
    metrics = AgentMetrics(host)
    for _ in range(2):  # a second app on the same metrics (benchmarks, restarts) must build
        app = build_agent_app(host, metrics=metrics)
    with AppClient(app) as c:
        r = c.post("/v2/models/iris/overrides", json={"outcome": "overridden"})
        assert r.status_code == 200, r.text
    assert "modelfleet_agent_overrides_total{" in metrics.render()[0].decode()
