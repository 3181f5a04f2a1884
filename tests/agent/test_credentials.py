"""The agent's device credential (issue 10, ADR 0026): written atomically before use,
renewed before expiry, retried with backoff and jitter while the hub refuses or is gone,
and an expired or refused credential never stops the loop (so never serving)."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from modelfleet.agent.credentials import (
    CredentialRenewer,
    CredentialStore,
    CurrentCredential,
    StoredCredential,
    renewal_due,
)
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError, StorageError, TransportError, UnauthenticatedError

DAY = 86_400.0


class _Hub:
    """The hub's rotation and whoami, in memory, failing as told."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.fail: Exception | None = None
        self.calls: list[str] = []
        self.issued = 0
        self.whoami_error: Exception | None = None

    def rotate(self, token: str) -> Mapping[str, Any]:
        self.calls.append(token)
        if self.fail is not None:
            raise self.fail
        self.issued += 1
        return {
            "device_id": "cam-1",
            "credential_id": f"dc_{self.issued}",
            "token": f"mfd_new{self.issued}",
            "not_after": (self.clock.now() + timedelta(days=90)).isoformat(),
        }

    def whoami(self) -> Mapping[str, Any]:
        if self.whoami_error is not None:
            raise self.whoami_error
        not_after = (self.clock.now() + timedelta(days=60)).isoformat()
        return {"role": "device", "device_id": "cam-1",
                "credential": {"id": "dc_0", "not_after": not_after}}  # fmt: skip


class _RecordingStore(CredentialStore):
    """A real store that also records what the credential in use was at each write."""

    def __init__(self, state_dir: Path, current: list[CurrentCredential]) -> None:
        super().__init__(state_dir)
        self.current = current
        self.in_use_at_save: list[str] = []
        self.broken = False

    def save(self, cred: StoredCredential) -> None:
        if self.broken:
            raise StorageError("disk full")
        self.in_use_at_save.append(self.current[0]())
        super().save(cred)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ManualClock, _Hub, CurrentCredential, _RecordingStore]:
    clock = ManualClock()
    hub = _Hub(clock)
    first = StoredCredential("cam-1", "mfd_old", "dc_0", clock.now() + timedelta(days=90))
    holder: list[CurrentCredential] = [CurrentCredential(first)]
    store = _RecordingStore(tmp_path, holder)
    return clock, hub, holder[0], store


def _renewer(setup: Any, **kw: Any) -> CredentialRenewer:
    clock, hub, current, store = setup
    return CredentialRenewer(
        current,
        store,
        hub.rotate,
        hub.whoami,
        clock,
        backoff=BackoffPolicy(base_s=10.0, cap_s=600.0),
        rand=lambda: 0.5,
        **kw,
    )


