"""Drift counts on the device: served requests counted into the version's reference profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet.agent.app import build_agent_app
from modelfleet.agent.models import onnx_loader
from modelfleet.agent.profiles import ProfileObserver
from modelfleet.agent.telemetry import routed_versions
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.monitoring.profile import ReferenceProfile
from modelfleet.monitoring.profile_counts import ProfileCounter, ProfileWindow, merge_wire
from modelfleet.packaging.reference import (
    PackageProfile,
    ReferenceTable,
    TensorColumns,
    build_package_profile,
)
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry
from tests.agent.fakes import MemorySource
from tests.fakes_model import linear_classifier
from tests.helpers import logistic_onnx
from tests.serving._support import AppClient
from tests.telemetry.fake_ingest import IngestStore

W = np.array([[1.0, -1.0], [0.5, 0.2], [-0.3, 0.8]])


def outputs_of(x: np.ndarray) -> dict[str, np.ndarray]:
    logits = x.astype(np.float64) @ W
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return {"label": p.argmax(axis=1).astype(np.int64), "probabilities": p}


def package_profile(sketch_k: int | None = None) -> PackageProfile:
    x = np.random.default_rng(1).normal(size=(2000, 3)).astype(np.float32)
    out = outputs_of(x)
    profile = ReferenceProfile.build(
        x,
        outputs={
            "label": out["label"],
            "probabilities[0]": out["probabilities"][:, 0],
            "probabilities[1]": out["probabilities"][:, 1],
        },
        categorical_outputs=["label"],
        sketch_k=sketch_k,
    )
    return PackageProfile(
        profile,
        (TensorColumns("X", 3),),
        (TensorColumns("label", 1), TensorColumns("probabilities", 2)),
    )


def direct(pp: PackageProfile, batches: list[np.ndarray]) -> ProfileWindow:
    """What counting the same inputs (and the model's outputs) directly gives."""
    counter = ProfileCounter(pp.profile, sketches=False)
    for x in batches:
        out = outputs_of(x)
        counter.count(pp.batch({"X": x}), pp.batch(out, "outputs"))
    return counter.snapshot()


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": "label"}],  # only the label asked: the profile still gets all
    }


class Agent:
    """An agent's serving app and telemetry, windows closed by hand, stored by a fake hub."""

    def __init__(self, tmp_path: Path, observer: ProfileObserver, versions: tuple[str, ...]):
        self.host = ModelHost()
        self.host.set_route("m", Route(linear_classifier("m", versions[0], W)))
        self.hub = IngestStore()
        self.telemetry = DeviceTelemetry(
            "edge-1",
            TelemetryBuffer(tmp_path / "t.sqlite3"),
            self.hub.send_for("edge-1"),
            ManualClock(),
            routed=lambda: list(routed_versions(self.host)),
            attach=observer.close,
        )
        app = build_agent_app(self.host, observers=[self.telemetry.recorder], batches=observer)
        self.client = AppClient(app)

    def windows(self) -> list[dict[str, Any]]:
        while self.telemetry.buffer.stats().records:
            self.telemetry.forwarder.step()
        return [r for r in self.hub.records() if r["kind"] == "window"]


def test_served_windows_carry_the_counts_of_counting_the_same_inputs_directly(
    tmp_path: Path,
) -> None:
    pp = package_profile()
    observer = ProfileObserver(block_rows=64)
    observer.watch("m", "1", pp)
    agent = Agent(tmp_path, observer, ("1",))
    rng = np.random.default_rng(5)
    sent: list[list[np.ndarray]] = [[], []]
    with agent.client as client:
        for w in range(2):
            for rows in (1, 3, 70, 1, 200, 2) * 3:  # across block boundaries
                x = (rng.normal(size=(rows, 3)) + w).astype(np.float32)
                r = client.post("/v2/models/m/infer", json=infer_body(x))
                assert r.status_code == 200, r.text
                assert [o["name"] for o in r.json()["outputs"]] == ["label"]
                sent[w].append(x)
            agent.telemetry.close_window()
    windows = agent.windows()
    assert len(windows) == 2
    for record, batches in zip(windows, sent, strict=True):
        wire = record["profile"]
        assert wire["profile"] == pp.digest and "sketched" not in wire  # sketch_k None
        got = ProfileWindow.from_wire(wire, pp.profile)
        want = direct(pp, batches)
        assert got.rows == sum(len(x) for x in batches) == want.rows
        for g in ("inputs", "outputs"):
            np.testing.assert_array_equal(got.counts[g], want.counts[g])


def test_a_version_without_a_profile_gets_no_field_and_an_idle_watched_one_an_empty_one(
    tmp_path: Path,
) -> None:
    observer = ProfileObserver()
    agent = Agent(tmp_path, observer, ("1",))
    with agent.client as client:
        x = np.ones((2, 3), np.float32)
        assert client.post("/v2/models/m/infer", json=infer_body(x)).status_code == 200
        agent.telemetry.close_window()
        observer.watch("m", "1", package_profile())
        agent.telemetry.close_window()  # watched, served nothing
    first, second = agent.windows()
    assert first["requests"]["ok"] == 1 and "profile" not in first
    assert second["profile"]["inputs"] == {"index": [], "count": []}


