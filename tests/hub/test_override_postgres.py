"""The override-rate layer (ADR 0040) on PostgreSQL: the same tests as on SQLite
(``test_override_states``: exactly-once roll-ups, concurrent ingest for one site, states,
events, gauges, retention), each against a fresh PostgreSQL database, so the
``ON CONFLICT DO UPDATE`` additions and ``FOR UPDATE`` state locks run on the database
production uses (needs MODELFLEET_TEST_PG_URL; ``scripts/with-postgres.sh`` starts one)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.clock import ManualClock
from modelfleet.hub.service import init_home
from tests.hub import test_override_states
from tests.pg import pg_database

pytestmark = pytest.mark.postgres

#: Fixtures that reach the hub's database.
_DATABASE_FIXTURES = frozenset({"service", "hub_home", "fleet"})


@pytest.fixture
def hub_home(tmp_path: Path, clock: ManualClock) -> Iterator[tuple[Path, str]]:
    """A hub home whose database is a fresh PostgreSQL database (overrides conftest's)."""
    with pg_database() as url:
        home = tmp_path / "hub"
        token = init_home(home, clock, database_url=url)
        yield home, token


for _name, _value in vars(test_override_states).items():
    if _name.startswith("test_") and callable(_value):
        if _DATABASE_FIXTURES & set(inspect.signature(_value).parameters):
            globals()[f"{_name}__pg"] = _value
    elif _name == "fleet":
        globals()[_name] = _value
