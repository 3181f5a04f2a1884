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