def test_sketches_follow_the_agent_option_and_unsketched_windows_still_merge(
    tmp_path: Path,
) -> None:
    pp = package_profile(sketch_k=200)
    wires = {}
    for sketches in (True, False):
        observer = ProfileObserver(sketches=sketches, block_rows=16)
        observer.watch("m", "1", pp)
        x = np.random.default_rng(2).normal(size=(300, 3)).astype(np.float32)
        for i in range(0, 300, 10):
            observer.on_batch(
                "m", "1", "production", {"X": x[i : i + 10]}, outputs_of(x[i : i + 10])
            )
        wires[sketches] = observer.close([])[("m", "1", "production")]["profile"]
    on, off = wires[True], wires[False]
    assert set(on["sketches"]["inputs"]) == {"x0", "x1", "x2"} and "sketched" not in on
    assert off["sketched"] is False and off["sketches"] == {"inputs": {}, "outputs": {}}
    assert on["inputs"] == off["inputs"] and on["outputs"] == off["outputs"]
    merged = merge_wire([on, off], pp.profile)
    assert merged.rows == 600 and not merged.sketched
    assert all(s is None for s in merged.sketches["inputs"])
    with pytest.raises(Exception, match="has sketches"):
        merge_wire([{**on, "sketched": False}], pp.profile)


def test_the_signed_manifest_profile_is_watched_when_the_device_loads_the_version(
    tmp_path: Path,
) -> None:
    onnx, x = logistic_onnx()
    pp = build_package_profile(onnx, ReferenceTable({"": x}), sketches=False)
    source = MemorySource()
    source.assign("dev-1", source.publish("m", 1, onnx, profile=pp.to_dict()))
    source.publish("m", 2, logistic_onnx(seed=1)[0])  # registered without a reference
    observer = ProfileObserver()
    host = ModelHost()
    updater = Updater(
        "dev-1", tmp_path, source, host, ManualClock(), loader=onnx_loader(None, observer.watch)
    )
    updater.run_cycle()
    assert observer.watched == [("m", "1", pp.digest)]
    source.assign("dev-1", source.publish("m", 3, logistic_onnx(seed=2)[0]))
    updater.run_cycle()
    assert observer.watches("m", "1") and not observer.watches("m", "3")


def test_a_block_that_does_not_fit_is_dropped_counted_and_counting_goes_on() -> None:
    # cannot happen for requests the model answered (their shapes are the schema's, which
    # the profile was checked against at load): the observer still never raises
    pp = package_profile()
    observer = ProfileObserver(block_rows=8)
    observer.watch("m", "1", pp)
    good = np.zeros((3, 3), np.float32)
    observer.on_batch("m", "1", "production", {"X": good}, outputs_of(good))
    bad = np.zeros((2, 5), np.float32)
    observer.on_batch("m", "1", "production", {"X": bad}, outputs_of(good[:2]))
    observer.on_batch("m", "1", "production", {"X": good}, outputs_of(good))  # block of 8
    observer.on_batch("m", "1", "production", {"X": np.zeros((1, 3))}, {})  # no outputs
    observer.on_batch("m", "1", "production", {"X": good}, outputs_of(good))
    wire = observer.close([])[("m", "1", "production")]["profile"]
    assert ProfileWindow.from_wire(wire, pp.profile).rows == 3
    assert observer.dropped_rows == 8 + 1  # the bad block, then the request without outputs


# -- exactness (ADR 0042): every row counted once, in its own window -----------------------


def feed(observer: ProfileObserver, version: str, batches: list[np.ndarray]) -> None:
    for x in batches:
        observer.on_batch("m", version, "production", {"X": x}, outputs_of(x))


def assert_counts_equal(wire: dict[str, Any], pp: PackageProfile, batches: list[np.ndarray]):
    got = ProfileWindow.from_wire(wire, pp.profile)
    want = direct(pp, batches)
    assert got.rows == sum(len(x) for x in batches) == want.rows
    for g in ("inputs", "outputs"):
        np.testing.assert_array_equal(got.counts[g], want.counts[g])


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([1] * 40, id="one-row requests, closed while a block is half counted"),
        pytest.param([1, 3, 70, 1, 2, 1, 1], id="a batch larger than a block, then a few rows"),
        pytest.param([5] * 7, id="blocks sealed while the previous one is still counted"),
    ],
)
def test_no_row_is_lost_or_counted_twice_across_a_window_close_mid_count(
    sizes: list[int],
) -> None:
    pp = package_profile()
    observer = ProfileObserver(block_rows=16)
    observer.watch("m", "1", pp)
    rng = np.random.default_rng(7)
    windows = []
    for w in range(2):
        batches = [(rng.normal(size=(n, 3)) + w).astype(np.float32) for n in sizes]
        feed(observer, "1", batches)
        series = observer._series[("m", "1", "production")]
        if w == 0 and sizes[0] == 1:  # the close below lands mid-block
            assert series.fill > 0
        windows.append((observer.close([])[("m", "1", "production")]["profile"], batches))
    for wire, batches in windows:
        assert_counts_equal(wire, pp, batches)
    assert observer.dropped_rows == 0
    assert observer.close([]) == {}  # nothing left over for a third window


