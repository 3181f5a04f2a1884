"""``modelfleet audit log|verify|export`` against a real ``hub serve`` (issue 8).

The database is tampered with directly (SQL on the hub's own database, SQLite or
PostgreSQL), as someone with database access but not the hub's keys would: an edited, an
inserted, a deleted entry and a cut-off tail are each found by ``audit verify`` and, in an
export, by ``scripts/verify_audit_chain.py`` (which never imports modelfleet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from modelfleet.audit.log import AuditRecord, entry_hash
from modelfleet.clock import ManualClock
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import init_home
from tests.cli_run import ServedHub, run_cli, served_hub
from tests.pg import pg_database

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parents[1] / "scripts" / "verify_audit_chain.py"
DEVICES = 12  # + the admin token's entry: 13 entries


@contextmanager
def _hub(tmp_path: Path, database_url: str | None) -> Iterator[tuple[ServedHub, Engine]]:
    home = tmp_path / "hub"
    init_home(home, ManualClock(datetime.now(UTC)), database_url=database_url)
    url = load_hub_config(home, {}).database_url
    engine = create_engine(url)
    try:
        with served_hub(home, tmp_path) as hub:
            headers = {"Authorization": f"Bearer {hub.token}"}
            for i in range(DEVICES):
                r = httpx.post(
                    f"{hub.url}/api/v1/devices",
                    json={"id": f"cam-{i}", "site": "plant-a" if i % 2 else "plant-b"},
                    headers=headers,
                )
                assert r.status_code == 201, r.text
            yield hub, engine
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hub_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServedHub, Engine]]:
    if request.param == "sqlite":
        with _hub(tmp_path, None) as pair:
            yield pair
    else:
        with pg_database() as url, _hub(tmp_path, url) as pair:
            yield pair


def _json(hub: ServedHub, *args: str) -> Any:
    done = run_cli(*args, "--json", env=hub.env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _narrow_cli(hub: ServedHub, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on a 40-column terminal: a message must still be one line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **hub.env(), "COLUMNS": "40"},
    )


def _verify(hub: ServedHub) -> tuple[int, dict[str, Any], str]:
    done = run_cli("audit", "verify", "--json", env=hub.env())
    return done.returncode, json.loads(done.stdout), done.stderr


# -- tampering, each undone after its check --------------------------------------------


def _rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(text("SELECT * FROM audit_log ORDER BY seq"))]


def _record(row: dict[str, Any]) -> AuditRecord:
    details = row["details"]
    details = json.loads(details) if isinstance(details, str) else details
    at = row["at"]  # a string from SQLite's raw rows, a datetime from PostgreSQL's
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return AuditRecord(
        row["seq"], at, row["actor"], row["action"], row["subject"], row["ticket"], details,
        row["prev_hash"], row["hash"],
    )  # fmt: skip


def _insert(engine: Engine, r: AuditRecord) -> None:
    at: Any = r.at
    if engine.dialect.name == "sqlite":  # as SQLAlchemy stores it there: naive UTC text
        at = r.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO audit_log (seq, at, actor, action, subject, ticket, details, "
                "prev_hash, hash) VALUES (:seq, :at, :actor, :action, :subject, :ticket, "
                ":details, :prev_hash, :hash)"
            ),
            {**r.to_dict(), "at": at, "details": json.dumps(r.details)},
        )


def _forge(seq: int, prev_hash: str, at: datetime) -> AuditRecord:
    r = AuditRecord(seq, at, "operator:mallory", "deploy", "iris/9", None, {}, prev_hash)
    return AuditRecord(**{**r.to_dict(), "at": at, "hash": entry_hash(r)})


def edit(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE audit_log SET actor = 'operator:mallory' WHERE seq = 5"))


def insert_at_end(engine: Engine) -> None:
    """A well-formed entry chained onto the last one (the hash rule is public)."""
    last = _record(_rows(engine)[-1])
    _insert(engine, _forge(last.seq + 1, last.hash, last.at))


def insert_in_middle(engine: Engine) -> None:
    """Entries 7.. moved up by one, each rehashed, and a forged entry 7 linked to 6."""
    rows = [_record(r) for r in _rows(engine)]
    with engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq >= 7"))
    forged = _forge(7, rows[5].hash, rows[5].at)
    _insert(engine, forged)
    prev = forged.hash
    for r in rows[6:]:
        moved = AuditRecord(r.seq + 1, r.at, r.actor, r.action, r.subject, r.ticket,
                            r.details, prev)  # fmt: skip
        moved = AuditRecord(**{**moved.to_dict(), "at": r.at, "hash": entry_hash(moved)})
        _insert(engine, moved)
        prev = moved.hash


def delete_middle(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 4"))


def truncate(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq > 10"))


def truncate_and_move_head(engine: Engine) -> None:
    """The tail cut off and the head row rewritten to match (no key: unsigned)."""
    truncate(engine)
    tenth = _record(_rows(engine)[-1])
    with engine.begin() as c:
        c.execute(
            text("UPDATE audit_head SET seq = 10, hash = :h, signature = NULL, keyid = NULL"),
            {"h": tenth.hash},
        )


TAMPERING: list[tuple[Callable[[Engine], None], int, str]] = [
    (edit, 5, "edited"),
    (insert_at_end, DEVICES + 2, "inserted"),
    (insert_in_middle, 13, "head"),  # every link rehashed: only the signed head disagrees
    (delete_middle, 4, "deleted"),
    (truncate, 11, "truncated"),
    (truncate_and_move_head, 10, "head"),
]


@contextmanager
def _restored(engine: Engine) -> Iterator[None]:
    rows = _rows(engine)
    with engine.connect() as c:
        head = dict(c.execute(text("SELECT * FROM audit_head")).one()._mapping)
    try:
        yield
    finally:
        with engine.begin() as c:
            c.execute(text("DELETE FROM audit_log"))
            c.execute(text("DELETE FROM audit_head"))
            for row in rows:
                details = row["details"]
                row = {
                    **row,
                    "details": details if isinstance(details, str) else json.dumps(details),
                }
                c.execute(
                    text(
                        "INSERT INTO audit_log (seq, at, actor, action, subject, ticket, "
                        "details, prev_hash, hash) VALUES (:seq, :at, :actor, :action, "
                        ":subject, :ticket, :details, :prev_hash, :hash)"
                    ),
                    row,
                )
            c.execute(
                text(
                    "INSERT INTO audit_head (id, seq, hash, at, keyid, signature) "
                    "VALUES (:id, :seq, :hash, :at, :keyid, :signature)"
                ),
                head,
            )


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    # -I: isolated, so the script cannot reach modelfleet through PYTHONPATH or the cwd.
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_every_kind_of_tampering_is_found_by_verify_and_by_the_export_script(
    hub_db: tuple[ServedHub, Engine], tmp_path: Path
) -> None:
    hub, engine = hub_db
    code, report, _ = _verify(hub)
    assert code == 0 and report["ok"], report
    assert report["entries"] == DEVICES + 1 and report["head"]["seq"] == DEVICES + 1
    plain = run_cli("audit", "verify", env=hub.env())
    assert plain.returncode == 0 and "intact" in plain.stdout
    clean = tmp_path / "clean.jsonl"
    assert run_cli("audit", "export", "--out", str(clean), env=hub.env()).returncode == 0
    assert _script(str(clean), "--keyid", report["keyid"][:16]).returncode == 0

    for tamper, seq, kind in TAMPERING:
        with _restored(engine):
            tamper(engine)
            code, report, _ = _verify(hub)
            assert code == 1, (tamper.__name__, report)
            assert report["problem"]["kind"] == kind, (tamper.__name__, report)
            assert report["problem"]["seq"] == seq, (tamper.__name__, report)
            shown = _narrow_cli(hub, "audit", "verify")
            assert shown.returncode == 1
            line = shown.stderr.strip()
            assert line.count("\n") == 0 and f"at entry {seq} ({kind})" in line, line
            assert "Traceback" not in shown.stderr
        code, report, _ = _verify(hub)
        assert code == 0, (tamper.__name__, "not restored", report)


def test_an_export_fails_the_script_on_edit_insert_delete_and_truncation(
    hub_db: tuple[ServedHub, Engine], tmp_path: Path
) -> None:
    hub, _ = hub_db
    out = tmp_path / "audit.jsonl"
    done = run_cli("audit", "export", "--out", str(out), "--json", env=hub.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries"] == DEVICES + 1
    ok = _script(str(out))
    assert ok.returncode == 0, ok.stderr
    assert "signature: valid" in ok.stdout and "not pinned" in ok.stdout
    header, *entries = out.read_text().splitlines()

    def variant(name: str, lines: list[str]) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join([header, *lines]) + "\n")
        return str(path)

    edited = json.loads(entries[4])
    edited["actor"] = "operator:mallory"
    forged = _forge(DEVICES + 2, json.loads(entries[-1])["hash"], datetime.now(UTC))
    cases = {
        "edited": ([*entries[:4], json.dumps(edited), *entries[5:]], "entry 5: edited"),
        "inserted": ([*entries, json.dumps(forged.to_dict())], f"entry {DEVICES + 2}: inserted"),
        "deleted": (entries[:3] + entries[4:], "entry 4: deleted"),
        "truncated": (entries[:10], "entry 11: truncated"),
    }
    for name, (lines, message) in cases.items():
        done = _script(variant(name, lines))
        assert done.returncode == 1, (name, done.stdout)
        assert message in done.stderr, (name, done.stderr)

    # A forged header (other head, signature kept) and a pinned key that is not the hub's.
    doc = json.loads(header)
    doc["checkpoint"]["seq"], doc["checkpoint"]["hash"] = 10, json.loads(entries[9])["hash"]
    cut = tmp_path / "forged-head.jsonl"
    cut.write_text("\n".join([json.dumps(doc), *entries[:10]]) + "\n")
    done = _script(str(cut))
    assert done.returncode == 1 and "signature does not verify" in done.stderr
    assert _script(str(out), "--keyid", "00ff").returncode == 1
    # A hub whose database was put back: its own checkpoint (in the header) is ahead.
    doc = json.loads(header)
    doc["witness"] = {**doc["checkpoint"], "seq": DEVICES + 5}
    behind = tmp_path / "behind.jsonl"
    behind.write_text("\n".join([json.dumps(doc), *entries]) + "\n")
    done = _script(str(behind))
    assert done.returncode == 1 and "the hub's checkpoint names" in done.stderr, done.stderr
    # An earlier export as the checkpoint: the later one must still hold its head.
    assert _script(str(out), "--checkpoint", str(out)).returncode == 0
    assert _script(variant("short", entries[:10]), "--checkpoint", str(out)).returncode == 1
    unreadable = _script(str(tmp_path / "missing.jsonl"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr


def test_log_pages_newest_first_with_a_cursor_and_filters(
    hub_db: tuple[ServedHub, Engine],
) -> None:
    hub, _ = hub_db
    first = _json(hub, "audit", "log", "--limit", "5")
    seqs = [e["seq"] for e in first["entries"]]
    assert seqs == list(range(DEVICES + 1, DEVICES - 4, -1))
    assert first["next_before_seq"] == seqs[-1]
    seen = list(seqs)
    cursor = first["next_before_seq"]
    while cursor is not None:
        page = _json(hub, "audit", "log", "--limit", "5", "--before", str(cursor))
        seen += [e["seq"] for e in page["entries"]]
        cursor = page["next_before_seq"]
    assert seen == list(range(DEVICES + 1, 0, -1))  # every entry once, oldest last

    table = run_cli("audit", "log", "--limit", "3", env=hub.env())
    assert table.returncode == 0 and f"--before {DEVICES - 1}" in table.stdout

    by_subject = _json(hub, "audit", "log", "--subject", "cam-3")["entries"]
    assert [(e["action"], e["subject"]) for e in by_subject] == [("device.add", "cam-3")]
    by_action = _json(hub, "audit", "log", "--action", "token.create")["entries"]
    assert [e["seq"] for e in by_action] == [1]
    assert _json(hub, "audit", "log", "--actor", "nobody")["entries"] == []
    recent = _json(hub, "audit", "log", "--since", "1h", "--limit", "100")["entries"]
    assert len(recent) == DEVICES + 1
    assert _json(hub, "audit", "log", "--since", "2999-01-01T00:00:00Z")["entries"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("audit", "log", "--since", "yesterday"), "--since 'yesterday'"),
        (("audit", "log", "--limit", "0"), "--limit"),
        (("audit", "log", "--before", "x"), "--before"),
        (("audit", "export"), "--out"),
        (("audit", "frobnicate"), "frobnicate"),
    ],
)
def test_wrong_usage_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    done = run_cli(*args, env={"MODELFLEET_HUB": "http://127.0.0.1:9", "MODELFLEET_TOKEN": "t"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
