"""The audit log: every change leaves an entry, the chain verifies, tampering is found."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from modelfleet.audit.log import (
    GENESIS_HASH,
    AuditRecord,
    append_entry,
    entry_hash,
    first_broken,
    verify_chain,
)
from modelfleet.clock import ManualClock
from modelfleet.hub import db
from modelfleet.hub.audit_rows import SqlAuditStore
from modelfleet.hub.service import HubService
from tests.hub._support import auth, register


@pytest.fixture
def busy_service(
    service: HubService, http: TestClient, admin_token: str, onnx_bytes: bytes
) -> HubService:
    service.add_device("cam-1", "plant", [], actor="operator:olga", ticket="CHG-7")
    register(http, admin_token, "iris", onnx_bytes)
    service.deploy("iris", 1, ["cam-1"], actor="operator:olga", ticket="CHG-8")
    return service


def test_changes_are_logged_with_actor_and_ticket(busy_service: HubService) -> None:
    entries = busy_service.audit(limit=1000)
    actions = [e["action"] for e in entries]
    assert actions[0] == "token.create"  # the admin token of init
    for action in ("device.add", "blob.upload", "model.create", "model.register", "deploy"):
        assert action in actions
    add = next(e for e in entries if e["action"] == "device.add")
    assert (add["actor"], add["subject"], add["ticket"]) == ("operator:olga", "cam-1", "CHG-7")
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))


def test_intact_chain_verifies_over_the_api(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    assert busy_service.verify_audit() is None
    r = http.get("/api/v1/audit/verify", headers=auth(admin_token))
    assert r.json() == {"intact": True, "first_broken_seq": None}
    page = http.get("/api/v1/audit?after_seq=2&limit=2", headers=auth(admin_token)).json()
    assert [e["seq"] for e in page["entries"]] == [3, 4]


def test_edited_entry_breaks_the_chain_at_that_entry(busy_service: HubService) -> None:
    with busy_service.context.sessions.begin() as s:
        s.execute(update(db.AuditEntry).where(db.AuditEntry.seq == 3).values(actor="mallory"))
    assert busy_service.verify_audit() == 3


def test_edited_details_break_the_chain(busy_service: HubService) -> None:
    deploy_seq = busy_service.audit(limit=1000)[-1]["seq"]
    with busy_service.context.sessions.begin() as s:
        s.execute(
            update(db.AuditEntry)
            .where(db.AuditEntry.seq == deploy_seq)
            .values(details={"devices": []})
        )
    assert busy_service.verify_audit() == deploy_seq


def test_deleted_entry_breaks_the_chain(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry).where(db.AuditEntry.seq == 2))
    assert busy_service.verify_audit() == 3
    r = http.get("/api/v1/audit/verify", headers=auth(admin_token))
    assert r.json() == {"intact": False, "first_broken_seq": 3}


def test_rehashed_forgery_is_found_at_the_next_link(busy_service: HubService) -> None:
    """Rewriting an entry and its own hash still breaks the following entry's prev_hash."""
    with busy_service.context.sessions.begin() as s:
        row = s.get(db.AuditEntry, 2)
        assert row is not None
        forged = AuditRecord.of(row)
        forged = AuditRecord(**{**forged.to_dict(), "at": forged.at, "actor": "mallory"})
        row.actor, row.hash = "mallory", entry_hash(forged)
    assert busy_service.verify_audit() == 3


def test_pure_chain_check_on_records() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    a = AuditRecord(1, at, "x", "act", "s", None, {"k": 1})
    a = AuditRecord(**{**a.to_dict(), "at": at, "hash": entry_hash(a)})
    b = AuditRecord(2, at, "y", "act", "s", "T-1", {}, prev_hash=a.hash)
    b = AuditRecord(**{**b.to_dict(), "at": at, "hash": entry_hash(b)})
    assert first_broken([a, b]) is None
    assert first_broken([b]) == 2
    assert first_broken([a, AuditRecord(**{**b.to_dict(), "at": at, "ticket": None})]) == 2


def test_append_in_a_rolled_back_transaction_leaves_no_entry(service: HubService) -> None:
    before = len(service.audit(limit=1000))
    clock = ManualClock()
    with service.context.sessions() as s:
        append_entry(SqlAuditStore(s), clock.now(), "x", "y", "z")
        s.rollback()
    with service.context.sessions() as s:
        assert verify_chain(SqlAuditStore(s)) is None
    assert len(service.audit(limit=1000)) == before
