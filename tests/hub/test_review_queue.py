"""The hub's review queue (issue 9): review_sample records stored once, the queue bounded per
model with one ``review.queue_full`` event when it fills, malformed samples refused with the
batch, labels in both formats, and the metrics' arithmetic."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hub import db, events
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.review import ReviewQuery
from modelfleet.hub.review_formats import classification_metrics, parse_labels
from modelfleet.hub.service import HubService
from tests.hub._telemetry import batch

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def sample(seq: int, sid: str, model: str = "m", **extra: Any) -> dict[str, Any]:
    tensor = {"datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}
    return {"kind": "review_sample", "seq": seq, "device_id": "dev-1", "sample_id": sid,
            "model": model, "version": "1", "role": "production", "at": NOW.isoformat(),
            "reasons": ["anomaly"], "anomaly_score": 0.2, "request_id": f"r{seq}", "row": 0,
            "inputs": {"X": tensor}, "outputs": {"label": {"datatype": "INT64", "shape": [1],
            "data": [1]}}, **extra}  # fmt: skip


@pytest.fixture
def svc(hub_home: tuple[Path, str], clock: ManualClock) -> Iterator[HubService]:
    config = dataclasses.replace(load_hub_config(hub_home[0]), review_queue_limit=3)
    s = HubService(config, clock)
    s.add_device("dev-1", "site-a", [], actor="admin:admin")
    yield s
    s.close()


def ingest(svc: HubService, records: list[dict[str, Any]], buffer_id: str = "b1") -> Any:
    return svc.ingest_telemetry("dev-1", orjson.dumps(batch("dev-1", records, NOW,
                                                            buffer_id=buffer_id)))  # fmt: skip


def queue_full_events(svc: HubService) -> list[dict[str, Any]]:
    with svc.context.read() as s:
        return [e for e in events.events_after(s, 0) if e["kind"] == events.REVIEW_QUEUE_FULL]


def test_samples_are_stored_once_and_a_full_queue_says_so_once(svc: HubService) -> None:
    assert ingest(svc, [sample(1, "a"), sample(2, "b")])["stored"] == 2
    assert ingest(svc, [sample(1, "a"), sample(2, "b")])["duplicates"] == 2  # a replay
    assert ingest(svc, [sample(1, "a")], buffer_id="b2")["stored"] == 1  # same sample id
    assert [r["sample_id"] for r in svc.review.list(ReviewQuery())] == ["a", "b"]
    assert queue_full_events(svc) == []
    ingest(svc, [sample(3, "c"), sample(4, "d"), sample(5, "e", model="other")])
    listed = svc.review.list(ReviewQuery(model="m"))
    assert [r["sample_id"] for r in listed] == ["a", "b", "c"]  # d is past the limit of 3
    (full,) = queue_full_events(svc)
    assert full["subject"] == "m" and full["payload"] == {"model": "m", "pending": 3, "limit": 3}
    ingest(svc, [sample(6, "f")])
    assert len(queue_full_events(svc)) == 1  # still full: no second event
    svc.review.import_labels(b'{"sample_id": "a", "label": "1"}\n', "jsonl")
    ingest(svc, [sample(7, "g")])  # room for one: full again
    assert len(queue_full_events(svc)) == 2
    raw = svc.device_windows("dev-1", 50)
    assert all("inputs" not in r for r in raw)  # the tensors are kept once, in the queue


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reasons": ["boredom"]}, "reasons"),
        ({"reasons": []}, "reasons"),
        ({"sample_id": ""}, "sample_id"),
        ({"anomaly_score": "high"}, "anomaly_score"),
        ({"inputs": {"X": [1, 2]}}, "inputs"),
        ({"role": "shadow"}, "role"),
        ({"at": "yesterday"}, "at"),
    ],
)
def test_a_malformed_sample_refuses_the_batch(
    svc: HubService, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ingest(svc, [sample(1, "a", **change)])
    assert svc.review.list(ReviewQuery()) == []


def test_label_studio_export_json_gives_the_newest_live_annotation() -> None:
    tasks = [
        {"id": 1, "data": {"sample_id": "a"}, "annotations": [
            {"was_cancelled": False, "updated_at": "2026-01-01", "result": [
                {"type": "choices", "value": {"choices": ["cat"]}}]},
            {"was_cancelled": False, "updated_at": "2026-01-02", "result": [
                {"type": "choices", "value": {"choices": ["dog"]}}]},
            {"was_cancelled": True, "updated_at": "2026-01-03", "result": [
                {"type": "choices", "value": {"choices": ["cow"]}}]}]},
        {"id": 2, "meta": {"sample_id": "b"}, "annotations": [
            {"result": [{"type": "textarea", "value": {"text": ["7"]}}]}]},
        {"id": 3, "data": {"sample_id": "c"}, "annotations": []},
    ]  # fmt: skip
    assert parse_labels(orjson.dumps(tasks), "label-studio") == ([("a", "dog"), ("b", "7")], 1)
    with pytest.raises(InvalidInputError, match="sample_id"):
        parse_labels(orjson.dumps([{"data": {}}]), "label-studio")
    with pytest.raises(InvalidInputError, match="line 2"):
        parse_labels(b'{"sample_id": "a", "label": "x"}\nnot json\n', "jsonl")


def test_metrics_are_accuracy_and_macro_precision_and_recall() -> None:
    pairs = [("a", "a"), ("a", "a"), ("b", "a"), ("b", "b"), ("c", "b")]
    got = classification_metrics(pairs)
    # sklearn: precision_score(y, p, average="macro", zero_division=0) over {a, b, c}
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["precision"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert got["recall"] == pytest.approx((2 / 3 + 1 / 2 + 0.0) / 3)
    assert classification_metrics([])["accuracy"] is None


def test_retention_deletes_old_samples_with_their_labels(
    svc: HubService, clock: ManualClock
) -> None:
    ingest(svc, [sample(1, "a"), sample(2, "b")])
    svc.review.import_labels(b'{"sample_id": "a", "label": "1"}\n', "jsonl")
    clock.advance((svc.context.config.review_days - 1) * 86400)
    assert svc.apply_retention()["review_samples_deleted"] == 0
    ingest(svc, [sample(3, "c")], buffer_id="b2")  # received later: kept one round more
    clock.advance(2 * 86400)
    assert svc.apply_retention()["review_samples_deleted"] == 2
    assert [r["sample_id"] for r in svc.review.list(ReviewQuery(status=None))] == ["c"]
    with svc.context.read() as s:
        assert s.execute(select(func.count()).select_from(db.ReviewLabel)).scalar() == 0
