"""Return bundles on PostgreSQL (issue 11; needs MODELFLEET_TEST_PG_URL): migration 0013
matches the ORM, and a bundle ingested twice stores its records once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from modelfleet.agent.return_report import collect_device
from modelfleet.clock import ManualClock
from modelfleet.delivery.return_bundle import pack_bundle
from modelfleet.hub import db
from modelfleet.hub.bundle_ingest import ReturnIngest
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.db import Base, make_engine
from modelfleet.hub.service import HubService, init_home
from tests.delivery._return_site import T0, enrol, make_device
from tests.pg import pg_database

pytestmark = pytest.mark.postgres


def test_return_bundle_exactly_once_on_postgres(tmp_path: Path) -> None:
    with pg_database() as url:
        clock = ManualClock(T0 + timedelta(days=1))
        home = tmp_path / "hub"
        init_home(home, clock, database_url=url)
        service = HubService(load_hub_config(home), clock)
        try:
            engine = make_engine(url)
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                assert compare_metadata(ctx, Base.metadata) == []
            engine.dispose()
            devices = [make_device(tmp_path / "site", f"edge-{i}", windows=3) for i in range(2)]
            for d in devices:
                enrol(service, d)
            at = T0 + timedelta(hours=1)
            envs = [collect_device(d.state_dir, "plant-7", at).envelope for d in devices]
            data = pack_bundle(envs, "plant-7", at)
            first = ReturnIngest(service).ingest(data, "admin:test")
            second = ReturnIngest(service).ingest(data, "admin:test")
            assert first["stored"] == 2 * 5 and second["status"] == "already_ingested"
            with service.context.read() as s:
                n = s.scalar(select(func.count()).select_from(db.TelemetryRecord))
            assert n == 10
        finally:
            service.close()
