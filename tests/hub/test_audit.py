"""The audit log: every change leaves an entry, the chain verifies against its signed head,
tampering (edit, insertion, deletion, truncation, a replayed head) is found, pages and
filters work, and chains from before the signed head (migration 0006) still verify."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from modelfleet.audit.checkpoint import CheckpointSigner
from modelfleet.audit.log import (
    GENESIS_HASH,
    AuditQuery,
    AuditRecord,
    append_entry,
    entry_hash,
    first_broken,
    verify_chain,
)
from modelfleet.audit.verify import ProblemKind, check_chain
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hub import db
from modelfleet.hub.audit_anchor import AUDIT_KEY_NAME, WITNESS_NAME
from modelfleet.hub.audit_rows import SqlAuditStore
from modelfleet.hub.config import load_hub_config
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


def _problem(service: HubService) -> tuple[int, str] | None:
    p = service.audit_verify()["problem"]
    return None if p is None else (p["seq"], p["kind"])


def _last_seq(service: HubService) -> int:
    return int(service.audit(limit=1000)[-1]["seq"])


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


def test_intact_chain_verifies_over_the_api_with_a_signed_head(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    assert busy_service.verify_audit() is None
    r = http.get("/api/v1/audit/verify", headers=auth(admin_token)).json()
    last = busy_service.audit(limit=1000)[-1]
    assert r["ok"] is True and r["problem"] is None
    assert r["entries"] == last["seq"]
    assert r["head"] == {"seq": last["seq"], "hash": last["hash"]}
    anchor = http.get("/api/v1/audit/head", headers=auth(admin_token)).json()
    assert anchor["checkpoint"]["seq"] == last["seq"] and anchor["checkpoint"]["signature"]
    assert anchor["public_key"]["keyid"] == r["keyid"] == anchor["checkpoint"]["keyid"]
    assert anchor["witness"]["seq"] == last["seq"]  # a clean verify moved the checkpoint


@pytest.mark.parametrize("column", ["actor", "details", "ticket", "at"])
def test_an_edited_entry_is_found_at_that_entry(busy_service: HubService, column: str) -> None:
    seq = _last_seq(busy_service) - 1
    value = {
        "actor": "mallory",
        "details": {"devices": []},
        "ticket": "CHG-0",
        "at": datetime(2020, 1, 1, tzinfo=UTC),
    }[column]
    with busy_service.context.sessions.begin() as s:
        s.execute(update(db.AuditEntry).where(db.AuditEntry.seq == seq).values({column: value}))
    assert _problem(busy_service) == (seq, "edited")
    assert busy_service.verify_audit() == seq


def test_a_deleted_entry_is_found_as_the_gap(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry).where(db.AuditEntry.seq == 2))
    assert _problem(busy_service) == (2, "deleted")
    r = http.get("/api/v1/audit/verify", headers=auth(admin_token)).json()
    assert r["ok"] is False and r["problem"]["kind"] == "deleted"
    assert "entry 2 missing" in r["problem"]["detail"]


def test_a_rehashed_forgery_is_found_at_the_next_link(busy_service: HubService) -> None:
    """Rewriting an entry and its own hash still breaks the following entry's prev_hash."""
    with busy_service.context.sessions.begin() as s:
        row = s.get(db.AuditEntry, 2)
        assert row is not None
        forged = AuditRecord.of(row)
        forged = AuditRecord(**{**forged.to_dict(), "at": forged.at, "actor": "mallory"})
        row.actor, row.hash = "mallory", entry_hash(forged)
    assert _problem(busy_service) == (3, "inserted")


def _chain_on(service: HubService, seq: int, actor: str) -> None:
    """Append a well-formed entry ``seq`` after the last row, bypassing the head."""
    with service.context.sessions.begin() as s:
        last = AuditRecord.of(s.get(db.AuditEntry, seq - 1))  # type: ignore[arg-type]
        r = AuditRecord(seq, last.at, actor, "deploy", "iris/9", None, {}, last.hash)
        s.add(
            db.AuditEntry(
                **{**r.to_dict(), "at": r.at, "hash": entry_hash(r)},
            )
        )


def test_an_entry_chained_on_outside_the_hub_is_an_insertion(busy_service: HubService) -> None:
    top = _last_seq(busy_service)
    _chain_on(busy_service, top + 1, "mallory")
    assert _problem(busy_service) == (top + 1, "inserted")


def test_a_truncated_tail_is_found_by_the_head(busy_service: HubService) -> None:
    top = _last_seq(busy_service)
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry).where(db.AuditEntry.seq > top - 2))
    report = busy_service.audit_verify()
    assert report["problem"]["seq"] == top - 1 and report["problem"]["kind"] == "truncated"
    assert report["head"]["seq"] == top and report["entries"] == top - 2


