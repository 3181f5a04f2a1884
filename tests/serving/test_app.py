"""The agent HTTP app: OIP v2 endpoints, JSON errors with the right status, version headers,
split/pin/shadow through HTTP, control-token protection and per-app metrics."""

from __future__ import annotations

import gzip
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet.agent.app import ServingLimits, ShadowSettings, build_agent_app
from modelfleet.agent.metrics import AgentMetrics
from modelfleet.errors import ConflictError
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from tests.serving._support import AppClient, Models, load


@pytest.fixture(scope="module")
def v1(models: Models) -> LoadedModel:
    return load(models.lr_a, "1")


@pytest.fixture(scope="module")
def v2(models: Models) -> LoadedModel:
    return load(models.lr_b, "2")


@pytest.fixture()
def host(v1: LoadedModel) -> ModelHost:
    host = ModelHost()
    host.set_route("iris", Route(v1))
    return host


@pytest.fixture()
def client(host: ModelHost) -> Iterator[AppClient]:
    with AppClient(build_agent_app(host)) as c:
        yield c


def body(x: np.ndarray, **extra: Any) -> bytes:
    tensor = {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor], **extra})


def infer(client: AppClient, x: np.ndarray, path: str = "/v2/models/iris/infer", **kw: Any) -> Any:
    return client.post(path, content=body(x), **kw)


def test_ready_is_503_not_400_until_a_model_is_loaded(v1: LoadedModel) -> None:
    """Issue 6, defect 6: load balancers and KServe/Triton clients read 503 as not ready."""
    host = ModelHost()
    with AppClient(build_agent_app(host)) as client:
        assert client.get("/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", "/v2/models/iris/ready"):
            not_ready = client.get(path)
            assert not_ready.status_code == 503, path
            assert "error" in not_ready.json()
        host.set_route("iris", Route(v1))
        ready = client.get("/v2/health/ready")
        assert (ready.status_code, ready.content) == (200, b"")
        assert client.get("/v2/models/iris/ready").status_code == 200
        assert client.get("/v2/models/iris/versions/9/ready").status_code == 503


def test_server_metadata_advertises_binary_tensor_data(client: AppClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "modelfleet"
    assert "binary_tensor_data" in meta["extensions"]
    assert meta["version"]


def test_model_metadata_lists_versions_and_schema(models: Models, v1: LoadedModel) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, load(models.lr_b, "2"), Mode.SPLIT, 0.1))
    with AppClient(build_agent_app(host)) as client:
        meta = client.get("/v2/models/iris").json()
        assert meta == {
            "name": "iris",
            "versions": ["1", "2"],
            "platform": "onnx_onnxv1",
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            ],
        }
        assert client.get("/v2/models/iris/versions/2").json()["name"] == "iris"
        assert client.get("/v2/models/iris/ready").status_code == 200
        assert client.get("/v2/models/iris/versions/2/ready").status_code == 200


NOT_FOUND = [
    ("GET", "/v2/models/nope"),
    ("GET", "/v2/models/iris/versions/9"),
    ("POST", "/v2/models/nope/infer"),
    ("POST", "/v2/models/iris/versions/9/infer"),
    ("GET", "/v2/no/such/path"),
]


@pytest.mark.parametrize(("method", "path"), NOT_FOUND)
def test_unknown_model_version_or_path_is_404_with_json_error(
    client: AppClient, method: str, path: str
) -> None:
    response = client.request(method, path, content=body(np.zeros((1, 4), np.float32)))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]


def test_wrong_method_is_405_with_json_error(client: AppClient) -> None:
    response = client.get("/v2/models/iris/infer")
    assert response.status_code == 405
    assert "error" in response.json()


def test_infer_answers_with_model_version_and_version_header(
    client: AppClient, models: Models, v1: LoadedModel
) -> None:
    x = models.X[:3]
    response = infer(client, x, headers={"content-type": ""})
    assert response.status_code == 200
    doc = response.json()
    assert doc["model_name"] == "iris"
    assert doc["model_version"] == "1"
    assert response.headers["modelfleet-version"] == "1"
    label = next(o for o in doc["outputs"] if o["name"] == "label")
    assert label["data"] == v1.infer({"X": x})["label"].tolist()


