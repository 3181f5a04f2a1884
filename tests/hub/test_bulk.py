"""The DBAPI path (hub/_bulk.py) stores and reads exactly what SQLAlchemy's does."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import IntegrityError

from modelfleet.hub import _bulk, db
from modelfleet.hub.director import _DIRTY, _RESCHEDULE, _SIGNED, _STAGE_UPSERT, _STATE_UPSERT
from modelfleet.hub.fleet import _TOUCH
from tests.pg import pg_database

T0 = datetime(2026, 12, 4, 18, 0, 0, tzinfo=UTC)
IDS = ("cam-1", "cam-2", "cam-3", "cam-4")


@contextmanager
def _sqlite(tmp_path: Path, name: str) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / name}.db")
    db.Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _postgres() -> Iterator[Engine]:
    with pg_database() as url:
        engine = db.make_engine(url)
        db.Base.metadata.create_all(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(db.Device),
            [{"id": d, "site": "", "tags": [], "created_at": T0} for d in IDS],
        )
        conn.execute(
            insert(db.DirectorDevice),
            [
                {
                    "device_id": d, "dirty": True, "staged": b"s-" + d.encode(),
                    "staged_sha256": f"{i:064x}", "targets_version": 1, "snapshot_version": 1,
                    "timestamp_version": 1, "targets_json": b"old-t", "snapshot_json": b"old-s",
                }
                for i, d in enumerate(IDS)
            ],
        )  # fmt: skip


def _signed_rows() -> list[dict[str, Any]]:
    later = T0 + timedelta(days=7, microseconds=250)
    out = []
    for i, d in enumerate(IDS):
        out.append(
            {
                "b_id": d,
                "b_prev": 1 if d != "cam-4" else 99,  # cam-4 changed meanwhile: not written
                "b_staged": f"{i:064x}",
                "b_targets_version": 2, "b_snapshot_version": 2, "b_timestamp_version": 2,
                "b_targets_expires": later if i else None,  # a role never signed
                "b_snapshot_expires": later,
                "b_timestamp_expires": T0 + timedelta(hours=i),  # one per row
                "b_targets_json": None if i == 2 else b"\x00targets" + d.encode(),  # kept
                "b_snapshot_json": b"snapshot" + d.encode(),
                "b_timestamp_json": b"timestamp" + d.encode(),
                "b_signed_at": T0,
                "b_resign_at": later - timedelta(days=1),
                "b_keyid": "ab" * 32,
            }
        )  # fmt: skip
    return out


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    """Every column as the database holds it (no type processing on the way back)."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for table in ("director_devices", "desired_states", "devices")
            for r in conn.exec_driver_sql(
                f"SELECT * FROM {table} ORDER BY {'id' if table == 'devices' else 'device_id'}"
            )
        ]


def _writes() -> list[tuple[Any, list[dict[str, Any]]]]:
    staged = [{"device_id": "cam-1", "staged": b"new", "staged_sha256": "f" * 64, "dirty": True}]
    states = [
        {"device_id": d, "serial": 1, "sha256": "e" * 64, "length": 460, "issued_at": T0}
        for d in IDS
    ]
    resigned = _signed_rows()[1:2]
    later = T0 + timedelta(hours=2, microseconds=7)
    moved = [{"b_id": "cam-3", "b_prev": 2, "b_resign_at": T0 + timedelta(days=2)}]
    return [
        (_STATE_UPSERT[1], states),
        (_SIGNED[True], _signed_rows()),
        (_STAGE_UPSERT[0], [{"b_id": r["device_id"], **r} for r in staged]),
        (_SIGNED[False], [{**r, "b_prev": 2, "b_timestamp_version": 3} for r in resigned]),
        (_SIGNED[False], resigned),  # signed meanwhile: compare-and-set refuses it
        (_STATE_UPSERT[0], [{"b_id": "cam-2", **states[1], "serial": 2}]),
        (_RESCHEDULE, moved),
        (_TOUCH, [{"b_id": d, "b_now": T0 + timedelta(hours=1)} for d in IDS]),
        # last_seen never moves back: cam-1's older time is not written
        (_TOUCH, [{"b_id": "cam-1", "b_now": T0}, {"b_id": "cam-2", "b_now": later}]),
    ]


