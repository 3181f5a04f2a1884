"""The per-device director (issue 8, ADR 0014): each device's own repository under the
shared director root, served from the database and verified by the real device client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata, Root, Targets, Timestamp
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.clock import ManualClock
from modelfleet.errors import MetadataVerificationError
from modelfleet.hub import db
from modelfleet.hub.service import HubService
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient
from tests.hub._support import auth


@pytest.fixture
def clock() -> ManualClock:
    # python-tuf checks expiry against the system clock: sign with a clock near it
    return ManualClock(datetime.now(UTC))


class _Fetcher(FetcherInterface):
    """python-tuf's transport over the hub app in-process; ``tamper`` edits responses."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http, self.token = http, token
        self.tamper: dict[str, bytes] = {}
        self.urls: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlsplit(url).path
        self.urls.append(path)
        name = path.rsplit("/", 1)[-1]
        if name in self.tamper:  # what a man in the middle serves instead
            return iter([self.tamper[name]])
        r = self.http.get(path, headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise DownloadHTTPError(f"GET {url}: {r.status_code}", r.status_code)
        return iter([r.content])


@pytest.fixture
def fleet(service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes) -> dict[str, str]:
    tokens = {d: service.add_device(d, actor="admin:admin")[1] for d in ("cam-1", "cam-2", "cam-3")}
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    return tokens


def _device(
    service: HubService, http: TestClient, tmp_path: Path, token: str
) -> tuple[DeviceTrustClient, _Fetcher]:
    fetcher = _Fetcher(http, token)
    client = DeviceTrustClient(
        tmp_path / f"cache-{token[-6:]}",
        str(http.base_url),
        token,
        service.trust_root(),
        fetcher=fetcher,
    )
    return client, fetcher


def _serial(client: DeviceTrustClient, device_id: str) -> int:
    raw = client.fetch_desired_state(device_id)
    assert raw is not None
    return DesiredState.from_json(raw).serial


def test_the_device_verifies_its_own_repository_under_the_shared_root(
    service: HubService, http: TestClient, fleet: dict[str, str], tmp_path: Path
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    client, fetcher = _device(service, http, tmp_path, fleet["cam-1"])
    assert _serial(client, "cam-1") == 1
    base = "/tuf/director/devices/cam-1/metadata/"
    assert any(u.startswith(base) for u in fetcher.urls)
    assert not any(u.startswith("/tuf/director/metadata/timestamp") for u in fetcher.urls)
    # what it fetched is small and lists only its own desired state
    roles = service.director.device_roles("cam-1")
    assert roles is not None
    h = auth(fleet["cam-1"])
    targets = http.get(f"{base}{roles.targets}.targets.json", headers=h)
    listed = Metadata[Targets].from_bytes(targets.content).signed.targets
    assert list(listed) == ["devices/cam-1/desired-state.json"]
    sizes = [
        len(http.get(f"{base}{name}", headers=h).content)
        for name in ("timestamp.json", f"{roles.snapshot}.snapshot.json")
    ]
    assert sum(sizes) + len(targets.content) < 8 * 1024
    # the root served under the device's base is the shared director root, byte for byte
    shared = http.get("/tuf/director/metadata/1.root.json", headers=h).content
    assert http.get(f"{base}1.root.json", headers=h).content == shared
    root = Metadata[Root].from_bytes(shared).signed
    ts = Metadata[Timestamp].from_bytes(http.get(f"{base}timestamp.json", headers=h).content)
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)


@pytest.mark.parametrize(
    ("reader", "status"),
    [("cam-2", 403), ("operator", 200), ("admin", 200)],
)
def test_a_device_reads_only_its_own_director_metadata(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    admin_token: str,
    reader: str,
    status: int,
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    token = {
        "operator": service.create_token("operator", "olga", actor="admin:admin"),
        "admin": admin_token,
    }.get(reader) or fleet[reader]
    roles = service.director.device_roles("cam-1")
    assert roles is not None
    for name in ("timestamp.json", f"{roles.targets}.targets.json", "1.root.json"):
        r = http.get(f"/tuf/director/devices/cam-1/metadata/{name}", headers=auth(token))
        assert r.status_code == status, (name, r.text)


@pytest.mark.parametrize(
    "name", ["../timestamp.json", "root.json", "9.targets.json", "1.targets.json.bak", "x"]
)
def test_unknown_or_other_version_files_are_404(
    service: HubService, http: TestClient, fleet: dict[str, str], name: str
) -> None:
    r = http.get(f"/tuf/director/devices/cam-1/metadata/{name}", headers=auth(fleet["cam-1"]))
    assert r.status_code == 404


def test_publish_signs_only_the_devices_whose_state_changed(
    service: HubService, fleet: dict[str, str]
) -> None:
    service.deploy("iris", 1, ["cam-1", "cam-2", "cam-3"], actor="admin:admin")
    before = {d: service.director.device_roles(d) for d in fleet}
    service.deploy("iris", 2, ["cam-2"], actor="admin:admin")
    after = {d: service.director.device_roles(d) for d in fleet}
    assert after["cam-1"] == before["cam-1"] and after["cam-3"] == before["cam-3"]
    b2, a2 = before["cam-2"], after["cam-2"]
    assert a2 is not None and b2 is not None
    assert (a2.targets, a2.snapshot, a2.timestamp) == (
        b2.targets + 1,
        b2.snapshot + 1,
        b2.timestamp + 1,
    )


def test_versions_only_grow_and_are_never_reused_with_other_content(
    service: HubService, fleet: dict[str, str]
) -> None:
    seen: dict[int, bytes] = {}
    for version in (1, 2, 1, 2, 1):
        service.deploy("iris", version, ["cam-1"], actor="admin:admin")
        with service.context.read() as s:
            row = s.get(db.DirectorDevice, "cam-1")
            assert row is not None and row.timestamp_json is not None
            assert row.timestamp_version not in seen
            seen[row.timestamp_version] = row.timestamp_json
    assert sorted(seen) == list(seen)


def test_a_stale_signer_cannot_overwrite_a_newer_signing(
    service: HubService, fleet: dict[str, str]
) -> None:
    """Two publishers that read the same dirty row: only the first write lands."""
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    with service.context.write() as s:  # a change committed, not yet signed
        a = service.deployments._assignment(s, "cam-1", "iris")
        assert a is not None
        a.production_version = 2
        service.director.stage(s, ["cam-1"])
    real_write = service.director._write
    barrier = threading.Barrier(2, timeout=30)
    written: list[int] = []

    def write_in_step(*args, **kwargs):  # type: ignore[no-untyped-def]
        barrier.wait()  # both signed from the same row before either writes
        n = real_write(*args, **kwargs)
        written.append(n)
        return n

    service.director._write = write_in_step  # type: ignore[method-assign]
    service.director._publish_lock = _NoLock()  # type: ignore[assignment]
    threads = [threading.Thread(target=service.director.sign_dirty) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(written) == [0, 1]
    roles = service.director.device_roles("cam-1")
    assert roles is not None and roles.timestamp == 3  # enrolment, deploy 1, deploy 2


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_expiring_timestamps_are_resigned_in_upkeep_and_the_device_accepts_them(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    client, _ = _device(service, http, tmp_path, fleet["cam-1"])
    assert _serial(client, "cam-1") == 1
    before = service.director.device_roles("cam-1")
    assert before is not None
    assert service.director.refresh_expiring() == 0  # nothing due yet
    clock.advance(timedelta(hours=17).total_seconds())  # < 1/3 of the 1-day timestamp left
    done = service.refresh_expiring()
    assert "director/devices: 3" in done
    after = service.director.device_roles("cam-1")
    assert after is not None
    assert (after.targets, after.snapshot) == (before.targets, before.snapshot)
    assert after.timestamp == before.timestamp + 1
    assert after.timestamp_expires is not None and before.timestamp_expires is not None
    assert after.timestamp_expires > before.timestamp_expires
    assert _serial(client, "cam-1") == 1  # python-tuf takes the new timestamp


def test_expiring_targets_are_resigned_with_the_same_listing(
    service: HubService, fleet: dict[str, str], clock: ManualClock
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    listed = service.director.listed_state("cam-1")
    before = service.director.device_roles("cam-1")
    assert before is not None
    clock.advance(timedelta(days=5).total_seconds())  # < 1/3 of the 7-day targets left
    assert service.director.refresh_expiring() == 3
    after = service.director.device_roles("cam-1")
    assert after is not None and after.targets == before.targets + 1
    assert service.director.listed_state("cam-1") == listed


def test_a_tampered_per_device_file_is_refused(
    service: HubService, http: TestClient, fleet: dict[str, str], tmp_path: Path
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    client, fetcher = _device(service, http, tmp_path, fleet["cam-1"])
    roles = service.director.device_roles("cam-1")
    assert roles is not None
    name = f"{roles.targets}.targets.json"
    doc = json.loads(
        http.get(f"/tuf/director/devices/cam-1/metadata/{name}", headers=auth(fleet["cam-1"])).text
    )
    entry = doc["signed"]["targets"]["devices/cam-1/desired-state.json"]
    entry["hashes"]["sha256"] = "0" * 64  # point the device at other bytes
    fetcher.tamper[name] = json.dumps(doc).encode()
    with pytest.raises(MetadataVerificationError, match="signature"):
        client.fetch_desired_state("cam-1")


def test_another_devices_metadata_does_not_verify_as_ones_own(
    service: HubService, http: TestClient, fleet: dict[str, str], tmp_path: Path
) -> None:
    """cam-2's validly signed repository replayed to cam-1 is refused: its targets is
    signed for cam-2 (without that binding cam-1 would read "no desired state")."""
    service.deploy("iris", 1, ["cam-2"], actor="admin:admin")
    client, fetcher = _device(service, http, tmp_path, fleet["cam-1"])
    admin = service.create_token("admin", "root2", actor="admin:admin")
    roles = service.director.device_roles("cam-2")
    assert roles is not None
    for name in (
        "timestamp.json",
        f"{roles.snapshot}.snapshot.json",
        f"{roles.targets}.targets.json",
    ):
        fetcher.tamper[name] = http.get(
            f"/tuf/director/devices/cam-2/metadata/{name}", headers=auth(admin)
        ).content
    with pytest.raises(MetadataVerificationError, match="signed for device 'cam-2'"):
        client.fetch_desired_state("cam-1")


def test_decommission_lists_nothing_and_versions_keep_growing(
    service: HubService, http: TestClient, fleet: dict[str, str], tmp_path: Path
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    client, _ = _device(service, http, tmp_path, fleet["cam-1"])
    assert _serial(client, "cam-1") == 1
    before = service.director.device_roles("cam-1")
    with service.context.write() as s:
        service.director.remove_desired_states(s, ["cam-1"])
    service.director.publish()
    assert service.director.listed_state("cam-1") is None
    after = service.director.device_roles("cam-1")
    assert before is not None and after is not None and after.timestamp > before.timestamp
    assert client.fetch_desired_state("cam-1") is None


def test_a_device_without_a_director_row_is_adopted_on_repair(
    service: HubService, fleet: dict[str, str]
) -> None:
    """A hub upgraded from the shared director listing gives each device its own."""
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    with service.context.write() as s:
        s.execute(delete(db.DirectorDevice))
    service.director.repair()
    listed = service.director.listed_state("cam-1")
    assert listed is not None
    assert DesiredState.from_json(listed[1]).assignment("iris") is not None
    assert service.director.listed_state("cam-2") is None
    assert service.director.device_roles("cam-2") is not None


def test_the_check_in_answer_names_the_devices_own_timestamp_and_skips_rewrites(
    service: HubService, http: TestClient, fleet: dict[str, str], clock: ManualClock
) -> None:
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    h = auth(fleet["cam-1"])
    report = {"applied_serial": 1, "last_check": "a", "models": {}}
    first = http.post("/api/v1/devices/cam-1/report", json=report, headers=h).json()
    roles = service.director.device_roles("cam-1")
    assert roles is not None
    catalog = service.trust.repository("catalog")
    assert first["tuf"] == {
        "catalog": {"root": 1, "timestamp": catalog.version("timestamp")},
        "director": {"root": 1, "timestamp": roles.timestamp},
    }

    def history() -> int:
        with service.context.read() as s:
            return int(s.scalar(select(func.count()).select_from(db.DeviceReport)) or 0)

    rows = history()
    clock.advance(60)
    again = http.post(
        "/api/v1/devices/cam-1/report", json={**report, "last_check": "b"}, headers=h
    ).json()
    assert again["tuf"] == first["tuf"]
    assert history() == rows  # unchanged but for volatile fields: no history row
    view = service.get_device("cam-1")
    assert view["last_seen"].startswith(clock.now().isoformat()[:19])
    assert view["report"]["last_check"] == "a"  # volatile fields: kept from the last change
    http.post("/api/v1/devices/cam-1/report", json={**report, "applied_serial": 2}, headers=h)
    assert history() == rows + 1  # a real change is kept as before


def test_last_seen_written_behind_never_moves_back(
    service: HubService, fleet: dict[str, str], clock: ManualClock
) -> None:
    report = {"applied_serial": 0, "last_check": "a", "models": {}}
    service.record_report("cam-1", report)  # stored: the next identical one is not-modified
    clock.advance(10)
    service.record_report("cam-1", {**report, "last_check": "b"})  # held in memory
    held = clock.now()
    clock.advance(10)
    service.record_report("cam-1", {**report, "applied_serial": 1})  # a change: written now
    newest = clock.now()
    view = service.get_device("cam-1")  # flushes the held time first
    assert view["last_seen"].startswith(newest.isoformat()[:19])
    assert not view["last_seen"].startswith(held.isoformat()[:19])


def test_a_stage_signed_in_pipelined_batches_lists_every_device(
    service: HubService,
    http: TestClient,
    fleet: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches smaller than the stage: every device signed once, each verifies its own."""
    from modelfleet.hub import director

    monkeypatch.setattr(director, "BATCH", 2)
    service.deploy("iris", 1, list(fleet), actor="admin:admin")
    with service.context.read() as s:
        assert not s.scalar(select(func.count()).where(db.DirectorDevice.dirty.is_(True)))
    for device_id, token in fleet.items():
        client, _ = _device(service, http, tmp_path, token)
        assert _serial(client, device_id) == 1
        roles = service.director.device_roles(device_id)
        assert roles is not None and roles.timestamp == 2  # enrolment, then the deploy
