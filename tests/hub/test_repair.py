"""Sign after commit, in-process: what a commit left unsigned is signed by the next signing
or the next start-up, and a signer never signs an older state over a newer one."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.clock import ManualClock
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from modelfleet.rollout.desired_state import model_target_path


@pytest.fixture
def fleet(service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes) -> HubService:
    for d in ("cam-1", "cam-2"):
        service.add_device(d, actor="admin:admin")
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    service.deploy("iris", 1, ["cam-1", "cam-2"], actor="admin:admin")
    return service


def _listed(service: HubService, device_id: str) -> str | None:
    listed = service.director.listed_state(device_id)
    return listed[0] if listed is not None else None


def _commit_without_signing(service: HubService, device_id: str, version: int) -> str:
    """What a hub that dies right after the commit leaves: a newer state, unsigned."""
    with service.context.write() as s:
        a = service.deployments._assignment(s, device_id, "iris")
        assert a is not None
        a.production_version = version
        sha, _, _ = service.director.stage(s, [device_id])[device_id]
    assert _listed(service, device_id) != sha
    return sha


def test_the_next_signing_also_signs_what_an_earlier_commit_left_unsigned(
    fleet: HubService,
) -> None:
    pending = _commit_without_signing(fleet, "cam-1", 2)
    fleet.deploy("iris", 2, ["cam-2"], actor="admin:admin")  # another device's change
    assert _listed(fleet, "cam-1") == pending


def test_start_up_signs_what_a_crashed_hub_committed(
    fleet: HubService, hub_home: tuple[Path, str], clock: ManualClock
) -> None:
    pending = _commit_without_signing(fleet, "cam-1", 2)
    with fleet.context.write() as s:  # a revocation committed, the catalog not re-signed
        fleet.catalog.version_row(s, "iris", 1).revoked = True
    fleet.close()

    restarted = HubService(load_hub_config(hub_home[0]), clock)
    try:
        assert _listed(restarted, "cam-1") == pending
        catalog = restarted.trust.repository("catalog")
        assert catalog.target(model_target_path("iris", 1)) is None
    finally:
        restarted.close()


def test_publishing_in_step_signs_nothing(fleet: HubService) -> None:
    before = (
        fleet.director.device_roles("cam-1"),
        fleet.trust.repository("catalog").version("targets"),
    )
    assert fleet.director.publish() == []
    assert (
        fleet.director.device_roles("cam-1"),
        fleet.trust.repository("catalog").version("targets"),
    ) == before


def test_a_late_signer_cannot_sign_an_older_state_over_a_newer_one(fleet: HubService) -> None:
    """Signing reads the database under the metadata lock: whoever signs last signs the
    newest committed state, whatever it had in hand."""
    first = _commit_without_signing(fleet, "cam-1", 2)
    second = _commit_without_signing(fleet, "cam-1", 1)
    assert first != second
    fleet.director.publish()
    assert _listed(fleet, "cam-1") == second