def test_a_truncation_with_a_rewritten_unsigned_head_is_refused(
    busy_service: HubService,
) -> None:
    top = _last_seq(busy_service)
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry).where(db.AuditEntry.seq == top))
        prev = s.get(db.AuditEntry, top - 1)
        assert prev is not None
        s.execute(
            update(db.AuditHead).values(seq=top - 1, hash=prev.hash, signature=None, keyid=None)
        )
    p = busy_service.audit_verify()["problem"]
    assert (p["seq"], p["kind"]) == (top - 1, "head") and "not signed" in p["detail"]


def test_a_head_signed_by_another_key_is_refused(busy_service: HubService) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = CheckpointSigner(Ed25519PrivateKey.generate())
    with busy_service.context.sessions.begin() as s:
        SqlAuditStore(s, other).set_head(SqlAuditStore(s).head())  # type: ignore[arg-type]
    p = busy_service.audit_verify()["problem"]
    assert p["kind"] == "head" and "not the hub's" in p["detail"]


def test_a_replayed_older_signed_head_is_found_by_the_home_checkpoint(
    busy_service: HubService, service: HubService
) -> None:
    """Someone who can write the database but not the hub's home keeps an old signed head,
    later cuts the log back to it and puts that head back: rows and head agree, the
    signature is the hub's, and only the checkpoint outside the database disagrees."""
    with busy_service.context.sessions() as s:
        old = SqlAuditStore(s).head()
    assert old is not None
    busy_service.add_device("cam-2", "plant", [], actor="operator:olga")
    assert busy_service.audit_verify()["ok"]  # moves the home checkpoint to the new head
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry).where(db.AuditEntry.seq > old.seq))
        s.execute(
            update(db.AuditHead).values(
                seq=old.seq, hash=old.hash, at=old.at, signature=old.signature, keyid=old.keyid
            )
        )
    p = busy_service.audit_verify()["problem"]
    assert (p["seq"], p["kind"]) == (old.seq + 1, "truncated")
    assert "rolled back" in p["detail"]


def test_the_upkeep_round_moves_the_home_checkpoint(busy_service: HubService) -> None:
    witness = busy_service.paths.root / WITNESS_NAME
    before = witness.read_bytes()
    busy_service.add_device("cam-3", "plant", [], actor="operator:olga")
    busy_service.refresh_expiring()
    assert witness.read_bytes() != before
    assert busy_service.audit_anchor()["witness"]["seq"] == _last_seq(busy_service)


def test_pure_chain_check_on_records() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    a = AuditRecord(1, at, "x", "act", "s", None, {"k": 1.5e-7})
    a = AuditRecord(**{**a.to_dict(), "at": at, "hash": entry_hash(a)})
    b = AuditRecord(2, at, "y", "act", "s", "T-1", {}, prev_hash=a.hash)
    b = AuditRecord(**{**b.to_dict(), "at": at, "hash": entry_hash(b)})
    assert first_broken([a, b]) is None
    assert first_broken([b]) == 2
    assert first_broken([a, AuditRecord(**{**b.to_dict(), "at": at, "ticket": None})]) == 2
    assert check_chain([a, b], None).problem.kind == ProblemKind.HEAD  # type: ignore[union-attr]
    assert check_chain([], None).ok


def test_append_in_a_rolled_back_transaction_leaves_no_entry_and_no_head(
    service: HubService,
) -> None:
    before = len(service.audit(limit=1000))
    clock = ManualClock()
    with service.context.sessions() as s:
        append_entry(service.context.audit_store(s), clock.now(), "x", "y", "z")
        s.rollback()
    with service.context.sessions() as s:
        assert verify_chain(SqlAuditStore(s)) is None
    assert len(service.audit(limit=1000)) == before
    assert service.audit_verify()["ok"]


# -- pages and filters ---------------------------------------------------------------------


