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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` or ``e2e`` first, in their collected order: on pytest-xdist
    workers (``make test``) the long ones then start early, side by side, and the quick
    ones fill the end, instead of one long test ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None
               and item.get_closest_marker("e2e") is None)  # fmt: skip