def test_infer_echoes_request_id_and_honours_requested_outputs(
    client: AppClient, models: Models
) -> None:
    x = models.X[:2]
    content = body(x, id="abc", outputs=[{"name": "probabilities"}])
    doc = client.post("/v2/models/iris/infer", content=content).json()
    assert doc["id"] == "abc"
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]


BAD_REQUESTS: dict[str, tuple[bytes, str]] = {
    "wrong shape": (body(np.zeros((2, 5), np.float32)), "expected shape [-1, 4]"),
    "unknown input": (
        orjson.dumps({"inputs": [{"name": "Z", "shape": [1], "datatype": "FP32", "data": [1]}]}),
        "unknown input 'Z'",
    ),
    "wrong datatype": (
        orjson.dumps(
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
        ),
        "expected datatype FP32, got FP64",
    ),
    "unknown output": (body(np.zeros((1, 4), np.float32), outputs=[{"name": "y"}]), "'y'"),
    "not json": (b"\x00\x01", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_tensor_requests_are_400_with_json_error_and_version(
    client: AppClient, case: str
) -> None:
    content, message = BAD_REQUESTS[case]
    response = client.post("/v2/models/iris/infer", content=content)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert response.headers["modelfleet-version"] == "1"


def test_shape_of_66_dimensions_is_400_in_json_and_binary(client: AppClient) -> None:
    # Issue 6, defect 11 (was 500 "internal error: ValueError", which the guard counted).
    tensor = {"name": "X", "shape": [1] * 66, "datatype": "FP32"}
    as_json = orjson.dumps({"inputs": [{**tensor, "data": [1.0]}]})
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 4}}]})
    for content, headers in (
        (as_json, {}),
        (header + b"\x00" * 4, {"Inference-Header-Content-Length": str(len(header))}),
    ):
        response = client.post("/v2/models/iris/infer", content=content, headers=headers)
        assert response.status_code == 400
        assert "66 dimensions" in response.json()["error"]


def test_int64_data_for_the_fp32_input_is_400_not_cast(client: AppClient) -> None:
    # Issue 6, defect 6: INT64/INT32/FP16/UINT8 for FP32 were silently cast.
    for datatype in ("INT64", "INT32", "FP16", "UINT8"):
        content = orjson.dumps(
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": datatype, "data": [1, 2, 3, 4]}]}
        )
        response = client.post("/v2/models/iris/infer", content=content)
        assert response.status_code == 400
        assert f"expected datatype FP32, got {datatype}" in response.json()["error"]


