"""A site's devices for the return-channel tests: real agent state folders (``state.json``,
a device key, a write-ahead telemetry buffer with windows, events and review samples)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from modelfleet.agent.device_key import DeviceKey, load_or_create_device_key
from modelfleet.agent.state import AgentState, ModelSlots, SlotRecord, save_state
from modelfleet.agent.telemetry import BUFFER_FILE
from modelfleet.telemetry.buffer import TelemetryBuffer
from tests.hub._telemetry import event, window

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def review_sample(device: str, sid: str, at: datetime) -> dict[str, Any]:
    tensor = {"datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}
    return {"kind": "review_sample", "device_id": device, "sample_id": sid, "model": "iris",
            "version": "1", "role": "production", "at": at.isoformat(),
            "reasons": ["anomaly"], "anomaly_score": 0.2, "request_id": f"r-{sid}", "row": 0,
            "inputs": {"X": tensor}, "outputs": {"label": {"datatype": "INT64", "shape": [1],
            "data": [1]}}}  # fmt: skip


@dataclass
class SiteDevice:
    device_id: str
    state_dir: Path
    key: DeviceKey


def make_device(
    root: Path, device_id: str, *, windows: int = 5, samples: int = 1, version: int = 1
) -> SiteDevice:
    """An agent state folder as the agent leaves it: state, key, buffered records."""
    state_dir = root / device_id
    state_dir.mkdir(parents=True)
    state = AgentState(device_id=device_id, applied_serial=3)
    state.models["iris"] = ModelSlots(active=SlotRecord(version, "ab" * 32, "slots/x"))
    state.last_check = T0.isoformat()
    save_state(state_dir, state)
    key, _ = load_or_create_device_key(state_dir)
    buffer = TelemetryBuffer(state_dir / BUFFER_FILE)
    records: list[dict[str, Any]] = []
    for i in range(windows):
        w = window(0, device_id, T0 + timedelta(minutes=i + 1))
        w.pop("seq")
        records.append(w)
    e = event(0, device_id, T0)
    e.pop("seq")
    records.append(e)
    records += [review_sample(device_id, f"{device_id}-s{i}", T0) for i in range(samples)]
    buffer.append(records)
    buffer.close()
    return SiteDevice(device_id, state_dir, key)


def enrol(service: Any, device: SiteDevice, site: str = "plant-7") -> None:
    """Enrol ``device`` at the hub with its public key (as the agent's PUT would)."""
    from modelfleet.hub.bundle_ingest import DeviceKeys

    service.add_device(device.device_id, site, [], actor="admin:admin")
    DeviceKeys(service.context).register(device.device_id, device.key.public_bytes, "admin:admin")