def test_a_version_change_mid_count_keeps_each_versions_rows_in_its_own_window() -> None:
    pp = package_profile()
    observer = ProfileObserver(block_rows=8)
    observer.watch("m", "1", pp)
    observer.watch("m", "2", pp)
    rng = np.random.default_rng(8)
    old = [rng.normal(size=(1, 3)).astype(np.float32) for _ in range(12)]
    new = [(rng.normal(size=(1, 3)) + 2).astype(np.float32) for _ in range(11)]
    feed(observer, "1", old)  # version 1's first block is counted, its second half full
    old_series = observer._series[("m", "1", "production")]
    assert old_series.fill == 4
    feed(observer, "2", new)  # version 2's requests never touch version 1's rows
    out = observer.close([])
    assert_counts_equal(out[("m", "1", "production")]["profile"], pp, old)
    assert_counts_equal(out[("m", "2", "production")]["profile"], pp, new)


def test_rows_served_before_a_shutdown_are_in_the_last_window(tmp_path: Path) -> None:
    pp = package_profile()
    observer = ProfileObserver(block_rows=16)
    observer.watch("m", "1", pp)
    agent = Agent(tmp_path, observer, ("1",))
    rng = np.random.default_rng(9)
    sent = [rng.normal(size=(1, 3)).astype(np.float32) for _ in range(21)]
    with agent.client as client:
        for x in sent:
            assert client.post("/v2/models/m/infer", json=infer_body(x)).status_code == 200
    series = observer._series[("m", "1", "production")]
    assert series.fill == 5
    agent.telemetry.stop(flush=True)  # the agent's shutdown: the partial window is appended
    buffer = TelemetryBuffer(tmp_path / "t.sqlite3")
    records = [r.record() for r in buffer.pending(100, 1 << 20)]
    buffer.close()
    (window,) = [r for r in records if r["kind"] == "window"]
    assert_counts_equal(window["profile"], pp, sent)


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda agent: agent.telemetry.close_window(), id="the window rolls over"),
        pytest.param(lambda agent: agent.telemetry.stop(flush=True), id="the agent shuts down"),
    ],
)
def test_rows_that_do_not_fit_a_half_full_block_at_a_window_close_are_counted_dropped(
    tmp_path: Path, end: Callable[[Agent], object]
) -> None:
    pp = package_profile()
    observer = ProfileObserver(block_rows=8)
    observer.watch("m", "1", pp)
    observer.watch("m", "2", pp)  # a version change: both versions' blocks pending at close
    agent = Agent(tmp_path, observer, ("1",))
    good, bad = np.zeros((3, 3), np.float32), np.zeros((2, 5), np.float32)
    observer.on_batch("m", "1", "production", {"X": good}, outputs_of(good))
    observer.on_batch("m", "1", "production", {"X": bad}, outputs_of(good[:2]))  # 5 of 8
    feed(observer, "2", [good])
    observer.on_batch("m", "2", "production", {"X": bad}, outputs_of(good[:2]))
    feed(observer, "2", [good, good[:2]])  # version 2's block fills (dropped), 2 rows pend
    assert observer.dropped_rows == 8
    end(agent)
    assert observer.dropped_rows == 8 + 5  # version 1's half-full block, which did not fit
    assert observer.close([]) == {} and observer.dropped_rows == 8 + 5  # counted once


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(
            [np.zeros((1, 3), np.float32), np.ones((2, 3), np.float64)], id="mixed dtypes"
        ),
        pytest.param(
            [np.zeros((1, 3), np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)[:, :3]],
            id="a non-contiguous view",
        ),
        pytest.param([np.arange(6, dtype=np.int64).reshape(2, 3)] * 70, id="alike parts"),
        pytest.param(
            [np.zeros((1, 3), np.float32)] * 40 + [np.ones((1, 3), np.float64)] * 3,
            id="another dtype after forty requests",
        ),
        pytest.param([np.array([["a", "bb", "c"]]), np.array([["dddd", "e", "f"]])], id="strings"),
        pytest.param([np.array([[True, False, True]])] * 3, id="booleans"),
    ],
)
def test_a_block_holds_what_concatenating_the_requests_tensors_gives(
    parts: list[np.ndarray],
) -> None:
    from modelfleet.agent.profiles import _NO_BLOCK, _Slot

    slot = _Slot("X", 3, _NO_BLOCK)
    for a in parts:
        if a.dtype is slot.dtype:  # the request path's test, then its fallback
            slot.parts.append(a.tobytes())
        else:
            slot.odd(a)
    want = np.concatenate(parts)
    joined = slot.take(len(want))
    assert joined.dtype == want.dtype and slot.parts == []
    np.testing.assert_array_equal(joined, want)
    with pytest.raises(ValueError, match="values for"):
        slot.odd(parts[0])
        slot.take(5)
