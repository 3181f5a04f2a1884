"""Hub-side TUF repositories: versions, files, immutability, expiry upkeep, locking."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError, ConflictError, InvalidInputError
from modelfleet.hashing import sha256_bytes
from modelfleet.trust import TRUST_ROOT_FORMAT, HubTrust, generate_keys, parse_trust_root_bundle
from modelfleet.trust.repository import KEEP_VERSIONS
from tests.trust._trust_support import Hub, make_hub

SHA_A = "a" * 64
SHA_B = "b" * 64


def _versions(hub: Hub, repo: str) -> tuple[int, int, int, int]:
    r = hub.trust.repository(repo)
    return (r.version("root"), r.version("targets"), r.version("snapshot"), r.version("timestamp"))


def _load(path: Path) -> Metadata[Root]:
    return Metadata.from_bytes(path.read_bytes())


def test_init_writes_version_one_of_every_role_in_both_repositories(hub: Hub) -> None:
    for repo in ("catalog", "director"):
        d = hub.home / "tuf" / repo
        names = sorted(p.name for p in d.iterdir())
        assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
        root = _load(d / "1.root.json")
        assert root.signed.consistent_snapshot is True
        for role in ("root", "targets", "snapshot", "timestamp"):
            md = Metadata.from_bytes(
                (d / ("timestamp.json" if role == "timestamp" else f"1.{role}.json")).read_bytes()
            )
            root.signed.verify_delegate(role, md.signed_bytes, md.signatures)


def test_director_online_roles_use_the_director_key_and_root_uses_the_root_key(hub: Hub) -> None:
    cat = _load(hub.home / "tuf" / "catalog" / "1.root.json").signed
    dire = _load(hub.home / "tuf" / "director" / "1.root.json").signed
    assert cat.roles["root"].keyids == dire.roles["root"].keyids
    director_keys = {k for r in ("targets", "snapshot", "timestamp") for k in dire.roles[r].keyids}
    assert len(director_keys) == 1
    assert director_keys.isdisjoint(cat.roles["targets"].keyids)
    assert len({k for r in ("targets", "snapshot", "timestamp") for k in cat.roles[r].keyids}) == 3


def test_init_refuses_to_overwrite_existing_repositories(hub: Hub) -> None:
    with pytest.raises(ConflictError):
        HubTrust.init(hub.home / "tuf", hub.home / "keys", hub.clock)


def test_open_refuses_keys_the_root_does_not_trust(hub: Hub, tmp_path: Path) -> None:
    generate_keys(tmp_path / "other-keys")
    with pytest.raises(ConfigError, match="does not match"):
        HubTrust.open(hub.home / "tuf", tmp_path / "other-keys", hub.clock)


def test_open_refuses_a_missing_repository(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    with pytest.raises(ConfigError, match="no TUF repository"):
        HubTrust.open(tmp_path / "tuf", tmp_path / "keys", make_hub(tmp_path / "x").clock)


def test_publish_bumps_targets_snapshot_timestamp_once_and_chains_them(hub: Hub) -> None:
    ref = hub.publish("iris", 1)
    assert _versions(hub, "catalog") == (1, 2, 2, 2)
    d = hub.home / "tuf" / "catalog"
    ts = Metadata[Timestamp].from_bytes((d / "timestamp.json").read_bytes()).signed
    snap_bytes = (d / "2.snapshot.json").read_bytes()
    assert ts.snapshot_meta.version == 2
    assert ts.snapshot_meta.hashes == {"sha256": sha256_bytes(snap_bytes)}
    snap = Metadata[Snapshot].from_bytes(snap_bytes).signed
    targets_bytes = (d / "2.targets.json").read_bytes()
    assert snap.meta["targets.json"].length == len(targets_bytes)
    targets = Metadata[Targets].from_bytes(targets_bytes).signed
    model = targets.targets["models/iris/1/model.onnx"]
    assert (model.length, model.hashes["sha256"]) == (ref.length, ref.sha256)
    assert model.custom["runtime"] == "onnxruntime"
    assert targets.targets["models/iris/1/manifest.json"].hashes["sha256"] == ref.manifest_sha256


def test_republishing_the_same_package_signs_nothing(hub: Hub) -> None:
    hub.publish("iris", 1)
    before = _versions(hub, "catalog")
    hub.publish("iris", 1)
    assert _versions(hub, "catalog") == before


def test_republishing_a_version_with_other_bytes_is_a_conflict(hub: Hub) -> None:
    hub.publish("iris", 1)
    before = _versions(hub, "catalog")
    with pytest.raises(ConflictError, match="immutable"):
        hub.publish("iris", 1, payload=b"different model bytes")
    assert _versions(hub, "catalog") == before


@pytest.mark.parametrize(
    ("name", "version", "sha"),
    [
        ("../etc", 1, SHA_A),
        ("a/b", 1, SHA_A),
        ("", 1, SHA_A),
        ("iris", 0, SHA_A),
        ("iris", 1, "not-a-digest"),
    ],
)
def test_publish_rejects_bad_names_versions_and_digests(
    hub: Hub, name: str, version: int, sha: str
) -> None:
    with pytest.raises(InvalidInputError):
        hub.trust.publish_package(name, version, sha, 10, SHA_B, 5, {})


def test_revoke_removes_both_targets_and_is_idempotent(hub: Hub) -> None:
    hub.publish("iris", 1)
    hub.trust.revoke_package("iris", 1)
    cat = hub.trust.repository("catalog")
    assert cat.target_paths() == []
    before = _versions(hub, "catalog")
    hub.trust.revoke_package("iris", 1)
    assert _versions(hub, "catalog") == before


def test_set_desired_states_signs_one_director_version_for_many_devices(hub: Hub) -> None:
    hub.trust.set_desired_states({"dev-1": (SHA_A, 10), "dev-2": (SHA_B, 20)})
    assert _versions(hub, "director") == (1, 2, 2, 2)
    director = hub.trust.repository("director")
    assert director.has_target("devices/dev-1/desired-state.json", SHA_A)
    assert director.has_target("devices/dev-2/desired-state.json", SHA_B)
    hub.trust.set_desired_states({"dev-1": (SHA_A, 10)})  # unchanged: no new version
    assert _versions(hub, "director") == (1, 2, 2, 2)
    hub.trust.set_desired_states({"dev-1": (SHA_B, 20)})
    assert director.has_target("devices/dev-1/desired-state.json", SHA_B)
    hub.trust.remove_desired_states(["dev-2"])
    assert director.target_paths() == ["devices/dev-1/desired-state.json"]


def test_set_desired_states_rejects_device_ids_that_escape_the_path(hub: Hub) -> None:
    with pytest.raises(InvalidInputError):
        hub.trust.set_desired_states({"../catalog": (SHA_A, 10)})


@pytest.mark.parametrize(
    "filename",
    [
        "../catalog/timestamp.json",
        "../../keys/root.pem",
        "/etc/passwd",
        "root.json",
        "1.root.json/../timestamp.json",
        ".lock",
        "0.root.json",
        "1.delegated.json",
        "timestamp.json.tmp",
        "99.root.json",  # well-formed but not there
    ],
)
def test_metadata_path_refuses_traversal_and_unknown_names(hub: Hub, filename: str) -> None:
    assert hub.trust.metadata_path("catalog", filename) is None


def test_metadata_path_serves_only_known_repositories(hub: Hub) -> None:
    assert hub.trust.metadata_path("catalog", "timestamp.json") is not None
    assert hub.trust.metadata_path("director", "1.root.json") is not None
    assert hub.trust.metadata_path("keys", "timestamp.json") is None
    assert hub.trust.metadata_path("..", "timestamp.json") is None


def test_target_digest_only_resolves_listed_hashes(hub: Hub) -> None:
    ref = hub.publish("iris", 2)
    good = f"models/iris/2/{ref.sha256}.model.onnx"
    assert hub.trust.target_digest("catalog", good) == ref.sha256
    assert hub.trust.target_digest("director", good) is None
    assert hub.trust.target_digest("catalog", f"models/iris/2/{SHA_A}.model.onnx") is None
    assert hub.trust.target_digest("catalog", f"models/iris/2/{ref.sha256}.manifest.json") is None
    assert hub.trust.target_digest("catalog", "models/iris/2/model.onnx") is None
    assert hub.trust.target_digest("catalog", f"../../keys/{ref.sha256}.root.pem") is None
    assert hub.trust.target_digest("catalog", f"{ref.sha256}.model.onnx") is None
    hub.trust.revoke_package("iris", 2)
    assert hub.trust.target_digest("catalog", good) is None


def test_trust_root_bundle_carries_both_current_roots(hub: Hub) -> None:
    raw = hub.trust.trust_root_bundle()
    assert json.loads(raw)["format"] == TRUST_ROOT_FORMAT
    roots = parse_trust_root_bundle(raw)
    for repo in ("catalog", "director"):
        md = Metadata[Root].from_bytes(roots[repo])
        assert md.signed.version == 1
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)


def test_refresh_expiring_resigns_only_roles_close_to_expiry(hub: Hub) -> None:
    assert hub.trust.refresh_expiring() == []
    hub.clock.advance(timedelta(hours=17).total_seconds())  # timestamp (1 d) has < 1/3 left
    done = hub.trust.refresh_expiring()
    assert done == ["catalog/timestamp", "director/timestamp"]
    assert _versions(hub, "catalog") == (1, 1, 1, 2)
    ts = hub.trust.repository("catalog").expires("timestamp")
    assert ts == (hub.clock.now() + timedelta(days=1)).replace(microsecond=0)
    assert hub.trust.refresh_expiring() == []


def test_refresh_expiring_cascades_from_director_targets_and_rotates_old_root(hub: Hub) -> None:
    hub.clock.advance(timedelta(days=5).total_seconds())  # director targets (7 d) < 1/3 left
    done = hub.trust.refresh_expiring()
    assert "director/targets" in done and "director/snapshot" in done
    assert "catalog/targets" not in done
    hub.clock.advance(timedelta(days=300).total_seconds())  # root (365 d) < 1/3 left
    done = hub.trust.refresh_expiring()
    assert "catalog/root" in done and "director/root" in done
    assert (hub.home / "tuf" / "catalog" / "2.root.json").is_file()
    roots = parse_trust_root_bundle(hub.trust.trust_root_bundle())
    assert Metadata[Root].from_bytes(roots["catalog"]).signed.version == 2


def test_two_hub_processes_never_reuse_a_version(hub: Hub) -> None:
    other = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    hub.publish("iris", 1)
    other.publish_package("wine", 1, SHA_A, 10, SHA_B, 5, {})  # must see iris first
    iris2 = hub.publish("iris", 2)
    cat = hub.trust.repository("catalog")
    assert cat.version("targets") == 4
    assert cat.target_paths() == [
        "models/iris/1/manifest.json", "models/iris/1/model.onnx",
        "models/iris/2/manifest.json", "models/iris/2/model.onnx",
        "models/wine/1/manifest.json", "models/wine/1/model.onnx",
    ]  # fmt: skip
    assert other.target_digest("catalog", f"models/iris/2/{iris2.sha256}.model.onnx")


def _publish_many(tuf_dir: Path, key_dir: Path, name: str, count: int) -> None:
    trust = HubTrust.open(tuf_dir, key_dir, ManualClock(datetime.now(UTC)))
    for v in range(1, count + 1):
        trust.publish_package(name, v, f"{v:064x}", v, f"{v + 1000:064x}", v, {})


def test_concurrent_hub_processes_serialise_on_the_lock_file(hub: Hub) -> None:
    ctx = multiprocessing.get_context("fork")
    args = [(hub.home / "tuf", hub.home / "keys", name, 8) for name in ("iris", "wine")]
    procs = [ctx.Process(target=_publish_many, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cat = hub.trust.repository("catalog")
    assert cat.version("targets") == 1 + 16  # every publish got its own version
    assert len(cat.target_paths()) == 32
    reopened = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    assert reopened.repository("catalog").version("timestamp") == 17


def test_old_metadata_versions_are_pruned_but_roots_are_kept(hub: Hub) -> None:
    for v in range(1, KEEP_VERSIONS + 4):
        hub.trust.set_desired_states({"dev": (f"{v:064x}", v)})
    d = hub.home / "tuf" / "director"
    targets = sorted(int(p.name.split(".")[0]) for p in d.glob("*.targets.json"))
    current = hub.trust.repository("director").version("targets")
    assert targets == list(range(current - KEEP_VERSIONS + 1, current + 1))
    assert (d / "1.root.json").is_file()


def test_expiry_policy_rejects_nonsense() -> None:
    from modelfleet.trust import ExpiryPolicy

    with pytest.raises(ConfigError):
        ExpiryPolicy(refresh_margin=1.5)
    with pytest.raises(ConfigError):
        ExpiryPolicy(timestamp=timedelta(seconds=1))


def test_metadata_is_signed_with_the_hub_clock(tmp_path: Path) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    hub = make_hub(tmp_path / "hub", start=start)
    assert hub.trust.repository("catalog").expires("timestamp") == start + timedelta(days=1)


def test_with_counters_an_older_store_copy_is_signed_above_the_published_versions(
    tmp_path: Path,
) -> None:
    """Defect 14 at the trust layer: the counters, not the files, say what was published."""
    import shutil

    from modelfleet.trust.repository import MemoryRoleCounters, TargetSpec

    counters = MemoryRoleCounters()
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    generate_keys(tmp_path / "keys")
    trust = HubTrust.init(tmp_path / "tuf", tmp_path / "keys", clock, counters=counters)
    assert counters.published("director") == {
        "root": 1, "targets": 1, "snapshot": 1, "timestamp": 1
    }  # fmt: skip
    shutil.copytree(tmp_path / "tuf" / "director", tmp_path / "backup")
    for i in range(3):
        wanted: dict[str, TargetSpec] = {f"devices/d{i}/x": (1, SHA_A, None)}
        trust.sync("director", "devices/", wanted.copy)
    published = dict(counters.published("director"))
    assert published["timestamp"] == 4
    shutil.rmtree(tmp_path / "tuf" / "director")
    shutil.copytree(tmp_path / "backup", tmp_path / "tuf" / "director")

    assert trust.behind() == [
        "director/snapshot: store 1, published 4",
        "director/targets: store 1, published 4",
        "director/timestamp: store 1, published 4",
    ]
    trust.sync("director", "devices/", lambda: {"devices/d9/x": (1, SHA_B, None)})
    director = trust.repository("director")
    assert [director.version(r) for r in ("targets", "snapshot", "timestamp")] == [5, 5, 5]
    assert director.target_paths() == ["devices/d9/x"]  # exactly what the source said
    assert trust.behind() == []


def test_sync_refuses_targets_outside_its_prefix(hub: Hub) -> None:
    with pytest.raises(InvalidInputError, match="outside"):
        hub.trust.sync("director", "devices/", lambda: {"models/x/1/model.onnx": (1, SHA_A, None)})
    assert hub.trust.repository("director").version("targets") == 1
