"""A throw-away PostgreSQL database for tests (needs MODELFLEET_TEST_PG_URL)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def pg_database() -> Iterator[str]:
    """The URL of a fresh database on the test server, dropped afterwards (skips the
    test when no server is configured)."""
    base = os.environ.get("MODELFLEET_TEST_PG_URL")
    if not base:
        pytest.skip("MODELFLEET_TEST_PG_URL is not set")
    name = f"modelfleet_api_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