def _check_same_bytes(make: Callable[[str], Any]) -> None:
    with make("sqlalchemy") as old, make("bulk") as new:
        counts: list[Sequence[int]] = []
        for engine in (old, new):
            _seed(engine)
            row_counts = []
            for stmt, rows in _writes():
                with engine.begin() as conn:
                    if engine is old:
                        row_counts.append(conn.execute(stmt, rows).rowcount)
                    else:
                        row_counts.append(_bulk.executemany(conn, stmt, rows))
            counts.append(row_counts)
        assert counts[1] == [4, 3, 1, 1, 0, 1, 1, 4, 1]
        assert counts[0][1:] == counts[1][1:]  # SQLAlchemy's INSERT on PostgreSQL says -1
        assert _stored(old) == _stored(new)
        with new.begin() as conn:
            conn.execute(update(db.DirectorDevice).values(dirty=True))
        with new.connect() as conn:
            expected = [tuple(r) for r in conn.execute(_DIRTY, {"b_limit": 10})]
            rows = _bulk.fetchall(conn, _DIRTY, {"b_limit": 10})
            assert [tuple(r) for r in rows] == expected
            assert {r.device_id for r in rows} == set(IDS)
            assert any(r.timestamp_expires is not None for r in rows)
            assert all(r.timestamp_expires.tzinfo is UTC for r in rows if r.timestamp_expires)
            assert _bulk.fetchall(conn, _DIRTY, {"b_limit": 0}) == []


def test_bulk_writes_and_reads_are_sqlalchemys_on_sqlite(tmp_path: Path) -> None:
    _check_same_bytes(lambda name: _sqlite(tmp_path, name))


@pytest.mark.postgres
@pytest.mark.parametrize("copy_min", [1, 1000], ids=["copy-then-update-from", "executemany"])
def test_bulk_writes_and_reads_are_sqlalchemys_on_postgres(
    monkeypatch: pytest.MonkeyPatch, copy_min: int
) -> None:
    monkeypatch.setattr(_bulk, "COPY_MIN", copy_min)
    _check_same_bytes(lambda name: _postgres())


def test_a_bulk_write_clash_is_sqlalchemys_integrity_error(tmp_path: Path) -> None:
    with _sqlite(tmp_path, "clash") as engine:
        _seed(engine)
        row = {"device_id": "cam-1", "staged": None, "staged_sha256": None, "dirty": True}
        zero = {"targets_version": 0, "snapshot_version": 0, "timestamp_version": 0}
        with pytest.raises(IntegrityError), engine.begin() as conn:
            _bulk.executemany(conn, _STAGE_UPSERT[1], [{**row, **zero}])


def test_an_empty_bulk_write_runs_nothing(tmp_path: Path) -> None:
    with _sqlite(tmp_path, "empty") as engine, engine.begin() as conn:
        assert _bulk.executemany(conn, _SIGNED[True], []) == 0


@pytest.mark.postgres
def test_two_copy_updates_in_one_transaction_each_get_their_temporary_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_bulk, "COPY_MIN", 1)
    with _postgres() as engine:
        _seed(engine)
        moved = [{"b_id": d, "b_prev": 1, "b_resign_at": T0} for d in IDS]
        touched = [{"b_id": d, "b_now": T0} for d in IDS]
        with engine.begin() as conn:
            assert _bulk.executemany(conn, _RESCHEDULE, moved) == 4
            assert _bulk.executemany(conn, _TOUCH, touched) == 4
            assert _bulk.executemany(conn, _RESCHEDULE, moved[:2]) == 2