def test_raw_binary_request_is_one_tensor_and_answers_in_binary(
    client: AppClient, models: Models, v1: LoadedModel
) -> None:
    x = models.X[:3]
    response = client.post(
        "/v2/models/iris/infer",
        content=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    doc = orjson.loads(response.content[:length])
    assert doc["model_version"] == "1"
    label = doc["outputs"][0]
    assert label["parameters"]["binary_data_size"] == 3 * 8
    got = np.frombuffer(response.content[length : length + 24], "<i8")
    np.testing.assert_array_equal(got, v1.infer({"X": x})["label"])


def test_infer_works_under_a_root_path_prefix(host: ModelHost, models: Models) -> None:
    with AppClient(build_agent_app(host), root_path="/edge") as client:
        response = infer(client, models.X[:1], path="/edge/v2/models/iris/infer")
        assert response.json()["model_version"] == "1"
        assert client.get("/edge/v2/models/iris/ready").status_code == 200


def test_bad_header_length_is_400(client: AppClient, models: Models) -> None:
    response = infer(client, models.X[:1], headers={"Inference-Header-Content-Length": "x"})
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_body_over_the_limit_is_413(host: ModelHost, models: Models) -> None:
    app = build_agent_app(host, limits=ServingLimits(max_body_bytes=100))
    with AppClient(app) as client:
        response = infer(client, models.X[:10])
        assert response.status_code == 413
        assert "limit of 100 bytes" in response.json()["error"]


def test_streamed_body_over_the_limit_is_413(host: ModelHost, models: Models) -> None:
    app = build_agent_app(host, limits=ServingLimits(max_body_bytes=100))
    content = body(models.X[:10])
    with AppClient(app) as client:

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            yield content[:60]
            yield content[60:]

        response = client.post("/v2/models/iris/infer", content=chunks())
        assert response.status_code == 413


def test_batch_over_the_limit_is_413(host: ModelHost, models: Models) -> None:
    with AppClient(build_agent_app(host, limits=ServingLimits(max_batch=4))) as client:
        assert infer(client, models.X[:4]).status_code == 200
        response = infer(client, models.X[:5])
        assert response.status_code == 413
        assert "batch of 5" in response.json()["error"]


def test_large_batch_runs_off_the_event_loop_with_the_same_answer(
    host: ModelHost, models: Models, v1: LoadedModel
) -> None:
    with AppClient(build_agent_app(host, limits=ServingLimits(inline_max_rows=8))) as client:
        x = models.X[:50]
        doc = infer(client, x).json()
    label = next(o for o in doc["outputs"] if o["name"] == "label")["data"]
    assert label == v1.infer({"X": x})["label"].tolist()


def test_gzip_request_body_is_accepted(client: AppClient, models: Models) -> None:
    content = gzip.compress(body(models.X[:2]))
    response = client.post(
        "/v2/models/iris/infer", content=content, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 200


def test_gzip_bomb_over_the_limit_is_413(host: ModelHost) -> None:
    bomb = gzip.compress(b" " * 10_000)
    with AppClient(build_agent_app(host, limits=ServingLimits(max_body_bytes=1000))) as client:
        response = client.post(
            "/v2/models/iris/infer", content=bomb, headers={"content-encoding": "gzip"}
        )
        assert response.status_code == 413


class ExplodingSession:
    def run(self, names: Any, feed: Any) -> Any:
        raise RuntimeError("device lost")


class SlowSession:
    """Holds its worker thread until released (the test's deadline passes meanwhile)."""

    release = threading.Event()

    def run(self, names: Any, feed: Any) -> Any:
        self.release.wait(timeout=2)  # released at the end of the test
        raise RuntimeError("too late anyway")


def test_runtime_failure_is_500_with_json_error(v1: LoadedModel, models: Models) -> None:
    broken = LoadedModel("iris", "7", "sha256:7", ExplodingSession(), v1.schema)
    host = ModelHost()
    host.set_route("iris", Route(broken))
    with AppClient(build_agent_app(host)) as client:
        response = infer(client, models.X[:1])
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: RuntimeError"}
        assert response.headers["modelfleet-version"] == "7"


def test_explicit_version_in_url_is_served_by_that_version(
    v1: LoadedModel, v2: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SPLIT, 0.0))
    with AppClient(build_agent_app(host)) as client:
        response = infer(client, models.X[:3], path="/v2/models/iris/versions/2/infer")
        assert response.json()["model_version"] == "2"
        labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
        assert labels == v2.infer({"X": models.X[:3]})["label"].tolist()


def test_split_sticks_to_routing_key_and_replayed_version_pins(
    v1: LoadedModel, v2: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SPLIT, 0.5))
    x = models.X[:1]
    with AppClient(build_agent_app(host)) as client:
        served: dict[str, set[str]] = {}
        for i in range(40):
            key = f"user-{i}"
            for _ in range(3):
                r = infer(client, x, headers={"modelfleet-routing-key": key})
                served.setdefault(key, set()).add(r.headers["modelfleet-version"])
        assert all(len(v) == 1 for v in served.values())
        assert {next(iter(v)) for v in served.values()} == {"1", "2"}
        first = infer(client, x)
        version = first.headers["modelfleet-version"]
        for _ in range(20):
            again = infer(client, x, headers={"modelfleet-version": version})
            assert again.json()["model_version"] == version


def test_shadow_answers_with_production_and_counts_disagreement(
    v1: LoadedModel, v2: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SHADOW, 1.0))
    app = build_agent_app(host)
    x = models.X[:20]
    want = v1.infer({"X": x})
    with AppClient(app) as client:
        for i in range(10):
            response = infer(client, x[i : i + 2])
            doc = response.json()
            assert doc["model_version"] == "1"
            label = next(o for o in doc["outputs"] if o["name"] == "label")["data"]
            assert label == want["label"][i : i + 2].tolist()
        client.run(app.state.shadow.join)
        metrics: AgentMetrics = app.state.metrics
        value = metrics.registry.get_sample_value
        compared = value(
            "modelfleet_agent_shadow_compared_total", {"model": "iris", "version": "2"}
        )
        disagreed = value(
            "modelfleet_agent_shadow_disagreements_total", {"model": "iris", "version": "2"}
        )
        assert compared == 10
        assert disagreed == 10  # lr_b was trained on shifted labels


