"""The drift roll-ups, review queue and webhooks of issue 9 on PostgreSQL: the same tests as
on SQLite (``test_drift_hub``, ``test_review_queue``, ``test_webhooks``), run here against a
fresh PostgreSQL database each, so the ``ON CONFLICT`` upserts, ``FOR UPDATE`` row locks and
claim transactions are exercised on the database production runs (needs
MODELFLEET_TEST_PG_URL; ``make test`` starts a server)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.clock import ManualClock
from modelfleet.hub.service import init_home
from tests.hub import test_drift_hub, test_review_queue, test_webhooks
from tests.pg import pg_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def hub_home(tmp_path: Path, clock: ManualClock) -> Iterator[tuple[Path, str]]:
    """A hub home whose database is a fresh PostgreSQL database (overrides conftest's)."""
    with pg_database() as url:
        home = tmp_path / "hub"
        token = init_home(home, clock, database_url=url)
        yield home, token


#: Fixtures that reach the hub's database; tests without one (pure functions) stay on SQLite.
_DATABASE_FIXTURES = frozenset({"service", "svc", "hub_home", "http", "fleet"})


def _adopt(module: Any) -> None:
    """Collect ``module``'s database tests and its fixtures here, so they run on PostgreSQL."""
    for name, value in vars(module).items():
        if name.startswith("test_") and callable(value):
            if _DATABASE_FIXTURES & set(inspect.signature(value).parameters):
                globals()[f"{name}__pg"] = value
        elif hasattr(value, "_fixture_function_marker") or type(value).__name__ == (
            "FixtureFunctionDefinition"
        ):
            globals()[name] = value


for _module in (test_drift_hub, test_review_queue, test_webhooks):
    _adopt(_module)
