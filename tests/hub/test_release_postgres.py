"""Release approvals and revocation on PostgreSQL (issue 10; needs MODELFLEET_TEST_PG_URL):
migration 0012 matches the ORM, a threshold approval and a revocation with fallback."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from securesystemslib.signer import CryptoSigner

from modelfleet.clock import ManualClock
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.db import Base, make_engine
from modelfleet.hub.service import HubService, init_home
from modelfleet.trust.release import sign_release
from tests.pg import pg_database

pytestmark = pytest.mark.postgres


def test_approve_and_revoke_on_postgres(
    tmp_path: Path, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    with pg_database() as url:
        clock = ManualClock()
        home = tmp_path / "hub"
        init_home(home, clock, database_url=url)
        service = HubService(load_hub_config(home), clock)
        try:
            engine = make_engine(url)
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                assert compare_metadata(ctx, Base.metadata) == []
            engine.dispose()
            service.add_device("cam-1", actor="admin:admin")
            service.register_version("iris", onnx_bytes, actor="admin:admin")
            service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
            key = Ed25519PrivateKey.generate()
            pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            service.approvals.add_key(pem, "ann", "admin:admin")
            service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
            signed = base64.b64decode(str(service.approvals.request("iris", 2)["signed"]))
            sig = sign_release(CryptoSigner(key), signed)
            out = service.approvals.approve("iris", 2, sig.keyid, sig.signature, "approver:ann")
            assert out["installable"] is True
            service.deploy("iris", 2, ["cam-1"], actor="admin:admin")
            result = service.revoke_version("iris", 2, actor="admin:admin", reason="recall")
            assert result["fallback"]["moved"]["cam-1"]["to"]["production"] == 1
            assert service.trust.delegated_releases() == []
        finally:
            service.close()
