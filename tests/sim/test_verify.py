"""The simulated device's TUF checks, on metadata signed by a real hub."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from modelfleet.errors import ArtefactVerificationError, MetadataVerificationError
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.sim.verify import (
    MetadataCache,
    RootChain,
    TrustedRepo,
    check_artefacts,
    check_target,
)
from modelfleet.trust.bundle import parse_trust_root_bundle
from tests.sim.conftest import Hub

NOW = datetime.now(UTC)
DEVICE = "verify-1"


def _get(hub: Hub, path: str) -> bytes:
    r = httpx.get(f"{hub.url}{path}", headers={"Authorization": f"Bearer {hub.token}"})
    r.raise_for_status()
    return r.content


def _desired_url(device_id: str, sha256: str) -> str:
    return f"/tuf/director/targets/devices/{device_id}/{sha256}.desired-state.json"


def _repo(hub: Hub, name: str) -> TrustedRepo:
    roots = parse_trust_root_bundle(_get(hub, "/api/v1/trust-root"))
    return TrustedRepo.pinned(RootChain(name, roots[name]))


def _base(hub: Hub, name: str) -> str:
    """The director's per-device base when the hub serves it (issue 8), else the shared one."""
    if name == "director":
        per_device = f"/tuf/director/devices/{DEVICE}/metadata/"
        r = httpx.get(f"{hub.url}{per_device}timestamp.json",
                      headers={"Authorization": f"Bearer {hub.token}"})  # fmt: skip
        if r.status_code == 200:
            return per_device
    return f"/tuf/{name}/metadata/"


def _refresh(hub: Hub, repo: TrustedRepo, cache: MetadataCache, now: datetime = NOW) -> None:
    base = _base(hub, repo.chain.repo)
    repo.update_timestamp(cache, _get(hub, f"{base}timestamp.json"), now)
    if repo.needs_snapshot():
        repo.update_snapshot(cache, _get(hub, f"{base}{repo.snapshot_name()}"), now)
    if repo.needs_targets():
        v = repo.targets_meta().version
        repo.update_targets(cache, _get(hub, f"{base}{v}.targets.json"), now)


@pytest.fixture(scope="module")
def deployed(hub: Hub) -> str:
    hub.client.add_device(DEVICE, site="s")
    hub.client.deploy("m", 1, [DEVICE])
    return DEVICE


def test_the_director_chain_verifies_and_names_the_desired_state(hub: Hub, deployed: str) -> None:
    repo, cache = _repo(hub, "director"), MetadataCache()
    _refresh(hub, repo, cache)
    info = repo.target(f"devices/{deployed}/desired-state.json")
    assert info is not None
    raw = _get(hub, _desired_url(deployed, info.hashes["sha256"]))
    check_target(info, raw)
    desired = DesiredState.from_json(raw)
    catalog = _repo(hub, "catalog")
    _refresh(hub, catalog, cache)
    assert [r.version for r in check_artefacts(desired, catalog)] == [1]
    with pytest.raises(ArtefactVerificationError, match="hash mismatch"):
        check_target(info, raw[:-2] + bytes([raw[-2] ^ 1]) + raw[-1:])


def test_a_timestamp_edited_after_signing_is_refused(hub: Hub, deployed: str) -> None:
    doc = json.loads(_get(hub, f"{_base(hub, 'director')}timestamp.json"))
    doc["signed"]["version"] += 1
    with pytest.raises(MetadataVerificationError, match="signature verification failed"):
        _repo(hub, "director").update_timestamp(MetadataCache(), json.dumps(doc).encode(), NOW)


def test_a_snapshot_that_is_not_the_one_the_timestamp_names_is_refused(
    hub: Hub, deployed: str
) -> None:
    repo, cache = _repo(hub, "director"), MetadataCache()
    base = _base(hub, "director")
    repo.update_timestamp(cache, _get(hub, f"{base}timestamp.json"), NOW)
    snapshot = _get(hub, f"{base}{repo.snapshot_name()}")
    doc = json.loads(snapshot)
    doc["signed"]["meta"]["targets.json"]["version"] += 1  # another targets, not signed
    with pytest.raises(MetadataVerificationError, match=r"length|sha256|signature"):
        repo.update_snapshot(cache, json.dumps(doc).encode(), NOW)


def test_an_older_timestamp_after_a_newer_one_is_a_rollback(hub: Hub, deployed: str) -> None:
    repo, cache = _repo(hub, "director"), MetadataCache()
    base = _base(hub, "director")
    old = _get(hub, f"{base}timestamp.json")
    hub.client.deploy("m", 2, [deployed])
    repo.update_timestamp(cache, _get(hub, f"{base}timestamp.json"), NOW)
    with pytest.raises(MetadataVerificationError, match="rollback"):
        repo.update_timestamp(cache, old, NOW)


def test_metadata_expired_at_the_device_clock_is_refused(hub: Hub, deployed: str) -> None:
    with pytest.raises(MetadataVerificationError, match="expired"):
        _refresh(hub, _repo(hub, "director"), MetadataCache(), NOW + timedelta(days=400))


def test_artefacts_the_catalog_does_not_list_the_same_way_are_refused(
    hub: Hub, deployed: str
) -> None:
    repo, cache = _repo(hub, "director"), MetadataCache()
    _refresh(hub, repo, cache)
    info = repo.target(f"devices/{deployed}/desired-state.json")
    assert info is not None
    desired = DesiredState.from_json(_get(hub, _desired_url(deployed, info.hashes["sha256"])))
    catalog = _repo(hub, "catalog")
    _refresh(hub, catalog, cache)
    a = desired.assignments[0]
    wrong = replace(desired, assignments=(replace(a, production=replace(a.production, length=1)),))
    with pytest.raises(ArtefactVerificationError, match="director and catalog disagree"):
        check_artefacts(wrong, catalog)
    unknown = replace(a.production, version=99)
    missing = replace(desired, assignments=(replace(a, production=unknown),))
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        check_artefacts(missing, catalog)


def test_the_cache_checks_each_distinct_file_once(hub: Hub, deployed: str) -> None:
    cache = MetadataCache()
    for _ in range(5):
        _refresh(hub, _repo(hub, "catalog"), cache)
    assert cache.misses == 3 and cache.hits == 12