def test_shadow_of_an_identical_model_agrees(v1: LoadedModel, models: Models) -> None:
    twin = load(models.lr_a, "2")
    host = ModelHost()
    host.set_route("iris", Route(v1, twin, Mode.SHADOW, 1.0))
    app = build_agent_app(host)
    with AppClient(app) as client:
        for i in range(5):
            assert infer(client, models.X[i : i + 1]).status_code == 200
        client.run(app.state.shadow.join)
        value = app.state.metrics.registry.get_sample_value
        labels = {"model": "iris", "version": "2"}
        assert value("modelfleet_agent_shadow_compared_total", labels) == 5
        assert value("modelfleet_agent_shadow_disagreements_total", labels) == 0


def test_metrics_count_requests_per_version_in_a_registry_per_app(
    host: ModelHost, models: Models
) -> None:
    other = build_agent_app(host)  # a second app in the same process must not collide
    app = build_agent_app(host, shadow=ShadowSettings(queue_size=4))
    with AppClient(app) as client:
        for _ in range(3):
            assert infer(client, models.X[:1]).status_code == 200
        assert infer(client, np.zeros((1, 5), np.float32)).status_code == 400
        text = client.get("/metrics").text
    assert 'modelfleet_agent_requests_total{model="iris",outcome="success",version="1"} 3.0' in text
    assert (
        'modelfleet_agent_requests_total{model="iris",outcome="client_error",version="1"} 1.0'
        in text
    )
    assert 'modelfleet_agent_request_seconds_count{model="iris",version="1"} 4.0' in text
    assert "modelfleet_agent_shadow_dropped_total 0.0" in text
    assert 'modelfleet_agent_active_version_info{candidate="",mode="full"' in text
    assert other.state.metrics.registry is not app.state.metrics.registry


def test_metrics_snapshot_gives_per_version_counts_for_the_guard(
    v1: LoadedModel, v2: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SHADOW, 1.0))
    app = build_agent_app(host)
    with AppClient(app) as client:
        for _ in range(2):
            assert infer(client, models.X[:1]).status_code == 200
        assert infer(client, np.zeros((1, 5), np.float32)).status_code == 400
        client.run(app.state.shadow.join)
    snap = app.state.metrics.snapshot()
    mine = snap["iris"]["1"]
    assert (mine["success"], mine["client_error"], mine["server_error"]) == (2, 1, 0)
    assert mine["latency_count"] == 3
    assert mine["latency_buckets"][-1] == ["+Inf", 3]
    assert snap["iris"]["2"]["shadow_compared"] == 2
    assert snap["iris"]["2"]["shadow_disagreements"] == 2
    orjson.dumps(snap)  # JSON-able


class Recorder:
    """A request observer that writes down what the fan-out tells it."""

    wants_confidence = True

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.comparisons: list[tuple[str, str, bool]] = []

    def on_request(self, *args: Any) -> None:
        self.requests.append(args)

    def on_comparison(self, model: str, version: str, comparison: Any) -> None:
        self.comparisons.append((model, version, comparison.disagreed))


class Broken:
    def on_request(self, *args: Any) -> None:
        raise RuntimeError("observer bug")

    def on_comparison(self, *args: Any) -> None:
        raise RuntimeError("observer bug")


def test_every_observer_hears_each_request_once_with_outcome_role_and_caller(
    v1: LoadedModel, v2: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SHADOW, 1.0))
    first, second = Recorder(), Recorder()
    app = build_agent_app(host, observers=[first, Broken(), second])
    x = models.X[:4]
    with AppClient(app) as client:
        assert infer(client, x).status_code == 200
        assert infer(client, np.zeros((1, 5), np.float32)).status_code == 400
        client.run(app.state.shadow.join)
    assert first.requests == second.requests  # a broken observer between them changes nothing
    (ok, refused) = first.requests
    model, version, role, outcome, compute, queue, confidence, caller = ok
    assert (model, version, role, outcome, caller) == ("iris", "1", "production", "ok", "127.0.0.1")
    assert 0 < compute < 5 and 0 <= queue < 5
    want = float(v1.infer({"X": x})["probabilities"].max(axis=1).mean())
    assert confidence == pytest.approx(want)
    assert refused[3] == "client_error" and refused[4] is None  # the model never ran
    # the mirror passes a Comparison (issue 6, contract 6); disagreed is its decision
    assert first.comparisons == [("iris", "2", True)]


