"""Migrations: they build exactly the ORM's schema, are idempotent, and SQLite runs in WAL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from modelfleet.hub.db import Base, make_engine, migrate


def test_migrations_match_the_orm_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    migrate(url)
    migrate(url)  # a second run is a no-op
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == "0015"
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_packaged_migration_files_are_in_package_data() -> None:
    import tomllib

    import modelfleet.hub

    root = Path(modelfleet.hub.__file__).parent
    pyproject = tomllib.loads((root.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["modelfleet"]
    needed = {"hub/migrations/*.py", "hub/migrations/*.mako", "hub/migrations/versions/*.py"}
    # the migrations folder is not a package (no __init__.py): every file must be data
    assert needed <= set(patterns)
    assert (root / "migrations" / "env.py").is_file()
    assert (root / "migrations" / "script.py.mako").is_file()
    assert list((root / "migrations" / "versions").glob("0001_*.py"))
