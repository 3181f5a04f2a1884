"""The update cycle: install, switch, keep serving on every kind of failure, roll back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelfleet.agent.state import load_state
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
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
    assert result["rolled_back"] == [{"model": "m", "from": 2, "to": 1}]
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
    assert result.refusals[0].kind == "trust"
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
    assert "disagree" in result.refusals[0].reason
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
    tmp_path: Path, source: MemorySource, models: dict[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelfleet.agent.updater as updater_module

    host = ModelHost()
    updater = make_updater(tmp_path, source, host)
    source.assign(DEVICE, source.publish("m", 1, models[1]))
    updater.run_cycle()
    updater._loaded.clear()  # as after a restart: v1 is on disk only
    monkeypatch.setattr(updater_module, "available_memory_bytes", lambda: 64 << 20)
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
