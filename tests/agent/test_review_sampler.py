"""The review sampler on the device (issue 9): suspect windows' rows leave as
``review_sample`` records through the telemetry buffer, within a per-day byte budget;
stable windows send nothing; nothing is sampled unless configured."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet.agent.anomaly import AnomalyScorer, LoadedScorer
from modelfleet.agent.app import build_agent_app
from modelfleet.agent.observers import BatchFanout
from modelfleet.agent.profiles import ProfileObserver
from modelfleet.agent.review import ReviewSampler, ReviewSettings, suspect_reasons
from modelfleet.agent.telemetry import routed_versions
from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError
from modelfleet.packaging.anomaly import AnomalyScorerSpec, build_scorer_spec
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry
from modelfleet.telemetry.wire import decode_histogram
from tests.agent.test_profiles import W, package_profile
from tests.fakes_model import linear_classifier
from tests.serving._support import AppClient
from tests.telemetry.fake_ingest import IngestStore


def isolation_forest_spec() -> AnomalyScorerSpec:
    """An IsolationForest fitted on N(0, 1) rows of 3 features, exported with skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    from modelfleet.catalog.schema import ModelSchema, TensorSpec

    x = np.random.default_rng(0).normal(size=(2000, 3)).astype(np.float32)
    forest = IsolationForest(n_estimators=30, contamination=0.01, random_state=0).fit(x)
    onnx = to_onnx(forest, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    schema = ModelSchema(inputs=(TensorSpec("X", "FP32", (-1, 3)),), outputs=())
    return build_scorer_spec(onnx, schema)


def body(x: np.ndarray, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
    }


class Agent:
    """Serving app + telemetry + profile counts + anomaly scorer + sampler, in process."""

    def __init__(self, tmp_path: Path, settings: ReviewSettings, spec: AnomalyScorerSpec | None):
        self.clock = ManualClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
        self.host = ModelHost()
        self.host.set_route("m", Route(linear_classifier("m", "1", W)))
        self.profiles = ProfileObserver(block_rows=64)
        self.profiles.watch("m", "1", package_profile())
        self.anomaly = AnomalyScorer()
        if spec is not None:
            self.anomaly.watch("m", "1", LoadedScorer(spec))
        ids = iter(range(1, 10_000))
        self.sampler = ReviewSampler(
            "edge-1",
            settings,
            self.clock,
            anomaly=self.anomaly,
            profile_of=self.profiles.profile,
            budget_file=tmp_path / "budget.json",
            rng=np.random.default_rng(1).random,
            sample_id=lambda: f"s{next(ids)}",
        )
        self.hub = IngestStore()
        self.seen = 0

        def attach(keys: list[tuple[str, str, str]]) -> dict[Any, dict[str, Any]]:
            out: dict[Any, dict[str, Any]] = {}
            for part in (self.profiles.close(keys), self.anomaly.close(keys)):
                for k, v in part.items():
                    out.setdefault(k, {}).update(v)
            return out

        self.telemetry = DeviceTelemetry(
            "edge-1",
            TelemetryBuffer(tmp_path / "t.sqlite3"),
            self.hub.send_for("edge-1"),
            self.clock,
            routed=lambda: list(routed_versions(self.host)),
            attach=attach,
            follow=self.sampler.after_close,
        )
        app = build_agent_app(
            self.host,
            observers=[self.telemetry.recorder, self.sampler],
            batches=BatchFanout([self.profiles, self.sampler]),
        )
        self.client = AppClient(app)

    def serve(self, x: np.ndarray, per_request: int = 10) -> None:
        for i in range(0, len(x), per_request):
            r = self.client.post("/v2/models/m/infer", json=body(x[i : i + per_request], f"r{i}"))
            assert r.status_code == 200, r.text

    def close(self) -> list[dict[str, Any]]:
        self.telemetry.close_window()
        self.clock.advance(60)
        while self.telemetry.buffer.stats().records:
            self.telemetry.forwarder.step()
        records = self.hub.records()
        new, self.seen = records[self.seen :], len(records)
        return new


@pytest.fixture(scope="module")
def spec() -> AnomalyScorerSpec:
    return isolation_forest_spec()


def test_an_anomalous_window_sends_its_samples_through_the_buffer(
    tmp_path: Path, spec: AnomalyScorerSpec
) -> None:
    agent = Agent(tmp_path, ReviewSettings(budget_bytes=1 << 20, reservoir=5), spec)
    rng = np.random.default_rng(2)
    agent.serve(rng.normal(size=(300, 3)).astype(np.float32))
    stable = agent.close()
    assert [r for r in stable if r["kind"] == "review_sample"] == []
    window = next(r for r in stable if r["kind"] == "window")
    anomaly = decode_histogram(window["anomaly"], "anomaly.v1")
    assert anomaly.count == 300  # every row scored, into the fixed edges

    odd = rng.normal(size=(300, 3)).astype(np.float32) * 6  # far from the forest's data
    agent.serve(odd)
    records = agent.close()
    samples = [r for r in records if r["kind"] == "review_sample"]
    assert len(samples) == 5
    s = samples[0]
    assert s["model"] == "m" and s["version"] == "1" and s["role"] == "production"
    assert "anomaly" in s["reasons"] and "drift" in s["reasons"]  # 6 sigma also drifts
    assert s["request_id"].startswith("r") and s["anomaly_score"] is not None
    assert s["inputs"]["X"]["shape"] == [1, 3] and s["inputs"]["X"]["datatype"] == "FP32"
    assert set(s["outputs"]) == {"label", "probabilities"}
    row = np.array(s["inputs"]["X"]["data"], dtype=np.float32).reshape(1, 3)
    assert any(np.allclose(row, odd[i]) for i in range(len(odd)))
    assert sum(r["anomaly_score"] > 0 for r in samples) >= 4  # anomalous rows weigh 10x


def test_the_day_budget_bounds_the_bytes_and_resets_the_next_day(
    tmp_path: Path, spec: AnomalyScorerSpec
) -> None:
    agent = Agent(tmp_path, ReviewSettings(budget_bytes=2000, reservoir=20), spec)
    odd = (np.random.default_rng(3).normal(size=(400, 3)) * 6).astype(np.float32)
    agent.serve(odd)
    first = [r for r in agent.close() if r["kind"] == "review_sample"]
    spent = sum(len(orjson.dumps({k: v for k, v in r.items() if k != "seq"})) + 16 for r in first)
    assert 0 < len(first) < 20 and spent <= 2000
    assert agent.sampler.over_budget_total > 0
    agent.serve(odd)
    assert [r for r in agent.close() if r["kind"] == "review_sample"] == []  # same day
    assert orjson.loads((tmp_path / "budget.json").read_bytes())["day"] == "2026-03-01"
    agent.clock.advance(86400)
    agent.serve(odd)
    assert [r for r in agent.close() if r["kind"] == "review_sample"]  # a new day


def test_drift_alone_makes_a_window_suspect_without_a_scorer(tmp_path: Path) -> None:
    agent = Agent(tmp_path, ReviewSettings(budget_bytes=1 << 20, reservoir=3), None)
    agent.serve((np.random.default_rng(4).normal(size=(400, 3)) + 2).astype(np.float32))
    samples = [r for r in agent.close() if r["kind"] == "review_sample"]
    assert len(samples) == 3 and all(s["reasons"] == ["drift"] for s in samples)
    assert all(s["anomaly_score"] is None for s in samples)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"scored": 100, "anomalous": 5}, ["anomaly"]),
        ({"scored": 100, "anomalous": 4}, []),
        ({"scored": 10, "anomalous": 10}, []),  # too few rows scored
        ({"compared": 20, "disagreed": 2}, ["disagreement"]),
        ({"compared": 19, "disagreed": 19}, []),  # too few comparisons
        ({"drift": True}, ["drift"]),
    ],
)
def test_suspect_reasons(counts: dict[str, Any], expected: list[str]) -> None:
    args = {"scored": 0, "anomalous": 0, "compared": 0, "disagreed": 0, "drift": False, **counts}
    assert suspect_reasons(ReviewSettings(budget_bytes=1), **args) == expected


def test_a_sampler_with_no_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="off"):
        ReviewSampler("edge-1", ReviewSettings(), ManualClock())
    with pytest.raises(ConfigError):
        ReviewSettings(budget_bytes=-1)
