"""Release approvals and revocation at the hub (issue 10, ADR 0027).

The approver's private key never reaches the hub: these tests sign the canonical bytes
the hub hands out locally, as ``modelfleet approve`` does, and post the signature only.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from securesystemslib.signer import CryptoSigner
from sqlalchemy import select

from modelfleet.errors import ConflictError, InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.hub.revocation import Fallback, fall_back
from modelfleet.hub.service import HubService
from modelfleet.rollout.assignment import Slots
from modelfleet.rollout.desired_state import Mode, model_target_path
from modelfleet.trust.release import release_role_name, sign_release
from tests.hub._rollouts import plan
from tests.hub._support import auth, register

Approver = tuple[CryptoSigner, str]


def _approver(http: TestClient, admin: str, label: str) -> CryptoSigner:
    private = Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    r = http.post(
        "/api/v1/release-keys",
        json={"public_key": pem.decode(), "label": label},
        headers=auth(admin),
    )
    assert r.status_code == 201, r.text
    signer = CryptoSigner(private)
    assert r.json()["keyid"] == signer.public_key.keyid
    return signer


def _sign(http: TestClient, token: str, signer: CryptoSigner, version: int) -> Any:
    got = http.get(f"/api/v1/models/iris/versions/{version}/release", headers=auth(token))
    assert got.status_code == 200, got.text
    sig = sign_release(signer, base64.b64decode(got.json()["signed"]))
    return http.post(
        f"/api/v1/models/iris/versions/{version}/release/signatures",
        json={"keyid": sig.keyid, "sig": sig.signature},
        headers=auth(token),
    )


def _listed(service: HubService, version: int) -> bool:
    return (
        service.trust.repository("catalog").target(model_target_path("iris", version)) is not None
    )


def _deploy(http: TestClient, token: str, version: int, devices: list[str]) -> None:
    r = http.post(
        "/api/v1/deployments",
        json={"model": "iris", "version": version, "devices": devices},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text


@pytest.fixture
def approvers(http: TestClient, admin_token: str) -> list[CryptoSigner]:
    return [_approver(http, admin_token, f"approver-{i}") for i in range(3)]


@pytest.fixture
def approver_token(service: HubService) -> str:
    return service.create_token("approver", "ann", actor="admin:admin")


def test_safety_classified_version_needs_two_release_signatures_and_one_is_not_enough(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.set_model_safety("iris", True, actor="admin:admin")
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    r = http.post(
        "/api/v1/deployments",
        json={"model": "iris", "version": 1, "devices": ["cam-1"]},
        headers=auth(admin_token),
    )  # the hub refuses to name a version its catalog does not list
    assert r.status_code == 409 and "0 of 2 release signatures" in r.json()["error"]
    assert not _listed(service, 1)

    one = _sign(http, approver_token, approvers[0], 1)
    assert one.status_code == 200, one.text
    assert (one.json()["state"], one.json()["threshold"], one.json()["installable"]) == (
        "pending",
        2,
        False,
    )
    assert not _listed(service, 1)

    two = _sign(http, approver_token, approvers[1], 1)
    assert (two.json()["state"], two.json()["installable"]) == ("approved", True)
    assert _listed(service, 1)
    assert service.trust.delegated_releases() == [release_role_name("iris", 1)]
    actions = [e["action"] for e in service.audit(limit=1000)]
    assert actions.count("release.sign") == 2 and actions.count("release.approve") == 1


def test_an_ordinary_model_needs_one_release_signature(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    r = _sign(http, approver_token, approvers[2], 1)
    assert r.json()["state"] == "approved" and _listed(service, 1)


@pytest.mark.parametrize("case", ["other bytes", "unknown key", "garbage"])
def test_a_bad_release_signature_is_refused_and_nothing_is_listed(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
    case: str,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    signer = approvers[0]
    if case == "other bytes":
        sig = sign_release(signer, b"{}")
        body = {"keyid": sig.keyid, "sig": sig.signature}
    elif case == "unknown key":
        stranger = CryptoSigner(Ed25519PrivateKey.generate())
        sig = sign_release(stranger, b"{}")
        body = {"keyid": sig.keyid, "sig": sig.signature}
    else:
        body = {"keyid": signer.public_key.keyid, "sig": "zz"}
    r = http.post(
        "/api/v1/models/iris/versions/1/release/signatures",
        json=body,
        headers=auth(approver_token),
    )
    assert r.status_code == 400, r.text
    assert not _listed(service, 1)
    assert "release.sign" not in [e["action"] for e in service.audit(limit=1000)]


def test_only_approvers_post_release_signatures_and_only_admins_add_keys(
    http: TestClient,
    tokens: dict[str, str],
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, tokens["admin"], "iris", onnx_bytes)
    assert _sign(http, tokens["publisher"], approvers[0], 1).status_code == 403
    r = http.post(
        "/api/v1/release-keys", json={"public_key": "x"}, headers=auth(tokens["publisher"])
    )
    assert r.status_code == 403
    r = http.post(
        "/api/v1/release-keys", json={"public_key": "not pem"}, headers=auth(tokens["admin"])
    )
    assert r.status_code == 400


def test_a_version_published_before_release_keys_needs_no_signature(
    http: TestClient, admin_token: str, service: HubService, onnx_bytes: bytes
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    service.add_device("cam-2", "plant", [], actor="admin:admin")
    _deploy(http, admin_token, 1, ["cam-1"])
    _approver(http, admin_token, "late")
    assert _listed(service, 1)  # still listed by the hub's own targets key
    _deploy(http, admin_token, 1, ["cam-2"])  # and still deployable
    r = http.get("/api/v1/models/iris/versions/1/release", headers=auth(admin_token))
    assert r.status_code == 400 and "needs no release signatures" in r.json()["error"]


def test_adding_the_first_release_key_gates_unpublished_versions(
    http: TestClient, admin_token: str, service: HubService, onnx_bytes: bytes
) -> None:
    register(http, admin_token, "iris", onnx_bytes)  # before any key, never deployed
    r = http.post(
        "/api/v1/release-keys",
        json={
            "public_key": Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        },
        headers=auth(admin_token),
    )
    assert r.json()["gated"] == ["iris/1"]
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    with pytest.raises(ConflictError, match="awaits release approval"):
        service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    assert not _listed(service, 1)


def test_an_approval_a_crash_left_unsigned_is_signed_at_start_up(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    monkeypatch.setattr(service.approvals, "publish", list)  # "crash" after the commit
    assert _sign(http, approver_token, approvers[0], 1).json()["state"] == "approved"
    assert not _listed(service, 1)
    monkeypatch.undo()
    again = HubService(service.config, service.clock)
    try:
        assert _listed(again, 1)
    finally:
        again.close()


# -- the hub refuses to assign a version awaiting approval --------------------------------


def _plan(version: int, **over: Any) -> dict[str, Any]:
    return plan(version=version, stages=[{"name": "all", "percent": 100, "soak": 0}], **over)


def test_a_deploy_of_a_pending_version_is_refused_until_the_threshold_and_audits_nothing(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.set_model_safety("iris", True, actor="admin:admin")
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    _sign(http, approver_token, approvers[0], 1)
    before = len(service.audit(limit=1000))
    with pytest.raises(ConflictError) as refused:
        service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    assert str(refused.value) == (
        "iris v1 awaits release approval: 1 of 2 release signatures "
        "(`modelfleet approve iris 1 --key FILE`)"
    )
    assert len(service.audit(limit=1000)) == before  # a refusal writes nothing
    assert service.get_device("cam-1")["assignments"] == []
    _sign(http, approver_token, approvers[1], 1)
    _deploy(http, admin_token, 1, ["cam-1"])
    assert service.get_device("cam-1")["assignments"][0]["production"] == 1


def test_a_rollout_of_a_pending_version_is_refused(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    r = http.post("/api/v1/rollouts", json=_plan(1), headers=auth(admin_token))
    assert r.status_code == 409, r.text
    assert "iris v1 awaits release approval: 0 of 1" in r.json()["error"]
    assert service.list_rollouts() == []
    _sign(http, approver_token, approvers[0], 1)
    r = http.post("/api/v1/rollouts", json=_plan(1), headers=auth(admin_token))
    assert r.status_code == 201, r.text


def test_a_rollout_created_before_the_first_release_key_does_not_start_its_stage(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)  # unpublished, no key yet
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    service.set_model_safety("iris", True, actor="admin:admin")
    doc = _plan(1, change={"ticket": "CH-1"})
    created = http.post("/api/v1/rollouts", json=doc, headers=auth(admin_token))
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "awaiting_approval"
    _approver(http, admin_token, "late")  # gates iris/1
    rollout_id = created.json()["id"]
    r = http.post(f"/api/v1/rollouts/{rollout_id}/approve", headers=auth(approver_token))
    assert r.status_code == 200, r.text
    ticked = service.controller.tick()
    assert ticked == [
        {
            "rollout_id": rollout_id,
            "error": "iris v1 awaits release approval: 0 of 2 release signatures "
            "(`modelfleet approve iris 1 --key FILE`)",
        }
    ]
    assert service.get_device("cam-1")["assignments"] == []


def test_a_rollback_onto_a_listed_version_and_a_pre_key_version_stay_allowed(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> None:
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    register(http, admin_token, "iris", onnx_bytes)
    _sign(http, approver_token, approvers[0], 1)
    _deploy(http, admin_token, 1, ["cam-1"])
    register(http, admin_token, "iris", onnx_bytes_v2)
    _sign(http, approver_token, approvers[0], 2)
    _deploy(http, admin_token, 2, ["cam-1"])
    service.rollback("iris", ["cam-1"], actor="admin:admin")  # back onto approved v1
    assert service.get_device("cam-1")["assignments"][0]["production"] == 1


def test_a_rollback_onto_a_version_awaiting_approval_is_refused_with_409_and_changes_nothing(
    http: TestClient, admin_token: str, service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    register(http, admin_token, "iris", onnx_bytes)  # v1: before any key, never deployed
    register(http, admin_token, "iris", onnx_bytes_v2)
    _deploy(http, admin_token, 2, ["cam-1"])
    r = http.post(
        "/api/v1/release-keys",
        json={
            "public_key": Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        },
        headers=auth(admin_token),
    )
    assert r.json()["gated"] == ["iris/1"]
    # No API path assigns a pending version (each refuses it), so cam-1's slot naming v1
    # as its previous version is written here, as an assignment older than the gate holds.
    with service.context.write() as s:
        (a,) = s.scalars(select(db.Assignment).where(db.Assignment.device_id == "cam-1"))
        a.previous_version = 1
    before = len(service.audit(limit=1000))
    r = http.post(
        "/api/v1/rollbacks", json={"model": "iris", "devices": ["cam-1"]}, headers=auth(admin_token)
    )
    assert r.status_code == 409, r.text
    assert "iris v1 awaits release approval: 0 of 1 release signatures" in r.json()["error"]
    assert service.get_device("cam-1")["assignments"][0]["production"] == 2
    assert len(service.audit(limit=1000)) == before
    assert not _listed(service, 1)


# -- removing a release key ---------------------------------------------------------------


def test_a_removed_release_key_signs_nothing_more_and_pending_requests_recount(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.set_model_safety("iris", True, actor="admin:admin")
    _sign(http, approver_token, approvers[0], 1)
    _sign(http, approver_token, approvers[1], 1)  # v1 approved by keys 0 and 1
    assert _listed(service, 1)
    register(http, admin_token, "iris", onnx_bytes_v2)
    _sign(http, approver_token, approvers[0], 2)  # v2: 1 of 2
    gone = approvers[0].public_key.keyid
    r = http.delete(f"/api/v1/release-keys/{gone}", headers=auth(approver_token))
    assert r.status_code == 403
    r = http.delete(f"/api/v1/release-keys/{gone}", headers=auth(admin_token))
    assert r.status_code == 200, r.text
    assert r.json()["recounted"] == [{"version": "iris/2", "signatures": 0, "threshold": 2}]
    assert r.json()["keys_left"] == 2
    assert _listed(service, 1)  # approved stays approved, its delegation untouched
    assert service.approvals.request("iris", 1)["state"] == "approved"
    assert service.approvals.request("iris", 2)["signatures"] == []
    again = _sign(http, approver_token, approvers[0], 2)
    assert again.status_code == 400 and "not registered" in again.json()["error"]
    entry = [e for e in service.audit(limit=1000) if e["action"] == "release-key.remove"][-1]
    assert (entry["actor"], entry["subject"]) == ("admin:admin", gone)
    with pytest.raises(ConflictError, match="0 of 2 release signatures"):
        service.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    assert http.delete(f"/api/v1/release-keys/{gone}", headers=auth(admin_token)).status_code == 404


def test_removing_keys_below_a_pending_threshold_is_refused(
    http: TestClient,
    admin_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.set_model_safety("iris", True, actor="admin:admin")  # needs 2 of the 3 keys
    service.approvals.remove_key(approvers[0].public_key.keyid, "admin:admin")
    with pytest.raises(ConflictError, match=r"iris/1 \(needs 2\) could never be approved"):
        service.approvals.remove_key(approvers[1].public_key.keyid, "admin:admin")
    assert len(service.approvals.list_keys()) == 2
    service.revoke_version("iris", 1, actor="admin:admin", reason="withdrawn")
    for signer in approvers[1:]:  # nothing pending: the last key may go
        service.approvals.remove_key(signer.public_key.keyid, "admin:admin")
    assert service.approvals.list_keys() == []
    with pytest.raises(NotFoundError):
        service.approvals.remove_key("nope", "admin:admin")
    with pytest.raises(InvalidInputError, match="revoked"):
        service.deploy("iris", 1, ["cam-1"], actor="admin:admin")


# -- revocation ---------------------------------------------------------------------------


def test_revocation_moves_devices_back_to_their_previous_version_and_is_audited(
    http: TestClient,
    admin_token: str,
    service: HubService,
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    register(http, admin_token, "iris", onnx_bytes_v2)
    for d in ("cam-1", "cam-2"):
        service.add_device(d, "plant", [], actor="admin:admin")
    _deploy(http, admin_token, 1, ["cam-1", "cam-2"])
    _deploy(http, admin_token, 2, ["cam-1"])  # cam-1: 2 with 1 pinned as previous
    _deploy(http, admin_token, 2, ["cam-2"])
    r = http.post(
        "/api/v1/models/iris/versions/2/revoke",
        json={"ticket": "SEC-1", "reason": "bad calibration"},
        headers=auth(admin_token),
    )
    assert r.status_code == 200, r.text
    fb = r.json()["fallback"]
    assert fb["stranded"] == []
    assert {d: m["to"]["production"] for d, m in fb["moved"].items()} == {"cam-1": 1, "cam-2": 1}
    assert not _listed(service, 2) and _listed(service, 1)
    for d in ("cam-1", "cam-2"):
        a = service.get_device(d)["assignments"][0]
        assert (a["production"], a["previous"]) == (1, None)
    entry = [e for e in service.audit(limit=1000) if e["action"] == "model.revoke"][-1]
    assert entry["ticket"] == "SEC-1" and entry["details"]["reason"] == "bad calibration"
    assert sorted(entry["details"]["moved"]) == ["cam-1", "cam-2"]


def test_revoking_the_only_version_strands_the_device_and_says_so(
    http: TestClient, admin_token: str, service: HubService, onnx_bytes: bytes
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    _deploy(http, admin_token, 1, ["cam-1"])
    out = service.revoke_version("iris", 1, actor="admin:admin", reason="recall")
    assert out["fallback"] == {"moved": {}, "stranded": ["cam-1"], "aborted_rollouts": []}
    assert not _listed(service, 1)


def test_revoking_an_approved_release_removes_its_delegation(
    http: TestClient,
    admin_token: str,
    approver_token: str,
    service: HubService,
    approvers: list[CryptoSigner],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    _sign(http, approver_token, approvers[0], 1)
    assert _listed(service, 1)
    service.revoke_version("iris", 1, actor="admin:admin", reason="recall")
    assert not _listed(service, 1) and service.trust.delegated_releases() == []
    r = _sign(http, approver_token, approvers[1], 1)
    assert r.status_code == 400 and "revoked" in r.json()["error"]


@pytest.mark.parametrize(
    ("slots", "revoked", "after", "outcome"),
    [
        (Slots(2, None, 1), {2}, Slots(1, None, None), Fallback.PREVIOUS),
        (Slots(1, 2, None, Mode.SPLIT, 0.1), {2}, Slots(1, None, None), Fallback.CANDIDATE_DROPPED),
        (Slots(2, 3, 1, Mode.SHADOW, 0.1), {2}, Slots(1, None, None), Fallback.PREVIOUS),
        (Slots(2, None, 1), {1, 2}, Slots(2, None, None), Fallback.STRANDED),
        (Slots(2, None, None), {2}, Slots(2, None, None), Fallback.STRANDED),
        (Slots(3, None, 2), {2}, Slots(3, None, None), Fallback.NONE),
    ],
    ids=["to-previous", "drop-candidate", "drop-then-back", "previous-revoked", "no-previous",
         "forget-revoked-previous"],
)  # fmt: skip
def test_fall_back_follows_the_rollback_rule(
    slots: Slots[int], revoked: set[int], after: Slots[int], outcome: Fallback
) -> None:
    assert fall_back(slots, revoked) == (after, outcome)


def test_registration_signs_the_package_target_into_the_manifest(
    http: TestClient, admin_token: str, service: HubService, onnx_bytes: bytes
) -> None:
    up = http.post("/api/v1/blobs", content=onnx_bytes, headers=auth(admin_token)).json()
    body = {"blob": up["sha256"], "target": {"hardware": ["arm64"], "execution_providers": []}}
    r = http.post("/api/v1/models/iris/versions", json=body, headers=auth(admin_token))
    assert r.status_code == 201, r.text
    manifest = json.loads(service.manifest_bytes("iris", 1))
    assert manifest["target"] == {"hardware": ["arm64"], "execution_providers": []}
    body["target"] = {"hardware": ["no spaces allowed"]}
    r = http.post("/api/v1/models/iris/versions", json=body, headers=auth(admin_token))
    assert r.status_code == 400 and "target.hardware" in r.json()["error"]