def test_pages_run_newest_first_and_the_cursor_covers_every_entry_once(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    top = _last_seq(busy_service)
    seen: list[int] = []
    params: dict[str, int] = {"limit": 3}
    while True:
        page = http.get("/api/v1/audit", params=params, headers=auth(admin_token)).json()
        seen += [e["seq"] for e in page["entries"]]
        if page["next_before_seq"] is None:
            break
        params["before_seq"] = page["next_before_seq"]
    assert seen == list(range(top, 0, -1))
    forward = http.get("/api/v1/audit?after_seq=2&limit=2", headers=auth(admin_token)).json()
    assert [e["seq"] for e in forward["entries"]] == [3, 4]
    assert forward["next_after_seq"] == 4 and forward["next_before_seq"] is None


def test_filters_by_subject_prefix_actor_action_and_time(
    busy_service: HubService, clock: ManualClock
) -> None:
    def seqs(**kw: object) -> list[int]:
        page = busy_service.audit_page(AuditQuery(limit=100, **kw))  # type: ignore[arg-type]
        return [e["seq"] for e in page["entries"]]

    entries = {e["seq"]: e for e in busy_service.audit(limit=1000)}
    iris = seqs(subject="iris")
    assert iris and all(entries[s]["subject"].split("/")[0] == "iris" for s in iris)
    assert any(entries[s]["subject"] == "iris/1" for s in iris)
    assert seqs(subject="ir") == []  # a prefix of a name is not a subject above it
    assert seqs(subject="iris_") == []  # LIKE wildcards are literal
    olga = seqs(actor="operator:olga")
    assert {entries[s]["action"] for s in olga} == {"device.add", "deploy"}
    assert seqs(action="deploy", actor="operator:olga") == [max(olga)]
    clock.advance(3600)
    busy_service.add_device("cam-9", "plant", [], actor="operator:pat")
    assert seqs(since=clock.now() - timedelta(minutes=1)) == [_last_seq(busy_service)]


@pytest.mark.parametrize(
    "query",
    [
        "before_seq=3&after_seq=1",
        "since=yesterday",
        "since=2026-13-01T00:00:00Z",
        "before_seq=0",
        "subject=" + "x" * 300,
    ],
)
def test_bad_page_parameters_are_400_with_one_error_line(
    busy_service: HubService, http: TestClient, admin_token: str, query: str
) -> None:
    r = http.get(f"/api/v1/audit?{query}", headers=auth(admin_token))
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_a_naive_since_is_utc_over_the_api(
    busy_service: HubService, http: TestClient, admin_token: str
) -> None:
    r = http.get("/api/v1/audit?since=2000-01-01T00:00:00", headers=auth(admin_token))
    assert r.status_code == 200 and r.json()["entries"]
    with pytest.raises(InvalidInputError):
        busy_service.audit_page(AuditQuery(since=datetime(2000, 1, 1)))


# -- chains from before migration 0006 -----------------------------------------------------


def test_a_chain_from_before_the_signed_head_still_verifies_after_the_upgrade(
    busy_service: HubService, hub_home: tuple[Path, str], clock: ManualClock
) -> None:
    """Downgrade to 0005 (no head table), as a hub of issue 7 left it, then open the home
    again: migration 0006 gives the chain its head, the hub signs it once, and verify is
    clean; the hash rule of the entries did not change."""
    from alembic import command
    from alembic.config import Config

    home = hub_home[0]
    before = busy_service.audit(limit=1000)
    busy_service.close()
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    engine = db.make_engine(load_hub_config(home).database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    engine.dispose()
    (home / WITNESS_NAME).unlink()
    (home / "keys" / AUDIT_KEY_NAME).unlink()  # a home of issue 7 had no audit key either

    reopened = HubService(load_hub_config(home), clock)
    try:
        report = reopened.audit_verify()
        assert report["ok"], report
        assert report["head"]["seq"] == before[-1]["seq"]
        assert reopened.audit(limit=1000) == before
        assert (home / WITNESS_NAME).is_file()
        reopened.add_device("cam-5", "plant", [], actor="operator:olga")
        assert reopened.audit_verify()["ok"]
    finally:
        reopened.close()


def test_an_unsigned_head_is_not_adopted_again_once_the_hub_has_signed(
    busy_service: HubService, hub_home: tuple[Path, str], clock: ManualClock
) -> None:
    with busy_service.context.sessions.begin() as s:
        s.execute(update(db.AuditHead).values(signature=None, keyid=None))
    busy_service.close()
    reopened = HubService(load_hub_config(hub_home[0]), clock)  # restarts do not launder it
    try:
        p = reopened.audit_verify()["problem"]
        assert p["kind"] == "head" and "not signed" in p["detail"]
    finally:
        reopened.close()


def test_entries_appended_while_verify_reads_are_not_tampering(busy_service: HubService) -> None:
    """verify reads the chain in pages outside one transaction: appends that land between
    reading the head and the pages (or after them) must not read as insertions."""
    from modelfleet.hub.audit_chain import AuditChain

    chain = busy_service.audit_chain
    real_records = AuditChain._records

    def racing(self: AuditChain, upto: int | None):  # type: ignore[no-untyped-def]
        busy_service.add_device("cam-racing-1", "plant", [], actor="operator:olga")
        yield from real_records(self, upto)
        busy_service.add_device("cam-racing-2", "plant", [], actor="operator:olga")

    chain._records = racing.__get__(chain)  # type: ignore[method-assign]
    top = _last_seq(busy_service)
    report = chain.verify()
    assert report["ok"], report
    assert report["entries"] == top  # the walk stopped at the head it read first
    del chain._records
    assert busy_service.audit_verify()["entries"] == top + 2


def test_a_log_emptied_with_its_head_is_found_by_the_home_checkpoint(
    busy_service: HubService,
) -> None:
    assert busy_service.audit_verify()["ok"]
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditEntry))
        s.execute(delete(db.AuditHead))
    assert _problem(busy_service) == (1, "truncated")


def test_a_head_row_deleted_under_an_intact_chain_is_reported(busy_service: HubService) -> None:
    with busy_service.context.sessions.begin() as s:
        s.execute(delete(db.AuditHead))
    p = busy_service.audit_verify()["problem"]
    assert p["kind"] == "head" and "no head record" in p["detail"]
