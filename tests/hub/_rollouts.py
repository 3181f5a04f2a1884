"""Helpers for rollout tests: a small fleet, plan documents, telemetry fed like agents send it."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import select

from modelfleet.clock import ManualClock
from modelfleet.hub import db
from modelfleet.hub.service import HubService
from tests.hub._telemetry import batch, window

ADMIN = "admin:admin"
OPERATOR = "operator:olga"


def enrol_fleet(service: HubService, n: int = 20, *, cells: bool = False) -> list[str]:
    """Enrol ``n`` devices (``d00``..): the first three quarters at plant-a, the rest at
    plant-b, all tagged ``line1``; with ``cells``, pairs share a ``cell:<i>`` tag."""
    ids = []
    for i in range(n):
        tags = ["line1", *([f"cell:{i // 2}"] if cells else [])]
        site = "plant-a" if i < n * 3 // 4 else "plant-b"
        device, _ = service.add_device(f"d{i:02d}", site, tags, actor=ADMIN)
        ids.append(device["id"])
    return ids


def plan(**over: Any) -> dict[str, Any]:
    """A three-stage plan for iris v2 over every device: 10 %, 50 %, 100 %, 10 minute soaks,
    an error-rate gate (20 requests, two bad evaluations) and no guard rollback."""
    doc: dict[str, Any] = {
        "model": "iris",
        "version": 2,
        "target": {"all": True},
        "stages": [
            {"name": "canary", "percent": 10, "soak": "10m"},
            {"name": "half", "percent": 50, "soak": "10m"},
            {"name": "full", "percent": 100, "soak": 0},
        ],
        "gates": [
            {
                "metric": "error_rate",
                "max_delta": 0.05,
                "min_devices": 1,
                "min_samples": 20,
                "consecutive": 2,
            },
            {"metric": "guard_rollbacks", "max": 0},
        ],
    }
    doc.update(over)
    return doc


class Feed:
    """Telemetry windows for every device, per what the hub assigned it (as agents send)."""

    def __init__(self, service: HubService, clock: ManualClock) -> None:
        self.service = service
        self.clock = clock
        self.seq: Counter[str] = Counter()

    def window(
        self,
        device: str,
        version: int,
        rollout_id: str | None,
        *,
        ok: int = 50,
        errors: int = 0,
        role: str = "production",
    ) -> None:
        self.seq[device] += 1
        closed = self.clock.now() - timedelta(seconds=1)
        record = window(
            self.seq[device],
            device,
            closed,
            version=str(version),
            rollout_id=rollout_id,
            ok=ok,
            server_error=errors,
            role=role,
        )
        body = orjson.dumps(batch(device, [record], self.clock.now()))
        self.service.ingest_telemetry(device, body)

    def round(
        self,
        devices: Iterable[str],
        *,
        errors: Callable[[int], int] = lambda version: 0,
        skip: Iterable[str] = (),
    ) -> None:
        """One window from each device for what it serves now (production, and the
        candidate in split mode); ``errors(version)`` server errors of 50 requests."""
        skipped = set(skip)
        for device in devices:
            if device in skipped:
                continue
            for a in self.service.get_device(device)["assignments"]:
                rid = a["rollout_id"] if str(a["rollout_id"]).startswith("ro-") else None
                prod = a["production"]
                self.window(device, prod, rid, errors=errors(prod))
                if a["candidate"] is not None:
                    cand = a["candidate"]
                    role = "candidate" if a["mode"] == "split" else "shadow"
                    self.window(device, cand, rid, errors=errors(cand), role=role)


def assigned(service: HubService, version: int = 2) -> set[str]:
    """Devices whose iris assignment has ``version`` as production or candidate."""
    out = set()
    for d in service.list_devices():
        for a in d["assignments"]:
            if version in (a["production"], a["candidate"]):
                out.add(d["id"])
    return out


def audit_of(service: HubService, subject: str) -> list[db.AuditEntry]:
    """The audit entries about ``subject``, oldest first (read from the table)."""
    with service.context.read() as s:
        return list(
            s.scalars(
                select(db.AuditEntry)
                .where(db.AuditEntry.subject == subject)
                .order_by(db.AuditEntry.seq)
            )
        )


def actions(service: HubService, subject: str) -> list[str]:
    """The audit actions about ``subject``, oldest first."""
    return [e.action for e in audit_of(service, subject)]


def rollback_event(from_version: int, to_version: int) -> dict[str, Any]:
    """A guard rollback as the agent reports it in a check-in (issue 6 contract 2)."""
    return {
        "id": uuid.uuid4().hex,
        "at": "2026-01-01T00:00:00+00:00",
        "model": "iris",
        "kind": "production",
        "from_version": from_version,
        "to_version": to_version,
        "reason": "guard: error rate 0.4 > 0.05",
        "serial": 2,
    }
