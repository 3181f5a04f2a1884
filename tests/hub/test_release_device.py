"""Issue 10 end to end in process: the hub app, and a device's python-tuf client over it.

One release signature of two is not enough for the device; two are. Revoking the version
takes it out of what the device can install at its next refresh.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from securesystemslib.signer import CryptoSigner

from modelfleet.clock import ManualClock
from modelfleet.errors import ArtefactVerificationError
from modelfleet.hub import deployments
from modelfleet.hub.service import HubService
from modelfleet.trust import DeviceTrustClient
from modelfleet.trust.release import sign_release
from tests.hub.test_tuf_versions import _TestClientFetcher


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))  # python-tuf checks expiry on the system clock


def _approve(service: HubService, signer: CryptoSigner) -> dict[str, object]:
    signed = base64.b64decode(str(service.approvals.request("iris", 1)["signed"]))
    sig = sign_release(signer, signed)
    return service.approvals.approve("iris", 1, sig.keyid, sig.signature, "approver:ann")


def test_the_device_installs_only_at_the_threshold_and_refuses_after_revocation(
    service: HubService,
    http: TestClient,
    tmp_path: Path,
    onnx_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    signers = [CryptoSigner(k) for k in keys]
    for i, k in enumerate(keys):  # the hub gets the public halves only
        pem = k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        service.approvals.add_key(pem, f"k{i}", "admin:admin")
    _, token = service.add_device("cam-1", actor="admin:admin")
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.set_model_safety("iris", True, actor="admin:admin")
    # The hub refuses to assign a version awaiting approval (409); the device must refuse it
    # on its own too (an assignment from before that check, a hub that is lied to).
    monkeypatch.setattr(deployments, "refuse_unapproved", lambda *a: None)
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    monkeypatch.undo()
    device = DeviceTrustClient(
        tmp_path / "cache",
        str(http.base_url),
        token,
        service.trust_root(),
        fetcher=_TestClientFetcher(http, token),
    )
    v = service.get_version("iris", 1)

    def install() -> Path:
        device.fetch_desired_state("cam-1")
        return device.fetch_package_file(v["model_path"], v["sha256"], v["length"], tmp_path / "m")

    assert _approve(service, signers[0])["installable"] is False
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        install()
    assert _approve(service, signers[1])["installable"] is True
    assert install().read_bytes() == onnx_bytes

    service.revoke_version("iris", 1, actor="admin:admin", reason="recall", ticket="SEC-2")
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        install()
    assert device.catalog_lists(v["model_path"], v["sha256"]) is False
