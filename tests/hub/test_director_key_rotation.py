"""Rotating the director key (issue 10, ADR 0039): the director root lists the new key,
every device's own director repository is re-signed with it (through sign-after-commit and
its repair, here or in a running hub), real python-tuf devices follow the chain, and what
the retired key signs afterwards is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from securesystemslib.signer import CryptoSigner
from sqlalchemy import select
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.clock import ManualClock
from modelfleet.errors import MetadataVerificationError, StorageError
from modelfleet.hub import db
from modelfleet.hub import director as director_module
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient, HubTrust
from modelfleet.trust._key_files import read_private_key
from modelfleet.trust.device_repo import DeviceRepoSigner
from modelfleet.trust.key_admin import KeyAdmin, KeyChange
from modelfleet.trust.key_registry import OFFLINE, KeyRegistry
from modelfleet.trust.root_signing import parse_bundle, sign_bundle
from tests.cli_run import run_cli
from tests.pg import pg_database

DEVICES = ("cam-1", "cam-2", "cam-3")


@pytest.fixture
def clock() -> ManualClock:
    # python-tuf checks expiry against the system clock: sign with a clock near it
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def fleet(service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes) -> dict[str, str]:
    """Three enrolled devices; iris v1 on cam-1 and cam-2 (cam-3 is listed nothing)."""
    tokens = {d: service.add_device(d, actor="admin:admin")[1] for d in DEVICES}
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    service.deploy("iris", 1, ["cam-1", "cam-2"], actor="admin:admin")
    return tokens


class _Fetcher(FetcherInterface):
    """python-tuf's transport over the hub app in-process; ``tamper`` replaces files."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http, self.token = http, token
        self.tamper: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlsplit(url).path
        name = path.rsplit("/", 1)[-1]
        if name in self.tamper:
            return iter([self.tamper[name]])
        r = self.http.get(path, headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise DownloadHTTPError(f"GET {url}: {r.status_code}", r.status_code)
        return iter([r.content])


def _device(
    service: HubService, http: TestClient, tmp_path: Path, device_id: str, token: str
) -> tuple[DeviceTrustClient, _Fetcher]:
    fetcher = _Fetcher(http, token)
    client = DeviceTrustClient(
        tmp_path / f"cache-{device_id}", str(http.base_url), token, service.trust_root(),
        fetcher=fetcher,
    )  # fmt: skip
    return client, fetcher


def _install(client: DeviceTrustClient, device_id: str, dest: Path) -> int:
    """What a device's update cycle verifies: its desired state, then the model it names
    through the catalog. Returns the desired state's serial."""
    raw = client.fetch_desired_state(device_id)
    assert raw is not None
    state = DesiredState.from_json(raw)
    for a in state.assignments:
        ref = a.production
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest / device_id)
    return state.serial


def _director_key(service: HubService) -> tuple[str, CryptoSigner]:
    (record,) = KeyRegistry.load(service.paths.keys).active("director")
    assert record.file is not None
    key = CryptoSigner(read_private_key(service.paths.keys / record.file, None))
    return record.keyid, key


def _signed_by(service: HubService) -> dict[str, set[str]]:
    """Per device: the key ids recorded on its row and on each of its signed roles."""
    t = db.DirectorDevice
    with service.context.read() as s:
        rows = s.execute(
            select(t.device_id, t.signed_keyid, t.targets_json, t.snapshot_json, t.timestamp_json)
        ).all()
    out: dict[str, set[str]] = {}
    for device_id, keyid, *files in rows:
        ids = {keyid}
        for data in files:
            ids |= set(Metadata.from_bytes(data).signatures)
        out[device_id] = ids
    return out


def _rotate_elsewhere(service: HubService, clock: ManualClock, role: str) -> KeyChange:
    """``modelfleet keys rotate ROLE`` in its own process: its own trust store, and no
    re-signing of device rows (as if it died right after installing the new roots)."""
    other = HubTrust.open(service.paths.tuf, service.paths.keys, clock)
    try:
        admin = KeyAdmin(service.paths.keys, other, clock, trust_root_file=service.paths.trust_root)
        return admin.rotate(role)
    finally:
        other.close()


