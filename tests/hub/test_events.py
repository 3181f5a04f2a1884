"""The events outbox: an event exists exactly when its transaction commits, ids grow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelfleet.hub import events
from modelfleet.hub.db import make_engine, make_sessionmaker, migrate

AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(url))


def test_events_are_read_back_in_order_after_an_id(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    with sessions.begin() as s:
        first = events.record_event(
            s, events.DRIFT_STATE_CHANGED, "m/plant-a", {"to": "drifting"}, AT
        )
        second = events.record_event(s, events.REVIEW_QUEUE_FULL, "m", {"pending": 500}, AT)
    assert second > first
    with sessions() as s:
        got = events.events_after(s, 0)
        assert [e["id"] for e in got] == [first, second]
        assert got[0]["payload"] == {"to": "drifting"} and got[0]["kind"] == "drift.state_changed"
        assert [e["id"] for e in events.events_after(s, first)] == [second]
        assert events.events_after(s, second) == []


def test_an_event_of_a_rolled_back_transaction_never_exists(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    with pytest.raises(RuntimeError), sessions.begin() as s:
        events.record_event(s, events.DRIFT_STATE_CHANGED, "m/plant-a", {}, AT)
        raise RuntimeError("the change failed")
    with sessions() as s:
        assert events.events_after(s, 0) == []


@pytest.mark.parametrize(
    ("kind", "subject"),
    [("nope", "m"), (events.REVIEW_QUEUE_FULL, ""), (events.REVIEW_QUEUE_FULL, "x" * 513)],
)
def test_a_bad_kind_or_subject_is_refused(tmp_path: Path, kind: str, subject: str) -> None:
    sessions = _sessions(tmp_path)
    with pytest.raises(ValueError), sessions.begin() as s:
        events.record_event(s, kind, subject, {}, AT)
