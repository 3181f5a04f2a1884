"""The review queue round trip (issue 9): suspect windows sampled on a real, in-process agent
are forwarded to a real ``modelfleet hub serve``, exported with ``modelfleet review export``,
labelled (here, by the test), imported with ``modelfleet review import-labels``, and
``modelfleet review metrics`` shows the accuracy per version. JSONL and Label Studio both."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet.agent.anomaly import AnomalyScorer, LoadedScorer, load_scorer
from modelfleet.agent.app import build_agent_app
from modelfleet.agent.hub_link import HttpHubLink
from modelfleet.agent.review import ReviewSampler, ReviewSettings
from modelfleet.agent.telemetry import routed_versions
from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.hashing import sha256_bytes
from modelfleet.hub.service import init_home
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry
from tests.cli_run import ServedHub, run_cli, served_hub
from tests.helpers import logistic_onnx
from tests.serving._support import AppClient

pytestmark = pytest.mark.e2e


def forest_onnx(x: np.ndarray) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    fitted = IsolationForest(n_estimators=30, contamination=0.01, random_state=0).fit(x)
    return to_onnx(fitted, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


def cli_json(hub: ServedHub, *args: str) -> Any:
    result = run_cli(*args, "--json", env=hub.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sample_on_an_agent(
    hub: ServedHub, tmp_path: Path, onnx: bytes, x: np.ndarray, scorer: LoadedScorer
) -> None:
    """Serve normal then odd rows on an in-process agent that forwards to ``hub``, scoring
    them with the scorer the version's signed manifest carries."""
    token = cli_json(hub, "device", "add", "edge-1", "--site", "plant")["token"]
    (tmp_path / "m.onnx").write_bytes(onnx)
    model = LoadedModel.load("m", "1", tmp_path / "m.onnx", sha256_bytes(onnx))
    host = ModelHost()
    host.set_route("m", Route(model))
    anomaly = AnomalyScorer()
    anomaly.watch("m", "1", scorer)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sampler = ReviewSampler(
        "edge-1", ReviewSettings(budget_bytes=1 << 20, reservoir=6), clock, anomaly=anomaly
    )
    link = HttpHubLink(hub.url, token, attempts=1)
    telemetry = DeviceTelemetry(
        "edge-1",
        TelemetryBuffer(tmp_path / "t.sqlite3"),
        lambda batch: link.send_telemetry("edge-1", batch),
        clock,
        routed=lambda: list(routed_versions(host)),
        attach=anomaly.close,
        follow=sampler.after_close,
    )
    client = AppClient(build_agent_app(host, observers=[telemetry.recorder], batches=sampler))
    rng = np.random.default_rng(7)
    for scale, windows in ((1.0, 1), (8.0, 2)):  # one stable window, two suspect ones
        for _ in range(windows):
            for i in range(30):
                rows = x[rng.integers(0, len(x), 10)] * scale
                body = {"id": f"req-{scale}-{i}", "inputs": [{"name": "X", "shape": [10, 10],
                        "datatype": "FP32", "data": rows.ravel().tolist()}]}  # fmt: skip
                assert client.post("/v2/models/m/infer", json=body).status_code == 200
            telemetry.close_window()
            clock.advance(60)
    for _ in range(20):
        telemetry.forwarder.step()
    assert telemetry.buffer.stats().records == 0, telemetry.forwarder.state()
    link.close()


@pytest.mark.parametrize("fmt", ["label-studio", "jsonl"])
def test_suspect_samples_go_out_for_labels_and_come_back_as_accuracy_per_version(
    tmp_path: Path, fmt: str
) -> None:
    home = tmp_path / "hub"
    init_home(home, ManualClock(datetime.now(UTC)))
    onnx, x = logistic_onnx()
    with served_hub(home, tmp_path) as hub:
        (tmp_path / "reg.onnx").write_bytes(onnx)
        (tmp_path / "forest.onnx").write_bytes(forest_onnx(x))
        reg = cli_json(hub, "model", "register", "m", str(tmp_path / "reg.onnx"),
                       "--anomaly-scorer", str(tmp_path / "forest.onnx"))  # fmt: skip
        manifest = HubClient(hub.url, hub.token).get_manifest("m", reg["version"])
        scorer = load_scorer(PackageManifest.from_json(manifest).anomaly_scorer)
        assert scorer is not None
        sample_on_an_agent(hub, tmp_path, onnx, x, scorer)

        listed = cli_json(hub, "review", "list", "--model", "m")
        assert len(listed) == 12  # two suspect windows x reservoir 6; the stable one sent none
        assert all(r["site"] == "plant" and "anomaly" in r["reasons"] for r in listed)
        assert all(r["status"] == "pending" and r["prediction"] in {"0", "1", "2"} for r in listed)
        shown = run_cli("review", "list", env=hub.env())
        assert shown.returncode == 0 and "anomaly" in shown.stdout

        out = tmp_path / f"export.{fmt}"
        done = cli_json(hub, "review", "export", "--format", fmt, "--out", str(out))
        assert done["bytes"] == out.stat().st_size > 0
        # the labeller: right on the first 9 samples, wrong on the last 3
        if fmt == "jsonl":
            samples = [json.loads(line) for line in out.read_text().splitlines()]
            assert all(s["inputs"]["X"]["shape"] == [1, 10] for s in samples)
            labels = [
                {"sample_id": s["sample_id"], "label": wrong_or_right(s["prediction"], i)}
                for i, s in enumerate(samples)
            ]
            text = "".join(json.dumps(x) + "\n" for x in labels)
        else:
            tasks = json.loads(out.read_text())
            assert all(t["meta"]["sample_id"] == t["data"]["sample_id"] for t in tasks)
            for i, t in enumerate(tasks):
                label = wrong_or_right(t["predictions"][0]["result"][0]["value"]["choices"][0], i)
                t["id"] = 100 + i  # what Label Studio adds on import and gives back
                t["annotations"] = [
                    {"was_cancelled": True, "result": []},
                    {"was_cancelled": False, "updated_at": "2026-01-02T00:00:00Z",
                     "result": [{"type": "choices", "from_name": "label", "to_name": "sample",
                                 "value": {"choices": [label]}}]},
                ]  # fmt: skip
            text = json.dumps(tasks)
        (tmp_path / "labels").write_text(text)
        imported = cli_json(hub, "review", "import-labels", str(tmp_path / "labels"),
                            "--format", fmt)  # fmt: skip
        assert imported == {"imported": 12, "unknown": 0, "unlabelled": 0}

        metrics = cli_json(hub, "review", "metrics", "m")
        (group,) = metrics["groups"]
        assert group["version"] == "1" and group["n"] == 12
        assert group["accuracy"] == pytest.approx(9 / 12)
        assert 0 < group["precision"] <= 1 and 0 < group["recall"] <= 1
        by_site = cli_json(hub, "review", "metrics", "m", "--by", "site")
        assert by_site["groups"][0]["site"] == "plant"
        table = run_cli("review", "metrics", "m", env=hub.env())
        assert table.returncode == 0 and "75.0 %" in table.stdout
        assert cli_json(hub, "review", "list", "--status", "pending") == []


def wrong_or_right(prediction: str, i: int) -> str:
    return prediction if i < 9 else str((int(prediction) + 1) % 3)


def test_a_bad_label_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init_home(home, ManualClock(datetime.now(UTC)))
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with served_hub(home, tmp_path) as hub:
        result = run_cli("review", "import-labels", str(tmp_path / "bad.json"), "--format",
                         "label-studio", "--json", env=hub.env())  # fmt: skip
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "list of tasks" in json.loads(result.stderr)["error"]
