"""The write-ahead buffer: durable seqs, bounded bytes, eviction counted, disk full."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError, StorageError
from modelfleet.telemetry.buffer import ROW_OVERHEAD, TelemetryBuffer
from tests.telemetry._records import window


def test_seqs_are_never_reused_after_ack_eviction_or_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    buf = TelemetryBuffer(path)
    assert buf.append([window(i) for i in range(3)]) == [1, 2, 3]
    assert buf.ack([1, 2, 3]) == 3
    buf.close()
    again = TelemetryBuffer(path)
    assert again.append([window(9)]) == [4]  # nothing left in the table, seq still moves on
    stats = again.stats()
    assert (stats.records, stats.appended_total, stats.acked_total) == (1, 4, 3)


def test_buffer_id_is_random_and_survives_a_restart(tmp_path: Path) -> None:
    a = TelemetryBuffer(tmp_path / "a.sqlite3")
    b = TelemetryBuffer(tmp_path / "b.sqlite3")
    assert a.buffer_id != b.buffer_id and len(a.buffer_id) == 32
    bid = a.buffer_id
    a.close()
    assert TelemetryBuffer(tmp_path / "a.sqlite3").buffer_id == bid


def test_pending_is_oldest_first_and_bounded_and_records_keep_their_fields(
    tmp_path: Path,
) -> None:
    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    buf.append([{**window(i), "future_field": {"x": i}} for i in range(10)])
    got = buf.pending(4, 10**9)
    assert [r.seq for r in got] == [1, 2, 3, 4]
    assert got[2].record()["future_field"] == {"x": 2}
    assert got[2].record()["seq"] == 3
    assert len(buf.pending(100, 1)) == 1  # always at least one


def test_a_full_buffer_evicts_the_oldest_first_and_counts_them(tmp_path: Path) -> None:
    one = len(__import__("orjson").dumps({"seq": 1, **window(0)})) + ROW_OVERHEAD
    buf = TelemetryBuffer(tmp_path / "t.sqlite3", max_bytes=max(64 * 1024, one * 10))
    per = buf.max_bytes // one
    for i in range(per + 5):
        buf.append([window(i)])
    stats = buf.stats()
    assert stats.bytes <= buf.max_bytes
    assert stats.evicted_total >= 5
    assert stats.records + stats.evicted_total == stats.appended_total
    oldest = buf.pending(1, 10**9)[0].seq
    assert oldest == stats.evicted_total + 1
    buf.close()
    assert (
        TelemetryBuffer(tmp_path / "t.sqlite3", max_bytes=buf.max_bytes).stats().evicted_total
        == stats.evicted_total
    )


def test_the_disk_full_fails_the_append_whole_and_the_buffer_recovers(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    buf = TelemetryBuffer(path)
    buf.append([window(0)])
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    buf.close()
    full = TelemetryBuffer(path, max_pages=pages)
    with pytest.raises(StorageError, match="disk full"):
        full.append([window(i) for i in range(1, 50)])
    stats = full.stats()
    assert (stats.records, stats.appended_total) == (1, 1)  # nothing half-written
    full.ack([1])  # freeing space makes room again
    assert full.append([window(1)]) == [2]


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    buf = TelemetryBuffer(path)
    assert buf.append([window(0)]) == [1]
    assert list(tmp_path.glob("t.sqlite3.corrupt-*"))


@pytest.mark.parametrize("size", [0, 1024, 17 * 1024**3])
def test_an_out_of_range_bound_is_refused(tmp_path: Path, size: int) -> None:
    with pytest.raises(ConfigError):
        TelemetryBuffer(tmp_path / "t.sqlite3", max_bytes=size)


def test_a_page_is_the_oldest_records_within_the_bounds_as_one_json_array(
    tmp_path: Path,
) -> None:
    import orjson

    buf = TelemetryBuffer(tmp_path / "t.sqlite3")
    assert buf.pending_page(10, 10**9) is None
    buf.append([window(i) for i in range(10)])
    page = buf.pending_page(4, 10**9)
    assert page is not None and page.seqs == [1, 2, 3, 4]
    assert sorted(r["seq"] for r in orjson.loads(page.records_json)) == [1, 2, 3, 4]
    one = buf.pending_page(10, 1)  # always at least one
    assert one is not None and one.seqs == [1]
    size = len(orjson.dumps({"seq": 1, **window(0)}))
    some = buf.pending_page(10, size * 3 + 10)
    assert some is not None and len(some.seqs) in (2, 3)
    buf.ack(page.seqs)
    rest = buf.pending_page(100, 10**9)
    assert rest is not None and rest.seqs == list(range(5, 11))
