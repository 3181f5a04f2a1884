"""Device trust client end to end over loopback HTTP, and the attacks it must refuse."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfleet.delivery.http_fetcher import DownloadSettings
from modelfleet.errors import (
    ArtefactVerificationError,
    ConfigError,
    DeadlineExceededError,
    MetadataVerificationError,
    TransportError,
)
from modelfleet.hashing import sha256_file
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve


def _fetch_all(client: DeviceTrustClient, device: str, dest: Path) -> DesiredState:
    raw = client.fetch_desired_state(device)
    assert raw is not None
    state = DesiredState.from_json(raw)
    for a in state.assignments:
        p = a.production
        client.fetch_package_file(p.model_path, p.sha256, p.length, dest / p.model / "model.onnx")
        client.fetch_package_file(
            p.manifest_path, p.manifest_sha256, p.manifest_length, dest / p.model / "manifest.json"
        )
    return state


def test_happy_path_fetches_verified_desired_state_and_artefacts(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 2)
    blob = hub.assign("dev-1", ref)
    assert client.fetch_desired_state("dev-1") == blob
    state = _fetch_all(client, "dev-1", tmp_path / "slots")
    assert state.assignments[0].production == ref
    model = tmp_path / "slots" / "iris" / "model.onnx"
    assert sha256_file(model) == (ref.sha256, ref.length)
    assert not list(model.parent.glob(".*partial"))


def test_device_without_a_desired_state_gets_none(hub: Hub, client: DeviceTrustClient) -> None:
    hub.assign("someone-else", hub.publish("iris", 1))
    hub.sign_device("dev-1", None)  # enrolled: its own repository lists nothing
    assert client.fetch_desired_state("dev-1") is None


def test_new_desired_state_is_seen_on_the_next_cycle(hub: Hub, client: DeviceTrustClient) -> None:
    v1, v2 = hub.publish("iris", 1), hub.publish("iris", 2)
    hub.assign("dev-1", v1)
    assert client.fetch_desired_state("dev-1") is not None
    blob = hub.assign("dev-1", v2)
    assert client.fetch_desired_state("dev-1") == blob


def test_catalog_is_refreshed_once_per_cycle(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    v1 = hub.publish("iris", 1)
    hub.assign("dev-1", v1)
    client.fetch_desired_state("dev-1")
    client.fetch_package_file(v1.model_path, v1.sha256, v1.length, tmp_path / "a")
    v2 = hub.publish("iris", 2)  # published mid-cycle: not in this cycle's catalog view
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        client.fetch_package_file(v2.model_path, v2.sha256, v2.length, tmp_path / "b")
    client.begin_cycle()
    client.fetch_package_file(v2.model_path, v2.sha256, v2.length, tmp_path / "b")


def test_tampered_artefact_blob_on_the_hub_is_refused(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    blob = hub.store.path(ref.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    client.fetch_desired_state("dev-1")
    dest = tmp_path / "model.onnx"
    expected = r"artefact models/iris/1/model\.onnx: hash mismatch"
    with pytest.raises(ArtefactVerificationError, match=expected):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
    assert not dest.exists()
    assert not list(tmp_path.glob(".*partial"))


def test_oversized_artefact_blob_on_the_hub_is_refused(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    blob = hub.store.path(ref.sha256)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b"trailing payload")
    client.fetch_desired_state("dev-1")
    with pytest.raises(ArtefactVerificationError, match="longer than its signed length"):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m")


def test_tampered_timestamp_is_refused(hub: Hub, client: DeviceTrustClient) -> None:
    hub.assign("dev-1", hub.publish("iris", 1))
    data = hub.devices["dev-1"]["timestamp.json"]
    i = data.index(b'"version":') + len(b'"version":')
    # version 1 -> 91 in the device's own timestamp: the signature no longer covers it
    hub.devices["dev-1"]["timestamp.json"] = data[:i] + b"9" + data[i:]
    with pytest.raises(
        MetadataVerificationError, match=r"director timestamp\.json: signature verification failed"
    ):
        client.fetch_desired_state("dev-1")


def test_metadata_signed_by_a_foreign_key_is_refused(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    # An attacker with their own keys re-signs a complete repository in the hub's place.
    rogue = make_hub(tmp_path / "rogue")
    rogue.publish("iris", 1)
    for name in ("timestamp.json", "2.snapshot.json", "2.targets.json"):
        src = rogue.home / "tuf" / "catalog" / name
        (hub.home / "tuf" / "catalog" / name).write_bytes(src.read_bytes())
    client.fetch_desired_state("dev-1")
    with pytest.raises(MetadataVerificationError, match="signature verification failed"):
        client.fetch_package_file("models/iris/1/model.onnx", "0" * 64, 1, tmp_path / "m")


def test_expired_timestamp_is_refused(tmp_path: Path) -> None:
    old = make_hub(tmp_path / "hub", start=datetime.now(UTC) - timedelta(days=3))
    old.assign("dev-1", old.publish("iris", 1))
    with serve(old) as url:
        c = DeviceTrustClient(tmp_path / "dev", url, TOKEN, old.trust.trust_root_bundle())
        with pytest.raises(MetadataVerificationError, match=r"timestamp\.json.*expired"):
            c.fetch_desired_state("dev-1")


def test_expired_root_is_refused(tmp_path: Path) -> None:
    old = make_hub(tmp_path / "hub", start=datetime.now(UTC) - timedelta(days=400))
    with serve(old) as url:
        c = DeviceTrustClient(tmp_path / "dev", url, TOKEN, old.trust.trust_root_bundle())
        with pytest.raises(MetadataVerificationError, match="expired"):
            c.fetch_desired_state("dev-1")


def test_rolled_back_timestamp_is_refused(hub: Hub, client: DeviceTrustClient) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    old = hub.devices["dev-1"]["timestamp.json"]
    hub.trust.revoke_package("iris", 1)
    hub.assign("dev-1")  # the director now says: run nothing
    client.fetch_desired_state("dev-1")
    hub.devices["dev-1"]["timestamp.json"] = old  # replay the older, validly signed timestamp
    with pytest.raises(MetadataVerificationError, match="rollback"):
        client.fetch_desired_state("dev-1")


def test_director_hash_that_the_catalog_does_not_list_is_refused(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    client.fetch_desired_state("dev-1")
    with pytest.raises(ArtefactVerificationError, match="director and catalog disagree"):
        client.fetch_package_file(ref.model_path, "f" * 64, ref.length, tmp_path / "m")
    with pytest.raises(ArtefactVerificationError, match="director and catalog disagree"):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length + 1, tmp_path / "m")


def test_revoked_package_is_refused(hub: Hub, client: DeviceTrustClient, tmp_path: Path) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    hub.trust.revoke_package("iris", 1)
    client.fetch_desired_state("dev-1")
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m")


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_missing_token_is_a_transport_error(
    hub: Hub, hub_url: str, tmp_path: Path, token: str
) -> None:
    c = DeviceTrustClient(tmp_path / "dev", hub_url, token, hub.trust.trust_root_bundle())
    with pytest.raises(TransportError, match="HTTP 401"):
        c.fetch_desired_state("dev-1")


def test_unreachable_hub_is_a_transport_error(hub: Hub, tmp_path: Path) -> None:
    with serve(hub) as url:
        pass  # the port is closed again
    c = DeviceTrustClient(tmp_path / "dev", url, TOKEN, hub.trust.trust_root_bundle())
    with pytest.raises(TransportError):
        c.fetch_desired_state("dev-1")


def test_no_trust_root_and_empty_cache_is_a_config_error(hub_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trust-root"):
        DeviceTrustClient(tmp_path / "dev", hub_url, TOKEN, None)


def test_malformed_trust_root_bundle_is_a_config_error(hub_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DeviceTrustClient(tmp_path / "dev", hub_url, TOKEN, b'{"format": "other"}')


def test_trust_root_bundle_with_a_forged_root_signature_is_a_config_error(
    hub: Hub, hub_url: str, tmp_path: Path
) -> None:
    bundle = json.loads(hub.trust.trust_root_bundle())
    sig = bundle["director"]["signatures"][0]
    sig["sig"] = ("0" if sig["sig"][0] != "0" else "1") + sig["sig"][1:]
    with pytest.raises(ConfigError, match="director root is invalid"):
        DeviceTrustClient(tmp_path / "dev", hub_url, TOKEN, json.dumps(bundle).encode())


def test_trust_root_from_another_hub_refuses_this_hubs_metadata(
    hub: Hub, hub_url: str, tmp_path: Path
) -> None:
    other = make_hub(tmp_path / "other")
    c = DeviceTrustClient(tmp_path / "dev", hub_url, TOKEN, other.trust.trust_root_bundle())
    with pytest.raises(MetadataVerificationError, match="signature verification failed"):
        c.fetch_desired_state("dev-1")


def test_cached_roots_are_used_when_no_bundle_is_given(
    hub: Hub, client: DeviceTrustClient, hub_url: str, tmp_path: Path
) -> None:
    blob = hub.assign("dev-1", hub.publish("iris", 1))
    assert client.fetch_desired_state("dev-1") == blob
    again = DeviceTrustClient(tmp_path / "device", hub_url, TOKEN, None)
    assert again.fetch_desired_state("dev-1") == blob


def test_client_follows_resigned_metadata_and_a_rotated_root(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    blob = hub.assign("dev-1", ref)
    assert client.fetch_desired_state("dev-1") == blob
    hub.clock.advance(timedelta(days=250).total_seconds())
    done = hub.trust.refresh_expiring()
    assert {"catalog/root", "director/root", "director/timestamp"} <= set(done)
    # The device still holds the version-1 bundle; it walks to root version 2.
    assert client.fetch_desired_state("dev-1") == blob
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m")
    history = tmp_path / "device" / "catalog" / "metadata" / "root_history"
    assert (history / "2.root.json").is_file()


def test_already_verified_file_is_not_downloaded_again(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    dest = tmp_path / "m"
    client.fetch_desired_state("dev-1")
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
    hub.store.path(ref.sha256).chmod(0o644)
    hub.store.path(ref.sha256).write_bytes(b"tampered")  # would fail if fetched again
    before = dest.stat().st_mtime_ns
    assert client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest) == dest
    assert dest.stat().st_mtime_ns == before


# -- transient failures and slow links (issue 6, defects 12 and 13) ----------------------

#: Tight limits so a 1-byte-per-0.2-s artefact misses its deadline in about a second.
TIGHT = DownloadSettings(read_timeout_s=2.0, min_rate_bytes_s=1024.0, base_s=1.0, max_s=5.0)


def test_http_503_on_an_artefact_is_a_transport_error_and_the_next_try_succeeds(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    hub.faults.unavailable["model.onnx"] = 1
    assert client.fetch_desired_state("dev-1") is not None
    dest = tmp_path / "m.onnx"
    with pytest.raises(TransportError, match="HTTP 503") as err:
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
    assert not isinstance(err.value, DeadlineExceededError)
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
    assert sha256_file(dest) == (ref.sha256, ref.length)


def test_dripping_artefact_misses_its_deadline_sized_by_length(
    hub: Hub, hub_url: str, tmp_path: Path
) -> None:
    c = DeviceTrustClient(
        tmp_path / "dev", hub_url, TOKEN, hub.trust.trust_root_bundle(), download=TIGHT
    )
    ref = hub.publish("iris", 1, b"x" * 2048)  # deadline: 1 s + 2048 B / 1024 B/s = 3 s
    hub.assign("dev-1", ref)
    hub.faults.drip["model.onnx"] = 0.2
    assert c.fetch_desired_state("dev-1") is not None
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="deadline"):
        c.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m.onnx")
    assert 2.5 < time.monotonic() - started < 6.0
    assert not (tmp_path / "m.onnx").exists()
    c.close()


def test_director_can_be_polled_while_an_artefact_downloads_and_cancel_stops_it(
    hub: Hub, hub_url: str, tmp_path: Path
) -> None:
    c = DeviceTrustClient(tmp_path / "dev", hub_url, TOKEN, hub.trust.trust_root_bundle())
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    hub.faults.drip["model.onnx"] = 0.05
    assert c.fetch_desired_state("dev-1") is not None
    cancel = threading.Event()
    errors: list[Exception] = []

    def download() -> None:
        try:
            c.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m", cancel)
        except TransportError as e:
            errors.append(e)

    worker = threading.Thread(target=download)
    worker.start()
    try:
        newer = hub.assign("dev-1", hub.publish("iris", 2))
        started = time.monotonic()
        assert c.fetch_desired_state("dev-1") == newer  # not blocked by the download
        assert time.monotonic() - started < 2.0
    finally:
        cancel.set()
        worker.join(5)
    assert not worker.is_alive()
    assert "cancelled" in str(errors[0])
    c.close()
