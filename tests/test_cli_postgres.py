"""The hub on PostgreSQL from the CLI (issue 6, defect 2).

``modelfleet init`` ignored ``MODELFLEET_DATABASE_URL`` and wrote SQLite; ``hub serve`` with
the variable set then answered 401 to everything (the admin token lived in the SQLite file).
Runs against the PostgreSQL that ``scripts/with-postgres.sh`` starts (MODELFLEET_TEST_PG_URL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_run import run_cli, served_hub
from tests.pg import pg_database

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    with pg_database(empty=True) as url:
        yield url


@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_init_on_postgres_then_serve_enroll_and_list_without_401(
    pg_url: str, tmp_path: Path, given_by: str
) -> None:
    home = tmp_path / "hub"
    if given_by == "option":
        init = run_cli("init", str(home), "--database-url", pg_url, "--json")
        serve_env: dict[str, str] = {}
    else:  # the walkthrough's way: the variable set for both commands
        serve_env = {"MODELFLEET_DATABASE_URL": pg_url}
        init = run_cli("init", str(home), "--json", env=serve_env)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["admin_token"]
    from modelfleet.hub.config import load_hub_config

    # What config.toml says, with no environment to override it.
    assert load_hub_config(home, {}).database_url == pg_url
    assert not (home / "hub.db").exists(), "init wrote SQLite anyway"

    with served_hub(home, tmp_path, env=serve_env) as hub:
        added = run_cli("device", "add", "cam-1", "--site", "plant", "--json", env=hub.env())
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["token"]
        listed = run_cli("device", "list", "--json", env=hub.env())
        assert listed.returncode == 0, listed.stderr
        assert [d["id"] for d in json.loads(listed.stdout)] == ["cam-1"]
