"""Suite-wide settings.

Under CI (``CI=true``) the PostgreSQL tests must run: a missing server is an error, not a
skip, so a broken install step cannot pass unnoticed.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") and not os.environ.get("MODELFLEET_TEST_PG_URL"):
        raise pytest.UsageError(
            "CI=true but MODELFLEET_TEST_PG_URL is unset: run the suite through "
            "`make test` (scripts/with-postgres.sh starts PostgreSQL)"
        )


#: Names whose presence in a test module means its tests start real processes.
_PROCESS_HELPERS = ("run_cli", "served_hub", "subprocess", "modelfleet_cmd")


def _order(item: pytest.Item) -> int:
    if item.get_closest_marker("slow") or item.get_closest_marker("e2e"):
        return 0
    module = getattr(item, "module", None)
    if module is not None and any(hasattr(module, name) for name in _PROCESS_HELPERS):
        return 1
    return 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test marked ``slow`` or ``e2e`` first, then modules that start real
    processes (the CLI, a hub), then the rest; each group in collected order, and the tests
    of a module always in their own order (a module fixture's state may carry from one test
    to the next).

    ``make test`` hands pytest-xdist workers one module at a time in this order (``--dist
    loadscope --no-loadscope-reorder``), so the long modules start early, side by side, and
    the quick ones fill the end, instead of one long module ending the run alone (``--dist
    load`` would send each worker a block of ~190 consecutive tests at the start: every slow
    one to the first worker).
    """
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        rank[module] = min(rank.get(module, 2), _order(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])
