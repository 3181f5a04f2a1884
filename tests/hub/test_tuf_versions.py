"""Defect 14: the hub never signs a TUF version at or below one it has published, even
after an older copy of its store was put back (ADR 0007)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient
from modelfleet.trust.keys import load_signers
from modelfleet.trust.repository import ExpiryPolicy, MemoryRoleCounters, TufRepository


@pytest.fixture
def clock() -> ManualClock:
    # python-tuf checks expiry against the system clock: sign with a clock near it
    return ManualClock(datetime.now(UTC))


class _TestClientFetcher(FetcherInterface):
    """python-tuf's transport over the hub app in-process (the device's view of the hub)."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http, self.token = http, token

    def _fetch(self, url: str) -> Iterator[bytes]:
        r = self.http.get(urlsplit(url).path, headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise DownloadHTTPError(f"GET {url}: {r.status_code}", r.status_code)
        return iter([r.content])


@pytest.fixture
def device(
    service: HubService, http: TestClient, tmp_path: Path, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> DeviceTrustClient:
    _, token = service.add_device("cam-1", actor="admin:admin")
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    return DeviceTrustClient(
        tmp_path / "device-cache",
        str(http.base_url),
        token,
        service.trust_root(),
        fetcher=_TestClientFetcher(http, token),
    )


def _fetch_serial(device: DeviceTrustClient) -> int:
    raw = device.fetch_desired_state("cam-1")
    assert raw is not None
    return DesiredState.from_json(raw).serial


def _restore(backup: Path, live: Path) -> None:
    shutil.rmtree(live)
    shutil.copytree(backup, live)


def _fetch_v2(service: HubService, device: DeviceTrustClient, tmp_path: Path) -> None:
    v = service.get_version("iris", 2)
    device.begin_cycle()
    device.fetch_package_file(
        "models/iris/2/model.onnx", v["sha256"], v["length"], tmp_path / "v2.onnx"
    )


@pytest.mark.parametrize("what", ["whole store", "timestamp and snapshot only"])
def test_device_accepts_the_next_signing_after_an_older_store_is_put_back(
    service: HubService, device: DeviceTrustClient, tmp_path: Path, what: str
) -> None:
    tuf = service.paths.tuf
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    assert _fetch_serial(device) == 1
    backup = tmp_path / "backup"
    shutil.copytree(tuf, backup)
    for version in (2, 1, 2):
        service.deploy("iris", version, ["cam-1"], actor="admin:admin")
    assert _fetch_serial(device) == 4
    _fetch_v2(service, device, tmp_path)
    held = service.trust.repository("catalog").version("timestamp")

    if what == "whole store":
        for repo in ("catalog", "director"):
            _restore(backup / repo, tuf / repo)
    else:
        old = backup / "catalog"
        shutil.copy2(old / "timestamp.json", tuf / "catalog" / "timestamp.json")
        for snap in old.glob("*.snapshot.json"):
            shutil.copy2(snap, tuf / "catalog" / snap.name)
    assert service.trust.repository("catalog").version("timestamp") < held
    assert any(b.startswith("catalog/timestamp") for b in service.trust.behind())

    service.revoke_version("iris", 1, actor="admin:admin")  # the catalog is re-signed

    assert service.trust.repository("catalog").version("timestamp") > held
    _fetch_v2(service, device, tmp_path)  # the device (python-tuf) accepts it
    # the per-device director lives in the database: a store copy cannot roll it back
    service.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    assert _fetch_serial(device) == 5
    assert service.trust.behind() == []


def test_a_restarted_hub_signs_above_the_published_versions(
    hub_home: tuple[Path, str],
    clock: ManualClock,
    service: HubService,
    device: DeviceTrustClient,
    tmp_path: Path,
) -> None:
    """The counters live in the database: a new process reading the old files still knows."""
    tuf = service.paths.tuf
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    shutil.copytree(tuf / "catalog", tmp_path / "backup")
    service.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    held = service.trust.repository("catalog").version("timestamp")
    service.close()
    _restore(tmp_path / "backup", tuf / "catalog")

    restarted = HubService(load_hub_config(hub_home[0]), clock)
    try:
        # start-up repair already re-signed the version the restored copy lacked
        catalog = restarted.trust.repository("catalog")
        assert catalog.version("timestamp") > held
        v2 = restarted.get_version("iris", 2)
        tf = catalog.target("models/iris/2/model.onnx")
        assert tf is not None and tf.hashes["sha256"] == v2["sha256"]
    finally:
        restarted.close()


def _repo(path: Path, keys: Path, clock: ManualClock, counters: Any) -> TufRepository:
    signers = load_signers(keys)
    return TufRepository.open(
        path,
        {r: signers["director"] for r in ("targets", "snapshot", "timestamp")}
        | {"root": signers["root"]},
        clock,
        ExpiryPolicy().lifetimes("director"),
        counters=counters,
    )


def test_a_root_older_than_the_published_one_is_refused_clearly(
    service: HubService, clock: ManualClock
) -> None:
    """A root cannot be signed above a missing one (devices walk roots one by one)."""
    counters = MemoryRoleCounters()
    director = service.paths.tuf / "director"
    _repo(director, service.paths.keys, clock, counters)
    counters.record("director", {"root": 3})
    with pytest.raises(ConfigError, match="root version 1, but root version 3 was already"):
        _repo(director, service.paths.keys, clock, counters)


def test_without_counters_the_store_alone_decides(service: HubService, clock: ManualClock) -> None:
    repo = _repo(service.paths.tuf / "director", service.paths.keys, clock, None)
    before = repo.version("timestamp")
    assert repo.behind() == {}
    assert repo.update_targets({}, "devices/") in (True, False)
    assert repo.version("timestamp") >= before
