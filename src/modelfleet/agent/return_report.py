"""A device's part of a return bundle, read from its state folder (issue 11, ADR 0029).

``modelfleet bundle report --agent-state DIR`` runs this at the site, next to a running or
stopped agent: it reads the version report (``state.json``, what the check-in sends), the
device key and the whole write-ahead telemetry buffer (windows, events and review samples)
**read-only** — nothing is deleted: the records stay in the buffer until the agent forwards
them online (the hub counts them as duplicates then), or the buffer's bound evicts them.
Re-sending them in a later bundle is harmless: the hub stores each record once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from modelfleet.agent.device_key import load_device_key
from modelfleet.agent.review import RECORD_KIND
from modelfleet.agent.state import STATE_FILE
from modelfleet.agent.telemetry import BUFFER_FILE
from modelfleet.delivery.return_bundle import Envelope, make_envelope
from modelfleet.errors import ConfigError, StorageError

__all__ = ["BufferContents", "DeviceReturn", "collect_device", "read_buffer"]


@dataclass(frozen=True)
class BufferContents:
    """Every record waiting in a buffer file, as read.

    Attributes:
        buffer_id: the buffer's id.
        records: decoded records, seq ascending.
        evicted_total: records it evicted unsent.
    """

    buffer_id: str
    records: list[dict[str, Any]]
    evicted_total: int


@dataclass(frozen=True)
class DeviceReturn:
    """One device's signed envelope and what went into it.

    Attributes:
        device_id: the device.
        envelope: the signed envelope.
        records: telemetry records carried.
        review_samples: how many of them are review samples.
        seq_range: (first, last) seq carried, None when none.
        has_report: whether a version report is carried.
    """

    device_id: str
    envelope: Envelope
    records: int
    review_samples: int
    seq_range: tuple[int, int] | None
    has_report: bool

    def summary(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "records": self.records,
            "review_samples": self.review_samples,
            "seq_range": list(self.seq_range) if self.seq_range else None,
            "report": self.has_report,
        }


def read_buffer(path: Path) -> BufferContents | None:
    """The records of a telemetry buffer file, read-only (a running agent keeps writing;
    SQLite's WAL lets this read a consistent snapshot). None when there is no file.

    Raises:
        StorageError: the file is not a readable buffer.
    """
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StorageError(f"cannot open the telemetry buffer {path}: {e}") from e
    try:
        db.execute("BEGIN")  # one snapshot for meta and records
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    except sqlite3.Error as e:
        raise StorageError(f"cannot read the telemetry buffer {path}: {e}") from e
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    records: list[dict[str, Any]] = []
    for seq, body in rows:
        if not body:  # a placeholder row (seq kept used), never a record
            continue
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise StorageError(f"telemetry buffer {path}: record {seq} is corrupt") from e
        if isinstance(record, dict):
            records.append(record)
    return BufferContents(
        str(meta.get("buffer_id", "")), records, int(meta.get("evicted_total", 0) or 0)
    )


def _device_id(state_dir: Path, report: dict[str, Any] | None) -> str:
    if report is not None and isinstance(report.get("device_id"), str) and report["device_id"]:
        return str(report["device_id"])
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        cred = orjson.loads((state_dir / "credential.json").read_bytes())
        if isinstance(cred, dict) and isinstance(cred.get("device_id"), str):
            return str(cred["device_id"])
    raise ConfigError(
        f"{state_dir} names no device (no {STATE_FILE} or credential.json): is it an agent's "
        "state folder?"
    )


def collect_device(state_dir: Path, site: str, now: datetime) -> DeviceReturn:
    """One device's signed envelope: its version report and every buffered record.

    Args:
        state_dir: the agent's state folder (``agent run --state-dir``).
        site: the site named in the envelope ("" for none).
        now: the site's clock (the envelope's ``created_at``: the "as of" time).

    Raises:
        ConfigError: not an agent state folder, or no device key in it.
        StorageError: ``state.json`` or the buffer cannot be read.
    """
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise ConfigError(f"{state_dir} is not a folder (an agent's --state-dir)")
    report: dict[str, Any] | None = None
    state_path = state_dir / STATE_FILE
    if state_path.exists():
        try:
            data = orjson.loads(state_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise StorageError(f"cannot read the agent state {state_path}: {e}") from e
        report = data if isinstance(data, dict) else None
    device_id = _device_id(state_dir, report)
    key = load_device_key(state_dir)
    buffer = read_buffer(state_dir / BUFFER_FILE)
    telemetry: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    if buffer is not None:
        records = buffer.records
        telemetry = {
            "buffer_id": buffer.buffer_id,
            "first_seq": records[0]["seq"] if records else None,
            "last_seq": records[-1]["seq"] if records else None,
            "evicted_total": buffer.evicted_total,
            "records": records,
        }
    payload = {
        "device_id": device_id,
        "site": site,
        "created_at": now.isoformat(),
        "report": report,
        "telemetry": telemetry,
    }
    envelope = make_envelope(payload, key.sign, key.public_bytes)
    seqs = (int(records[0]["seq"]), int(records[-1]["seq"])) if records else None
    samples = sum(1 for r in records if r.get("kind") == RECORD_KIND)
    return DeviceReturn(device_id, envelope, len(records), samples, seqs, report is not None)
