"""The forwarder: oldest first, deletes only what the hub acknowledged, backs off, resumes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError, UnauthenticatedError
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.forwarder import Forwarder
from tests.telemetry._records import window
from tests.telemetry.fake_ingest import IngestStore


def forwarder(buf: TelemetryBuffer, send: Any, **kw: Any) -> Forwarder:
    kw.setdefault("cpu_time", lambda: 0.0)
    return Forwarder(buf, send, ManualClock(), "edge-1", rand=lambda: 0.999, **kw)


def wire(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch as the hub receives it (records travel as stored bytes)."""
    doc: dict[str, Any] = orjson.loads(orjson.dumps(batch))
    return doc


def drain(fwd: Forwarder, steps: int = 100) -> None:
    for _ in range(steps):
        if fwd.step() is not None and not fwd.buffer.stats().records:
            return


def test_batches_go_oldest_first_and_are_deleted_once_acknowledged(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(25)])
    hub = IngestStore()
    fwd = forwarder(buf, hub.send_for("edge-1"), max_records=10)
    assert fwd.step() is None
    assert hub.seqs() == list(range(1, 11))
    assert hub.last_batch is not None and hub.last_batch["buffered"] == 15
    drain(fwd)
    assert hub.seqs() == list(range(1, 26))
    assert buf.stats().records == 0 and fwd.forwarded_total == 25


def test_the_hub_killed_mid_batch_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(30)])
    hub = IngestStore()
    fwd = forwarder(buf, hub.send_for("edge-1"), max_records=10)
    hub.lose_answer_next = 1  # stored, then the answer never came back
    delay = fwd.step()
    assert delay is not None and delay > 0
    assert buf.stats().records == 30  # nothing deleted without an ack
    hub.fail_next = 2  # then down for two tries
    assert fwd.step() is not None and fwd.step() is not None
    drain(fwd)
    assert hub.seqs() == list(range(1, 31))  # each exactly once
    assert hub.duplicates == 10  # the re-sent batch was counted as duplicates, not stored
    assert buf.stats().records == 0


def test_backoff_grows_to_its_cap_and_resets_after_a_success(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(0)])
    hub = IngestStore()
    hub.fail_next = 12
    fwd = forwarder(buf, hub.send_for("edge-1"), backoff=BackoffPolicy(1.0, 60.0))
    delays = [fwd.step() for _ in range(12)]
    assert delays[:4] == pytest.approx([0.999, 1.998, 3.996, 7.992])
    assert max(d for d in delays if d is not None) == pytest.approx(60 * 0.999)
    assert fwd.last_error and fwd.failures_total == 12
    assert fwd.step() is None and fwd.failures == 0 and fwd.last_error == ""


def test_a_record_the_hub_refuses_is_isolated_and_dropped_not_blocking(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    records = [window(i) for i in range(8)]
    records[5]["role"] = "janitor"  # the hub refuses the batch (400)
    buf.append(records)
    hub = IngestStore()
    fwd = forwarder(buf, hub.send_for("edge-1"))
    drain(fwd)
    assert hub.seqs() == [1, 2, 3, 4, 5, 7, 8]
    assert fwd.rejected_total == 1 and buf.stats().records == 0


def test_only_what_the_hub_acknowledged_is_deleted(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(6)])

    def partial(batch: Mapping[str, Any]) -> dict[str, Any]:
        third = wire(batch)["records"][2]
        return {"stored": 3, "duplicates": 0, "acked_through": third["seq"]}

    fwd = forwarder(buf, partial)
    fwd.step()
    assert [r.seq for r in buf.pending(10, 10**9)] == [4, 5, 6]


@pytest.mark.parametrize(
    "error", [UnauthenticatedError("401"), InvalidInputError("413 too large")], ids=["401", "413"]
)
def test_auth_and_size_refusals_never_delete_a_batch_of_many(
    tmp_path: Path, error: Exception
) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(4)])

    def refuse(batch: Mapping[str, Any]) -> dict[str, Any]:
        records = wire(batch)["records"]
        if isinstance(error, InvalidInputError) and len(records) == 1:
            return {"stored": 1, "duplicates": 0, "acked_through": records[0]["seq"]}
        raise error

    fwd = forwarder(buf, refuse)
    fwd.step()
    expected = 4 if isinstance(error, UnauthenticatedError) else 0
    assert buf.stats().records == expected


def test_the_forwarder_resumes_from_the_buffer_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    buf = TelemetryBuffer(path)
    buf.append([window(i) for i in range(5)])
    hub = IngestStore()
    forwarder(buf, hub.send_for("edge-1"), max_records=2).step()
    buf.close()
    again = TelemetryBuffer(path)
    drain(forwarder(again, hub.send_for("edge-1")))
    assert hub.seqs() == [1, 2, 3, 4, 5]


def test_catching_up_on_a_backlog_pauses_to_keep_within_its_duty_cycle(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(5)])
    cpu = [0.0]
    hub = IngestStore()

    def costly(batch: Mapping[str, Any]) -> Mapping[str, Any]:
        cpu[0] += 0.02  # the batch took 20 ms of this thread's CPU
        return hub.ingest("edge-1", batch)

    fwd = Forwarder(
        buf, costly, ManualClock(), "edge-1", max_records=2, max_duty=0.1, cpu_time=lambda: cpu[0]
    )
    assert fwd.step() == pytest.approx(0.18)  # 20 ms working, 180 ms paused: 10 %


def test_a_hub_that_refuses_every_record_makes_the_agent_drop_none(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([window(i) for i in range(6)])

    def older_hub(batch: Mapping[str, Any]) -> dict[str, Any]:
        raise InvalidInputError("telemetry format 1 is newer than this hub reads")

    fwd = forwarder(buf, older_hub)
    for _ in range(3):
        assert fwd.step() is not None  # backing off
    assert buf.stats().records == 6 and fwd.rejected_total == 0
    assert "refuses every record" in fwd.last_error
