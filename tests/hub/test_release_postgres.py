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
from modelfleet.errors import ConflictError
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


def test_a_pending_version_is_refused_and_a_removed_key_recounts_on_postgres(
    tmp_path: Path, onnx_bytes: bytes
) -> None:
    with pg_database() as url:
        clock = ManualClock()
        home = tmp_path / "hub"
        init_home(home, clock, database_url=url)
        service = HubService(load_hub_config(home), clock)
        try:
            service.add_device("cam-1", actor="admin:admin")
            keys = [Ed25519PrivateKey.generate() for _ in range(3)]
            for i, k in enumerate(keys):
                pem = k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
                service.approvals.add_key(pem, f"k{i}", "admin:admin")
            service.register_version("iris", onnx_bytes, actor="admin:admin")
            service.set_model_safety("iris", True, actor="admin:admin")
            signed = base64.b64decode(str(service.approvals.request("iris", 1)["signed"]))
            sig = sign_release(CryptoSigner(keys[0]), signed)
            service.approvals.approve("iris", 1, sig.keyid, sig.signature, "approver:ann")
            with pytest.raises(ConflictError, match="1 of 2 release signatures"):
                service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
            out = service.approvals.remove_key(sig.keyid, "admin:admin")
            assert out["recounted"] == [{"version": "iris/1", "signatures": 0, "threshold": 2}]
            with pytest.raises(ConflictError, match=r"iris/1 \(needs 2\) could never be"):
                service.approvals.remove_key(CryptoSigner(keys[1]).public_key.keyid, "admin:admin")
            assert len(service.approvals.list_keys()) == 2
        finally:
            service.close()
