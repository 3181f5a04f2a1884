"""The check-in fast path (issue 8): every poll is one check-in; the TUF refresh is skipped
while the hub's versions match what the device holds, and done when they change."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from modelfleet.agent.update_loop import UpdateLoop
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ManualClock
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx


class VersionedSource(MemorySource):
    """A :class:`MemorySource` with TUF-like versions: each assignment moves the device's
    director timestamp, each publish the catalog's; the device holds what it fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = {"catalog": 1, "director": 1}
        self.held: dict[str, int] = {}
        self.director_fetches = 0
        self.catalog_refreshes = 0

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.hub["catalog"] += 1
        return super().publish(*args, **kwargs)

    def assign(self, *args: Any, **kwargs: Any) -> int:
        self.hub["director"] += 1
        return super().assign(*args, **kwargs)

    def answer(self) -> dict[str, Any]:
        return {repo: {"root": 1, "timestamp": v} for repo, v in self.hub.items()}

    def fetch_desired_state(self, device_id: str) -> bytes | None:
        self.director_fetches += 1
        self.held["director"] = self.hub["director"]
        return super().fetch_desired_state(device_id)

    def refresh_catalog(self) -> None:
        self.catalog_refreshes += 1
        self.held["catalog"] = self.hub["catalog"]

    def stale(self, device_id: str, answer: object, now: datetime) -> frozenset[str]:
        assert isinstance(answer, dict)
        return frozenset(
            r for r in ("catalog", "director") if self.held.get(r) != answer[r]["timestamp"]
        )


def _loop(tmp_path: Path, source: VersionedSource, tuf: bool = True) -> tuple[UpdateLoop, list]:
    sent: list[dict[str, Any]] = []

    def reporter(report: dict[str, Any]) -> dict[str, Any]:
        sent.append(report)
        answer: dict[str, Any] = {"status": "recorded", "applied_rollbacks": []}
        return {**answer, "tuf": source.answer()} if tuf else answer

    updater = Updater("dev-1", tmp_path, source, ModelHost(), ManualClock())
    loop = UpdateLoop(
        updater, interval=10.0, reporter=reporter, backoff=BackoffPolicy(10.0, 80.0),
        rand=lambda: 0.5,
    )  # fmt: skip
    return loop, sent


def test_refresh_is_skipped_while_unchanged_and_done_when_the_director_changes(
    tmp_path: Path,
) -> None:
    source = VersionedSource()
    v1 = source.publish("m", 1, logistic_onnx(seed=0)[0])
    source.assign("dev-1", v1)
    loop, sent = _loop(tmp_path, source)
    loop.tick()
    assert loop.wait_idle(30)
    assert source.director_fetches == 1
    for _ in range(5):
        loop.tick()
    assert source.director_fetches == 1  # five polls, no TUF refresh
    assert len(sent) == 6  # every poll is one check-in
    source.assign("dev-1", v1, source.publish("m", 2, logistic_onnx(seed=1)[0]))
    loop.tick()
    assert loop.wait_idle(30)
    assert source.director_fetches == 2
    assert loop.updater.state.applied_serial == 2


def test_a_catalog_change_alone_refreshes_the_catalog_not_the_director(tmp_path: Path) -> None:
    source = VersionedSource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx(seed=0)[0]))
    loop, _ = _loop(tmp_path, source)
    loop.tick()
    assert loop.wait_idle(30)
    source.refresh_catalog()  # what the install's catalog refresh left held
    source.publish("other", 1, logistic_onnx(seed=2)[0])
    loop.tick()
    assert (source.director_fetches, source.catalog_refreshes) == (1, 2)
    loop.tick()
    assert (source.director_fetches, source.catalog_refreshes) == (1, 2)


def test_an_older_hub_without_versions_gets_a_refresh_every_poll(tmp_path: Path) -> None:
    source = VersionedSource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx(seed=0)[0]))
    loop, sent = _loop(tmp_path, source, tuf=False)
    for _ in range(3):
        loop.tick()
        assert loop.wait_idle(30)
    assert source.director_fetches == 3
    assert len(sent) <= 3  # back to check-ins on change only


def test_a_failed_check_in_falls_back_to_the_full_refresh(tmp_path: Path) -> None:
    source = VersionedSource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx(seed=0)[0]))
    updater = Updater("dev-1", tmp_path, source, ModelHost(), ManualClock())

    def reporter(report: dict[str, Any]) -> dict[str, Any]:
        raise OSError("hub down")

    loop = UpdateLoop(updater, interval=10.0, reporter=reporter, rand=lambda: 0.5)
    loop.tick()
    assert loop.wait_idle(30)
    loop.tick()
    assert source.director_fetches == 2