def test_the_store_writes_atomically_owner_only_and_reads_back(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    assert store.load() is None
    cred = StoredCredential("cam-1", "mfd_x", "dc_1", ManualClock().now())
    store.save(cred)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == cred
    assert not [p for p in tmp_path.iterdir() if p != store.path]  # no temp file left
    assert "mfd_x" not in repr(cred)


def test_a_malformed_stored_credential_is_a_clear_config_error(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text('{"token": 1}')
    with pytest.raises(ConfigError, match="malformed"):
        CredentialStore(tmp_path).load()


def test_renewal_is_due_only_near_expiry_and_never_for_an_unknown_expiry() -> None:
    now = ManualClock().now()
    cred = StoredCredential("d", "t", "c", now + timedelta(days=40))
    assert not renewal_due(cred, now, 30 * DAY)
    assert renewal_due(cred, now + timedelta(days=11), 30 * DAY)
    assert not renewal_due(StoredCredential("d", "t"), now, 30 * DAY)


def test_nothing_is_renewed_while_far_from_expiry(setup: Any) -> None:
    renewer = _renewer(setup)
    assert renewer.tick() is False
    assert setup[1].calls == []


def test_the_new_credential_is_written_before_it_is_used(setup: Any) -> None:
    clock, hub, current, store = setup
    renewer = _renewer(setup)
    clock.advance(61 * DAY)
    assert renewer.tick() is True
    assert hub.calls == ["mfd_old"]
    assert store.in_use_at_save == ["mfd_old"]  # on disk while the old one was still in use
    assert current() == "mfd_new1"
    loaded = store.load()
    assert loaded is not None and loaded.token == "mfd_new1"


def test_an_expired_credential_is_renewed_when_the_hub_is_back_with_backoff_and_jitter(
    setup: Any,
) -> None:
    clock, hub, current, _store = setup
    renewer = _renewer(setup)
    clock.advance(120 * DAY)  # offline well past expiry
    hub.fail = TransportError("cannot reach the hub")
    assert renewer.tick() is False
    attempts = len(hub.calls)
    # Backoff (base 10 s, doubling, full jitter at 0.5): 5, 10, 20 s between tries.
    for wait in (5.0, 10.0, 20.0):
        clock.advance(wait - 0.01)
        renewer.tick()
        assert len(hub.calls) == attempts  # not before the delay
        clock.advance(0.01)
        renewer.tick()
        attempts += 1
        assert len(hub.calls) == attempts
    assert renewer.failures == 4 and "cannot reach" in renewer.last_error
    hub.fail = None
    clock.advance(40.0)
    assert renewer.tick() is True
    assert current() == "mfd_new1" and renewer.failures == 0


def test_a_refused_renewal_is_logged_and_never_raises(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock, hub, current, _store = setup
    renewer = _renewer(setup)
    clock.advance(89 * DAY)
    hub.fail = UnauthenticatedError("the device credential has been revoked")
    with caplog.at_level("WARNING"):
        assert renewer.tick() is False
    assert "revoked" in caplog.text and "still serving" in caplog.text
    assert current() == "mfd_old"


def test_a_credential_without_a_known_expiry_learns_it_or_renews_when_refused(
    setup: Any,
) -> None:
    _clock, hub, current, _store = setup
    current.replace(StoredCredential("cam-1", "mfd_old"))
    renewer = _renewer(setup)
    renewer.tick()
    assert current.get().not_after is not None and hub.calls == []  # learnt: 60 days left
    current.replace(StoredCredential("cam-1", "mfd_old"))
    again = _renewer(setup)
    hub.whoami_error = UnauthenticatedError("expired")
    assert again.tick() is True  # the hub refuses it: renewal is the way back
    assert current() == "mfd_new1"


def test_a_failed_write_keeps_the_new_credential_in_memory_and_writes_it_later(
    setup: Any,
) -> None:
    clock, _hub, current, store = setup
    renewer = _renewer(setup)
    clock.advance(61 * DAY)
    store.broken = True
    assert renewer.tick() is True
    assert current() == "mfd_new1"
    store.broken = False
    renewer.tick()
    loaded = store.load()
    assert loaded is not None and loaded.token == "mfd_new1"


def test_a_refused_credential_never_stops_the_update_loop(setup: Any, tmp_path: Path) -> None:
    from modelfleet.agent.update_loop import UpdateLoop
    from modelfleet.agent.updater import Updater
    from modelfleet.serving.host import ModelHost
    from tests.agent.fakes import MemorySource

    clock, hub, current, _store = setup
    clock.advance(120 * DAY)  # expired while offline
    hub.fail = UnauthenticatedError("the device credential has been revoked")
    renewer = _renewer(setup)
    source = MemorySource()
    source.offline = True
    updater = Updater("cam-1", tmp_path / "agent", source, ModelHost(), clock)
    loop = UpdateLoop(
        updater,
        interval=10.0,
        backoff=BackoffPolicy(base_s=10.0, cap_s=80.0),
        rand=lambda: 0.5,
        identity=lambda: False,  # the hub does not accept the token (401)
        renew=renewer.tick,
    )
    delays = []
    for _ in range(5):
        delays.append(loop.tick())
        clock.advance(100.0)
    assert all(isinstance(d, float) and d > 0 for d in delays)  # never None: never stops
    assert loop.refused == "" and len(hub.calls) == 5  # renewal tried on every tick
    assert current() == "mfd_old"


def test_a_token_from_before_credentials_is_exchanged_once_and_an_old_hub_is_left_alone(
    setup: Any,
) -> None:
    from modelfleet.errors import NotFoundError

    _clock, hub, current, _store = setup
    current.replace(StoredCredential("cam-1", "mft_legacy"))
    renewer = _renewer(setup)
    assert renewer.tick() is True and current() == "mfd_new1"
    current.replace(StoredCredential("cam-1", "mft_legacy"))
    old_hub = _renewer(setup)
    hub.fail = NotFoundError("POST …/rotate: hub answered HTTP 404")
    assert old_hub.tick() is False
    assert old_hub.tick() is False and len(hub.calls) == 2  # asked once, not again
    assert current() == "mft_legacy"


def test_the_renewed_credential_wins_unless_the_operator_configured_a_new_token() -> None:
    from modelfleet.agent.credentials import choose_credential, token_origin

    renewed = StoredCredential("cam-1", "mfd_renewed", "dc_2", None, token_origin("mfd_given"))
    assert choose_credential(renewed, "cam-1", "mfd_given") is renewed  # descends from it
    fresh = choose_credential(renewed, "cam-1", "mfd_new_from_operator")
    assert fresh.token == "mfd_new_from_operator"
    assert choose_credential(renewed, "cam-2", "mfd_given").token == "mfd_given"  # not its own
    enrolled = StoredCredential("cam-1", "mfd_enrolled", "dc_1")  # `device enrol` wrote it
    assert choose_credential(enrolled, "cam-1", "mfd_enrolled").token == "mfd_enrolled"


def test_another_devices_token_is_never_written_down(setup: Any) -> None:
    _clock, hub, current, store = setup
    current.replace(StoredCredential("cam-1", "mfd_other"))
    hub.whoami = lambda: {"device_id": "cam-2", "credential": {"id": "x", "not_after": "2030"}}
    _renewer(setup).tick()
    assert store.load() is None and current.get().not_after is None