def test_observer_sees_server_errors_as_server_errors(v1: LoadedModel, models: Models) -> None:
    broken = LoadedModel("iris", "7", "sha256:7", ExplodingSession(), v1.schema)
    host = ModelHost()
    host.set_route("iris", Route(broken))
    recorder = Recorder()
    with AppClient(build_agent_app(host, observers=[recorder])) as client:
        assert infer(client, models.X[:1]).status_code == 500
    [(model, version, role, outcome, *_)] = recorder.requests
    assert (model, version, role, outcome) == ("iris", "7", "production", "server_error")


def test_slow_offloop_inference_is_a_timeout_not_a_client_error(
    v1: LoadedModel, models: Models
) -> None:
    host = ModelHost()
    host.set_route("iris", Route(LoadedModel("iris", "8", "sha256:8", SlowSession(), v1.schema)))
    recorder = Recorder()
    limits = ServingLimits(request_timeout_s=0.01, inline_max_rows=0)
    with AppClient(build_agent_app(host, observers=[recorder], limits=limits)) as client:
        assert infer(client, models.X[:1]).status_code == 503
    SlowSession.release.set()
    assert [r[3] for r in recorder.requests] == ["timeout"]


class Control:
    token = "s3cret"

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def status(self) -> dict[str, Any]:
        return {"state": "idle"}

    def rollback(self, reason: str) -> dict[str, Any]:
        if self.reasons:
            raise ConflictError("already rolled back")
        self.reasons.append(reason)
        return {"rolled_back": True}


def test_control_routes_need_the_bearer_token(host: ModelHost) -> None:
    control = Control()
    with AppClient(build_agent_app(host, control=control)) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            response = client.get("/agent/status", headers=headers)
            assert response.status_code == 401
            assert "error" in response.json()
            assert client.post("/agent/rollback", headers=headers).status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        assert client.get("/agent/status", headers=auth).json() == {"state": "idle"}
        response = client.post("/agent/rollback", headers=auth, json={"reason": "p99 too high"})
        assert response.json() == {"rolled_back": True}
        assert control.reasons == ["p99 too high"]
        again = client.post("/agent/rollback", headers=auth)
        assert again.status_code == 409
        assert again.json() == {"error": "already rolled back"}


def test_without_control_the_control_routes_do_not_exist(client: AppClient) -> None:
    assert client.get("/agent/status").status_code == 404


class FakeTracer:
    """A request tracer that samples as told and writes down what it is given."""

    def __init__(self, sample: bool) -> None:
        self.sample = sample
        self.asked: list[str] = []
        self.records: list[tuple[Any, ...]] = []

    def sampled(self, role: str) -> bool:
        self.asked.append(role)
        return self.sample

    def record(self, *args: Any) -> None:
        self.records.append(args)


def test_a_sampled_request_gives_the_tracer_ordered_stage_times(
    host: ModelHost, models: Models
) -> None:
    tracer = FakeTracer(sample=True)
    with AppClient(build_agent_app(host, tracer=tracer)) as client:
        assert infer(client, models.X[:2]).status_code == 200
        assert infer(client, np.zeros((1, 5), np.float32)).status_code == 400
    assert tracer.asked == ["production", "production"]  # once per request
    (ok, refused) = tracer.records
    model, version, role, *times, outcome = ok
    assert (model, version, role, outcome) == ("iris", "1", "production", "ok")
    assert times == sorted(times) and times[0] < times[-1]
    assert times[-1] - times[0] < 5  # perf_counter seconds, one request's worth
    assert refused[-1] == "client_error"
    assert list(refused[3:7]) == sorted(refused[3:7])  # stages never reached end with it


def test_an_unsampled_request_is_never_recorded(host: ModelHost, models: Models) -> None:
    tracer = FakeTracer(sample=False)
    with AppClient(build_agent_app(host, tracer=tracer)) as client:
        for _ in range(3):
            assert infer(client, models.X[:1]).status_code == 200
    assert tracer.asked == ["production"] * 3
    assert tracer.records == []
