"""Device credentials on PostgreSQL (issue 10): migration 0011 matches the ORM, and the
enrol → check-in → rotate → revoke → decommission path works there (needs
MODELFLEET_TEST_PG_URL; ``bash scripts/with-postgres.sh pytest …``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.db import Base, make_engine
from modelfleet.hub.service import HubService, init_home
from tests.hub._support import auth
from tests.pg import pg_database

pytestmark = pytest.mark.postgres

REPORT = {"applied_serial": 0, "models": {}, "rollbacks": [], "last_check": "t"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


def test_credentials_lifecycle_on_postgres(pg_url: str, tmp_path: Path) -> None:
    clock = ManualClock()
    home = tmp_path / "hub"
    admin = init_home(home, clock, database_url=pg_url)
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
    service = HubService(load_hub_config(home), clock)
    try:
        with TestClient(build_hub_app(service, refresh_interval_s=0)) as http:
            boot = http.post(
                "/api/v1/devices/cam-1/bootstrap-tokens", json={"site": "p"}, headers=auth(admin)
            ).json()
            cred = http.post("/api/v1/enrol", json={}, headers=auth(boot["token"])).json()
            token = cred["token"]
            for last in ("a", "b"):  # the second is the not-modified path: one query
                r = http.post("/api/v1/devices/cam-1/report", json={**REPORT, "last_check": last},
                              headers=auth(token))  # fmt: skip
                assert r.status_code == 200, r.text
            new = http.post("/api/v1/devices/cam-1/credentials/rotate", headers=auth(token))
            assert new.status_code == 200, new.text
            for t in (token, new.json()["token"]):
                assert http.post("/api/v1/devices/cam-1/report", json=REPORT,
                                 headers=auth(t)).status_code == 200  # fmt: skip
            assert http.post("/api/v1/devices/cam-1/decommission", json={},
                             headers=auth(admin)).status_code == 200  # fmt: skip
            refused = http.post("/api/v1/devices/cam-1/report", json=REPORT,
                                headers=auth(new.json()["token"]))  # fmt: skip
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    finally:
        service.close()