def test_a_running_hub_resigns_every_device_with_the_rotated_director_key_and_devices_install(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    online, _ = _device(service, http, tmp_path, "cam-1", fleet["cam-1"])
    assert _install(online, "cam-1", tmp_path) == 1
    old, _ = _director_key(service)
    assert set(_signed_by(service)) == set(DEVICES)
    change = _rotate_elsewhere(service, clock, "director")
    (new,) = change.added
    assert change.retired == [old]
    assert change.written == [
        "director/root", "director/targets", "director/snapshot", "director/timestamp",
    ]  # fmt: skip
    root = Metadata[Root].from_file(str(service.paths.tuf / "director" / "2.root.json")).signed
    assert all(root.roles[r].keyids == [new] for r in ("targets", "snapshot", "timestamp"))
    # Until the device rows are re-signed, a device cannot verify them under the new root.
    with pytest.raises(MetadataVerificationError, match="signed by 0/1 keys"):
        online.fetch_desired_state("cam-1")
    # The running hub (opened before, not restarted) takes the new key at its upkeep round
    # and re-signs every device's own repository with it.
    service.refresh_expiring()
    assert _signed_by(service) == {d: {new} for d in DEVICES}
    # The device that was online converges on its next refresh and still installs; so do
    # the others, and the next deploy reaches them signed by the new key.
    assert _install(online, "cam-1", tmp_path) == 1
    service.deploy("iris", 2, ["cam-1", "cam-3"], actor="admin:admin")
    assert _install(online, "cam-1", tmp_path) == 2
    late, _ = _device(service, http, tmp_path, "cam-3", fleet["cam-3"])
    assert _install(late, "cam-3", tmp_path) == 1
    assert _signed_by(service)["cam-3"] == {new}


@pytest.mark.parametrize(
    "rotations",
    [
        pytest.param(("director",), id="director"),
        pytest.param(("root", "director"), id="root-then-director"),
        pytest.param(("director", "root", "director"), id="director-root-director"),
    ],
)
def test_a_device_that_slept_through_rotations_follows_the_root_chain(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    tmp_path: Path,
    rotations: tuple[str, ...],
) -> None:
    sleeper, _ = _device(service, http, tmp_path, "cam-2", fleet["cam-2"])
    assert _install(sleeper, "cam-2", tmp_path) == 1  # holds director root version 1
    # In the hub's own process: the trust store hands the new key to the device signer.
    admin = KeyAdmin(service.paths.keys, service.trust, service.clock)
    for role in rotations:
        change = admin.rotate(role)
        assert not change.pending
        service.director.publish()
    assert service.trust.versions("director")[0] == 1 + len(rotations)
    new, _ = _director_key(service)
    assert service.trust.device_signer.keyid == new
    assert _signed_by(service)["cam-2"] == {new}
    service.deploy("iris", 2, ["cam-2"], actor="admin:admin")
    assert _install(sleeper, "cam-2", tmp_path) == 2  # walked every N.root.json
    history = tmp_path / "cache-cam-2" / "director-device" / "metadata" / "root_history"
    assert (history / f"{1 + len(rotations)}.root.json").is_file()


def test_metadata_signed_by_the_retired_director_key_is_refused_by_the_device(
    service: HubService, http: TestClient, fleet: dict[str, str], tmp_path: Path
) -> None:
    device, fetcher = _device(service, http, tmp_path, "cam-1", fleet["cam-1"])
    assert _install(device, "cam-1", tmp_path) == 1
    _, old_key = _director_key(service)
    KeyAdmin(service.paths.keys, service.trust, service.clock).rotate("director")
    service.director.publish()
    assert _install(device, "cam-1", tmp_path) == 1
    # Whoever still holds the retired key signs newer roles for cam-1 (a stolen key
    # replaying an older assignment): valid TUF metadata, only by the wrong key.
    roles = service.director.device_roles("cam-1")
    listed = service.director.listed_state("cam-1")
    assert roles is not None and listed is not None
    signer = service.trust.device_signer
    stale = DeviceRepoSigner(old_key, signer.lifetimes, signer.refresh_margin)
    forged = stale.sign_change("cam-1", (len(listed[1]), listed[0]), roles, service.clock.now())
    assert forged.targets is not None and forged.snapshot is not None
    fetcher.tamper = {
        "timestamp.json": forged.timestamp,
        f"{forged.roles.snapshot}.snapshot.json": forged.snapshot,
        f"{forged.roles.targets}.targets.json": forged.targets,
    }
    with pytest.raises(MetadataVerificationError, match="signed by 0/1 keys"):
        device.fetch_desired_state("cam-1")
    fetcher.tamper = {}
    assert _install(device, "cam-1", tmp_path) == 1  # the hub's own metadata still verifies


def test_a_director_rotation_under_an_offline_root_waits_for_its_signature_and_devices_keep_working(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    keys = service.paths.keys
    registry = KeyRegistry.load(keys)
    (root,) = registry.active("root")
    assert root.file is not None
    offline_root = tmp_path / "root-offline.pem"
    shutil.move(keys / root.file, offline_root)
    registry.put(replace(root, location=OFFLINE))
    registry.save()
    device, _ = _device(service, http, tmp_path, "cam-1", fleet["cam-1"])
    assert _install(device, "cam-1", tmp_path) == 1
    old, _ = _director_key(service)
    # `modelfleet keys` in its own process, on a hub without its root key.
    other = HubTrust.open(service.paths.tuf, keys, clock)
    try:
        admin = KeyAdmin(keys, other, clock)
        assert admin.rotate("director").pending
        # Meanwhile nothing changes for devices: the old key still signs, and verifies.
        service.refresh_expiring()
        assert _signed_by(service) == {d: {old} for d in DEVICES}
        assert _install(device, "cam-1", tmp_path) == 1
        bundle = parse_bundle(admin.export_root())  # to the offline machine and back
        sign_bundle(bundle, CryptoSigner(read_private_key(offline_root, None)))
        applied = admin.apply_root(bundle.to_bytes())
    finally:
        other.close()
    assert "director/timestamp" in applied.written
    new, _ = _director_key(service)
    assert new != old
    service.refresh_expiring()  # the running hub takes the key the ceremony installed
    assert _signed_by(service) == {d: {new} for d in DEVICES}
    assert _install(device, "cam-1", tmp_path) == 1


@pytest.mark.parametrize("signed_before_crash", [0, 1], ids=["before-any-row", "mid-way"])
def test_a_director_rotation_interrupted_before_its_devices_are_resigned_is_finished_at_restart(
    hub_home: tuple[Path, str],
    fleet: dict[str, str],
    service: HubService,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signed_before_crash: int,
) -> None:
    service.close()  # the hub is down while `modelfleet keys` runs
    change = _rotate_elsewhere(service, clock, "director")
    (new,) = change.added
    config = load_hub_config(hub_home[0])
    if signed_before_crash:
        # The re-signing dies after its first batch of one device.
        monkeypatch.setattr(director_module, "BATCH", 1)
        real_write = director_module.Director._write
        calls: list[int] = []

        def dying_write(self: director_module.Director, *args: Any, **kwargs: Any) -> int:
            calls.append(1)
            if len(calls) > signed_before_crash:
                raise StorageError("the hub lost power")
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(director_module.Director, "_write", dying_write)
        with pytest.raises(StorageError, match="lost power"):
            HubService(config, clock)
        monkeypatch.undo()
    by = {d: ids == {new} for d, ids in _signed_by(service).items()}
    assert sum(by.values()) == signed_before_crash
    restarted = HubService(config, clock)
    try:
        assert _signed_by(restarted) == {d: {new} for d in DEVICES}
        with TestClient(build_hub_app(restarted, refresh_interval_s=0)) as http:
            device, _ = _device(restarted, http, tmp_path, "cam-1", fleet["cam-1"])
            assert _install(device, "cam-1", tmp_path) == 1
    finally:
        restarted.close()


def test_keys_rotate_director_through_the_cli_resigns_devices_a_running_hub_serves(
    hub_home: tuple[Path, str],
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    tmp_path: Path,
) -> None:
    device, _ = _device(service, http, tmp_path, "cam-2", fleet["cam-2"])
    assert _install(device, "cam-2", tmp_path) == 1
    old, _ = _director_key(service)
    result = run_cli("keys", "rotate", "director", "--home", str(hub_home[0]), "--json")
    assert result.returncode == 0, result.stderr
    change = json.loads(result.stdout)
    (new,) = change["added"]
    assert change["retired"] == [old] and not change["pending"]
    assert "director/devices: 3" in change["written"]
    # The CLI re-signed every row already; the running hub only takes the new key.
    assert _signed_by(service) == {d: {new} for d in DEVICES}
    assert _install(device, "cam-2", tmp_path) == 1
    service.deploy("iris", 2, ["cam-2"], actor="admin:admin")
    assert _install(device, "cam-2", tmp_path) == 2
    assert service.trust.device_signer.keyid == new
    listed = run_cli("keys", "list", "--home", str(hub_home[0]), "--json")
    states = {k["keyid"]: k["state"] for k in json.loads(listed.stdout)}
    assert states[old] == "retired" and states[new] == "active"


@pytest.mark.postgres
def test_a_director_rotation_on_postgres_resigns_every_row_and_the_device_installs(
    tmp_path: Path, clock: ManualClock, onnx_bytes: bytes
) -> None:
    with pg_database() as url:
        home = tmp_path / "hub"
        init_home(home, clock, database_url=url)
        service = HubService(load_hub_config(home), clock)
        try:
            tokens = {d: service.add_device(d, actor="admin:admin")[1] for d in DEVICES}
            service.register_version("iris", onnx_bytes, actor="admin:admin")
            service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
            (new,) = _rotate_elsewhere(service, clock, "director").added
            service.refresh_expiring()
            assert _signed_by(service) == {d: {new} for d in DEVICES}
            with TestClient(build_hub_app(service, refresh_interval_s=0)) as http:
                device, _ = _device(service, http, tmp_path, "cam-1", tokens["cam-1"])
                assert _install(device, "cam-1", tmp_path) == 1
        finally:
            service.close()
