"""The update cycle: install, switch, keep serving on every kind of failure, roll back."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from modelfleet.agent.state import load_state
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError, TransportError
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx

DEVICE = "dev-1"


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


@pytest.fixture
def models() -> dict[int, bytes]:
    return {1: logistic_onnx(seed=0)[0], 2: logistic_onnx(seed=1)[0], 3: logistic_onnx(seed=2)[0]}


def make_updater(state_dir: Path, source: MemorySource, host: ModelHost | None = None) -> Updater:
    return Updater(DEVICE, state_dir, source, host or ModelHost(), ManualClock())


def served_version(host: ModelHost, name: str = "m") -> str:
    route = host.route(name)
    assert route is not None
    return route.production.version


def test_first_deploy_installs_and_serves(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    v1 = source.publish("m", 1, models[1])
    source.assign(DEVICE, v1)
    host = ModelHost()
    result = make_updater(tmp_path, source, host).run_cycle()
    assert result.changed and not result.refusals
    assert served_version(host) == "1"
    state = load_state(tmp_path, DEVICE)
    assert state.models["m"].active is not None and state.models["m"].active.version == 1
    assert state.applied_serial == 1


def test_same_serial_is_not_downloaded_again(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater = make_updater(tmp_path, source)
    updater.run_cycle()
    downloads = source.downloads
    assert not updater.run_cycle().changed
    assert source.downloads == downloads


def test_upgrade_keeps_previous_version_for_rollback(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, models[2]))
    updater.run_cycle()
    slots = updater.state.models["m"]
    assert (slots.active.version, slots.previous.version) == (2, 1)  # type: ignore[union-attr]
    route = host.route("m")
    assert route is not None and route.previous is not None and route.previous.version == "1"
    downloads = source.downloads
    result = updater.rollback(reason="test")
    assert [{k: r[k] for k in ("model", "from", "to", "kind")} for r in result["rolled_back"]] == [
        {"model": "m", "from": 2, "to": 1, "kind": "production"}
    ]
    assert served_version(host) == "1"
    assert source.downloads == downloads  # rollback never downloads
    # the director still says v2 at the same serial: the rollback must stick
    updater.state.applied_serial -= 1  # force the cycle to re-read the same desired state
    updater.run_cycle()
    assert served_version(host) == "1"


def test_tampered_artefact_is_refused_and_old_version_keeps_serving(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    v2 = source.publish("m", 2, models[2])
    path = "models/m/2/model.onnx"
    source.blobs[path] = source.blobs[path][:-1] + b"\x00"
    source.assign(DEVICE, v2)
    result = updater.run_cycle()
    assert len(result.refusals) == 1
    assert "hash mismatch" in result.refusals[0].reason
    assert result.refusals[0].kind == "delivery"  # bad bytes: refused, and retried (ADR 0034)
    assert served_version(host) == "1"
    status = updater.status()
    assert status["last_refusal"]["version"] == 2
    assert not (tmp_path / "models" / "m" / v2.sha256).exists()


def test_smoke_failure_refuses_the_version(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    # v2's manifest records smoke outputs of another model: signed, but wrong.
    v2 = source.publish("m", 2, models[2])
    other = MemorySource()
    other.publish("m", 2, models[3])
    wrong_manifest_path = "models/m/2/manifest.json"
    import orjson

    good = orjson.loads(source.blobs[wrong_manifest_path])
    good["smoke"] = orjson.loads(other.blobs[wrong_manifest_path])["smoke"]
    forged = orjson.dumps(good, option=orjson.OPT_SORT_KEYS)
    from modelfleet.hashing import sha256_bytes
    from modelfleet.rollout.desired_state import ArtefactRef

    source.blobs[wrong_manifest_path] = forged
    source.catalog[wrong_manifest_path] = (sha256_bytes(forged), len(forged))
    v2 = ArtefactRef("m", 2, v2.sha256, v2.length, sha256_bytes(forged), len(forged))
    source.assign(DEVICE, v2)
    result = updater.run_cycle()
    assert [r.kind for r in result.refusals] == ["check"]
    assert "smoke vector" in result.refusals[0].reason
    assert served_version(host) == "1"


def test_director_catalog_disagreement_is_refused(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    from modelfleet.rollout.desired_state import ArtefactRef

    v1 = source.publish("m", 1, models[1])
    bogus = ArtefactRef("m", 1, "0" * 64, v1.length, v1.manifest_sha256, v1.manifest_length)
    source.assign(DEVICE, bogus)
    host = ModelHost()
    result = make_updater(tmp_path, source, host).run_cycle()
    # The signed manifest is fetched first (issue 10): it names the catalog's digest.
    assert "director named m v1 (000000000000)" in result.refusals[0].reason
    assert host.route("m") is None


def test_split_mode_serves_candidate_beside_production(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    v1 = source.publish("m", 1, models[1])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    source.assign(DEVICE, v1, source.publish("m", 2, models[2]), Mode.SPLIT, 0.3)
    updater.run_cycle()
    route = host.route("m")
    assert route is not None and route.candidate is not None
    assert (route.production.version, route.candidate.version, route.share) == ("1", "2", 0.3)
    # rollback with a candidate drops the candidate
    updater.rollback()
    route = host.route("m")
    assert route is not None and route.candidate is None and route.production.version == "1"


def test_restart_serves_from_disk_with_hub_offline(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    make_updater(tmp_path, source).run_cycle()
    source.offline = True
    host = ModelHost()
    again = make_updater(tmp_path, source, host)
    assert again.restore() == []
    assert served_version(host) == "1"
    result = again.run_cycle()
    assert "unreachable" in result.error
    assert served_version(host) == "1"
    out = host.route("m").production.infer({"X": np.zeros((1, 10), np.float32)})  # type: ignore[union-attr]
    assert set(out) == {"label", "probabilities"}


def test_rollback_with_nothing_to_go_back_to_is_an_error(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater = make_updater(tmp_path, source)
    updater.run_cycle()
    with pytest.raises(InvalidInputError, match="nothing to roll back"):
        updater.rollback()


def test_desired_state_for_another_device_is_ignored(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    source.assign("other", source.publish("m", 1, models[1]))
    source.desired[DEVICE] = source.desired["other"]
    host = ModelHost()
    result = make_updater(tmp_path, source, host).run_cycle()
    assert "not this one" in result.error
    assert host.route("m") is None


def test_previous_is_not_kept_loaded_when_memory_is_short(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    make_updater(tmp_path, source).run_cycle()
    # a restarted agent on a device with 64 MiB free: v1 is on disk only
    host = ModelHost()
    updater = Updater(DEVICE, tmp_path, source, host, ManualClock(), memory=lambda: 64 << 20)
    source.assign(DEVICE, source.publish("m", 2, models[2]))
    updater.run_cycle()
    route = host.route("m")
    assert route is not None and route.previous is None
    assert updater.state.models["m"].previous is not None  # still on disk for rollback
    updater.rollback()
    assert served_version(host) == "1"


def test_byte_identical_versions_are_still_distinct_versions(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, models[1]))  # same bytes, new version
    updater.run_cycle()
    assert served_version(host) == "2"
    slots = updater.state.models["m"]
    assert (slots.active.version, slots.previous.version) == (2, 1)  # type: ignore[union-attr]
    # each version keeps its own signed manifest: folders are keyed by the manifest's digest
    folders = {r.version: Path(r.path) for r in (slots.active, slots.previous) if r}
    assert folders[1] != folders[2]
    for version, folder in folders.items():
        assert PackageManifest.from_json((folder / "manifest.json").read_bytes()).version == version
    updater.rollback()
    assert served_version(host) == "1"


def test_idle_polls_do_not_rewrite_the_state_file(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    clock = ManualClock()
    updater = Updater(DEVICE, tmp_path, source, ModelHost(), clock)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    state_file = tmp_path / "state.json"
    written = state_file.stat().st_ino
    for _ in range(5):
        clock.advance(10)
        updater.run_cycle()
    assert state_file.stat().st_ino == written  # atomic replace would change the inode
    clock.advance(300)
    updater.run_cycle()
    assert state_file.stat().st_ino != written


def test_production_rollback_leaves_no_previous_to_flip_back_to(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, models[2]))
    updater.run_cycle()
    updater.rollback(reason="bad v2")
    slots = updater.state.models["m"]
    assert slots.active is not None and slots.active.version == 1 and slots.previous is None
    with pytest.raises(InvalidInputError, match="nothing to roll back"):
        updater.rollback()  # a second rollback does not flip back to v2
    assert served_version(host) == "1"


def test_rollbacks_are_kept_as_structured_records_until_the_hub_applies_them(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    updater = make_updater(tmp_path, source)
    v1 = source.publish("m", 1, models[1])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    serial = source.assign(DEVICE, v1, source.publish("m", 2, models[2]), Mode.SPLIT, 0.5)
    updater.run_cycle()
    done = updater.rollback(reason="guard: p99 too high")["rolled_back"][0]
    records = updater.status()["rollbacks"]
    assert records == [
        {
            "id": done["id"],
            "at": records[0]["at"],
            "model": "m",
            "kind": "candidate",
            "from_version": 2,
            "to_version": 1,
            "reason": "guard: p99 too high",
            "serial": serial,
        }
    ]
    assert len(done["id"]) == 32
    # kept across a restart, dropped once the hub lists it in applied_rollbacks
    assert load_state(tmp_path, DEVICE).rollbacks[0].id == done["id"]
    updater.acknowledge_rollbacks(["unknown"])
    assert len(updater.status()["rollbacks"]) == 1
    updater.acknowledge_rollbacks([done["id"]])
    assert updater.status()["rollbacks"] == []
    assert load_state(tmp_path, DEVICE).rollbacks == []


def test_only_the_last_50_rollbacks_are_kept(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    updater = make_updater(tmp_path, source)
    v1 = source.publish("m", 1, models[1])
    v2 = source.publish("m", 2, models[2])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    for _ in range(55):
        source.assign(DEVICE, v1, v2, Mode.SPLIT, 0.5)
        updater.run_cycle()
        updater.rollback()
    assert len(updater.status()["rollbacks"]) == 50


def test_one_transient_download_failure_is_retried_until_installed(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    # issue 6, defect 12: one HTTP 503 used to leave the version never installed
    clock = ManualClock()
    host = ModelHost()
    updater = Updater(
        DEVICE, tmp_path, source, host, clock, retry=BackoffPolicy(2.0, 60.0), rand=lambda: 0.5
    )
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, models[2]))
    source.failures.append(TransportError("artefact models/m/2/model.onnx: HTTP 503"))
    result = updater.run_cycle()
    assert [p.version for p in result.retrying] == [2] and not result.refusals
    status = updater.status()
    assert status["update_status"].startswith("retrying: m v2: artefact models/m/2/model.onnx")
    assert status["pending"][0]["attempts"] == 1
    assert status["applied_serial"] == 1  # not advanced past a failed install
    assert served_version(host) == "1"
    # not retried before its backoff (2 s * 0.5) is over ...
    downloads = source.downloads
    assert not updater.run_cycle().changed
    assert source.downloads == downloads
    assert updater.retry_in() == pytest.approx(1.0)
    # ... then installed
    clock.advance(1.0)
    result = updater.run_cycle()
    assert result.changed and not result.retrying
    assert served_version(host) == "2"
    status = updater.status()
    assert status["applied_serial"] == 2 and status["pending"] == []
    assert status["update_status"] == "up to date (serial 2)"


def test_failed_retries_back_off_exponentially_up_to_the_cap(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    clock = ManualClock()
    updater = Updater(
        DEVICE,
        tmp_path,
        source,
        ModelHost(),
        clock,
        retry=BackoffPolicy(2.0, 10.0),
        rand=lambda: 0.99,
    )
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    waits = []
    for _ in range(5):
        source.failures.append(TransportError("HTTP 503"))
        updater.run_cycle()
        wait = updater.retry_in()
        assert wait is not None
        waits.append(round(wait, 2))
        clock.advance(wait)
    assert waits == [1.98, 3.96, 7.92, 9.9, 9.9]
    assert updater.status()["pending"][0]["attempts"] == 5
    updater.run_cycle()
    assert served_version(updater.host) == "1"


def test_trust_refusal_is_reported_as_refused_not_retrying(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    updater = make_updater(tmp_path, source)
    v1 = source.publish("m", 1, models[1])
    path = "models/m/1/model.onnx"
    source.catalog[path] = ("0" * 64, v1.length)  # the signed catalog itself says no
    source.assign(DEVICE, v1)
    result = updater.run_cycle()
    assert result.refusals and not result.retrying
    assert result.refusals[0].kind == "trust"
    status = updater.status()
    assert status["update_status"].startswith("refused: m v1: ")
    assert status["pending"] == []
    downloads = source.downloads
    updater.run_cycle()  # same serial: not retried
    assert source.downloads == downloads


def test_status_and_rollback_answer_while_a_download_is_in_progress(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    # issue 6, defect 13: the cycle held the updater's lock for the whole download
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    v1 = source.publish("m", 1, models[1])
    source.assign(DEVICE, v1)
    updater.run_cycle()
    source.assign(DEVICE, v1, source.publish("m", 2, models[2]), Mode.SPLIT, 0.5)
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 3, models[3]))
    source.gate = threading.Event()
    worker = threading.Thread(target=updater.run_cycle)
    worker.start()
    try:
        assert source.waiting.wait(10)
        assert updater.status()["update_status"].startswith("downloading: m v3")
        done = updater.rollback(reason="operator")  # answered while v3 downloads
        assert done["rolled_back"][0]["from"] == 2
    finally:
        source.gate.set()
        worker.join(10)
    assert served_version(host) == "3"


def test_a_newer_desired_state_supersedes_the_one_being_downloaded(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, models[2]))
    check = updater.check()
    assert check.desired is not None and updater.due(check.desired)
    source.gate = threading.Event()
    cancel = threading.Event()
    results = []
    worker = threading.Thread(target=lambda: results.append(updater.apply(check.desired, cancel)))  # type: ignore[arg-type]
    worker.start()
    assert source.waiting.wait(10)
    cancel.set()  # what the update loop does when serial 3 arrives
    worker.join(10)
    assert results[0].superseded and source.cancelled == 1
    assert served_version(host) == "1"
    source.gate = None
    source.assign(DEVICE, source.publish("m", 3, models[3]))
    assert updater.run_cycle().changed
    assert served_version(host) == "3"


def _tampered_v2(source: MemorySource, models: dict[int, bytes]) -> str:
    """Publish and assign v2 with one byte of its model flipped; return the blob's path."""
    v2 = source.publish("m", 2, models[2])
    path = "models/m/2/model.onnx"
    data = bytearray(source.blobs[path])
    data[len(data) // 2] ^= 0xFF
    source.blobs[path] = bytes(data)
    source.assign(DEVICE, v2)
    return path


def test_bad_bytes_are_refused_then_retried_and_install_once_a_good_copy_arrives(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    # issue 11: a refusal for bad bytes used to be pinned to the serial, so a re-made
    # stick (or a mirror that repaired its cache) with the same serial was never tried
    clock = ManualClock()
    host = ModelHost()
    updater = Updater(
        DEVICE, tmp_path, source, host, clock, retry=BackoffPolicy(2.0, 60.0), rand=lambda: 0.5
    )
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    path = _tampered_v2(source, models)
    result = updater.run_cycle()
    assert [r.kind for r in result.refusals] == ["delivery"]
    assert [p.version for p in result.retrying] == [2]
    status = updater.status()
    assert "hash mismatch" in status["last_refusal"]["reason"]
    assert "refused: m v2" in status["update_status"]
    assert status["update_status"].startswith("retrying: m v2")
    assert status["refused"] == {}  # not pinned to the serial
    assert served_version(host) == "1"
    downloads = source.downloads
    assert not updater.run_cycle().changed  # not before its backoff (2 s * 0.5)
    assert source.downloads == downloads
    source.blobs[path] = models[2]  # the good copy
    clock.advance(1.0)
    result = updater.run_cycle()
    assert result.changed and not result.retrying and not result.refusals
    assert served_version(host) == "2"
    status = updater.status()
    assert status["update_status"] == "up to date (serial 2)"
    assert status["last_refusal"] is None and status["applied_serial"] == 2


def test_bad_bytes_left_in_place_are_retried_with_capped_backoff_each_retry_logged(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    clock = ManualClock()
    updater = Updater(
        DEVICE, tmp_path, source, ModelHost(), clock, retry=BackoffPolicy(2.0, 10.0),
        rand=lambda: 0.99,
    )  # fmt: skip
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    _tampered_v2(source, models)
    waits = []
    for _ in range(5):
        updater.run_cycle()
        wait = updater.retry_in()
        assert wait is not None
        waits.append(round(wait, 2))
        clock.advance(wait)
    assert waits == [1.98, 3.96, 7.92, 9.9, 9.9]  # never hot: capped
    status = updater.status()
    assert status["pending"][0]["attempts"] == 5
    assert [e["kind"] for e in status["events"]].count("retrying") == 5
    assert status["last_refusal"]["version"] == 2  # still says why until an install works
    assert served_version(updater.host) == "1"


def test_a_changed_update_folder_makes_the_retry_due_at_once(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    clock = ManualClock()
    medium = ["stick-1"]
    updater = Updater(
        DEVICE, tmp_path, source, ModelHost(), clock, retry=BackoffPolicy(60.0, 300.0),
        rand=lambda: 0.9, medium=lambda: medium[0],
    )  # fmt: skip
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    path = _tampered_v2(source, models)
    assert updater.run_cycle().refusals
    downloads = source.downloads
    assert not updater.run_cycle().changed  # same stick: waits for its backoff (54 s)
    assert source.downloads == downloads
    source.blobs[path] = models[2]
    medium[0] = "stick-2"  # the operator mounts a re-made stick
    result = updater.run_cycle()  # no clock advance
    assert result.changed and served_version(updater.host) == "2"
    assert updater.status()["update_status"] == "up to date (serial 2)"


def test_a_refusal_the_signed_metadata_makes_stays_pinned_even_when_the_folder_changes(
    tmp_path: Path, source: MemorySource, models: dict[int, bytes]
) -> None:
    medium = ["stick-1"]
    updater = Updater(
        DEVICE, tmp_path, source, ModelHost(), ManualClock(), medium=lambda: medium[0]
    )
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    v2 = source.publish("m", 2, models[2])
    source.catalog["models/m/2/model.onnx"] = ("0" * 64, v2.length)  # director ≠ catalog
    source.assign(DEVICE, v2)
    assert [r.kind for r in updater.run_cycle().refusals] == ["trust"]
    medium[0] = "stick-2"
    downloads = source.downloads
    assert not updater.run_cycle().refusals  # same serial: not tried again
    assert source.downloads == downloads
    assert updater.status()["update_status"].startswith("refused: m v2")
