"""The agent's device credential: kept on disk atomically, renewed before it expires
(issue 10, ADR 0026).

An expired or refused credential only stops the agent talking to the hub: serving, the
local guard and rollbacks from disk never depend on it (Azure IoT Edge devices stop after
~25 days offline on certificate renewal, iotedge#7321; an agent here must not). Renewal
is retried with capped exponential backoff and full jitter (:mod:`modelfleet.backoff`)
until the hub is back. The new credential is written to disk *before* the agent switches
to it; the hub accepts the old one for a grace window meanwhile, so a power cut between
the hub's answer and the write bricks nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from modelfleet._atomic import atomic_write_bytes
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import Clock
from modelfleet.errors import (
    ConfigError,
    ModelfleetError,
    NotFoundError,
    StorageError,
    UnauthenticatedError,
)

__all__ = [
    "CREDENTIAL_FILE",
    "CredentialRenewer",
    "CredentialStore",
    "CurrentCredential",
    "StoredCredential",
    "choose_credential",
    "renewal_due",
    "token_origin",
]

log = logging.getLogger("modelfleet.agent.credentials")

CREDENTIAL_FILE = "credential.json"

#: Renew when less than this is left (a third of the hub's default 90-day lifetime).
DEFAULT_RENEW_BEFORE_S = 30 * 86_400.0


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """The credential the agent uses (``not_after`` None: not known yet). ``origin`` is the
    SHA-256 of the configured token it descends from (renewals keep it): a configured token
    that no longer matches means the operator gave a new one, which then wins."""

    device_id: str
    token: str
    credential_id: str | None = None
    not_after: datetime | None = None
    origin: str | None = None

    def __repr__(self) -> str:  # never the secret
        return f"StoredCredential({self.device_id!r}, id={self.credential_id!r})"

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> StoredCredential:
        """From the hub's enrolment or rotation answer.

        Raises:
            StorageError: the answer lacks the credential or its expiry.
        """
        try:
            return cls(
                str(answer["device_id"]),
                str(answer["token"]),
                str(answer["credential_id"]),
                datetime.fromisoformat(str(answer["not_after"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(f"the hub's credential answer is incomplete: {e}") from e


def token_origin(token: str) -> str:
    """The SHA-256 hex of a configured token (what :attr:`StoredCredential.origin` holds)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def choose_credential(
    stored: StoredCredential | None, device_id: str, configured: str
) -> StoredCredential:
    """The credential to start with (pure): the stored one when it is this device's and
    descends from the configured token (or is it); else the configured token, afresh."""
    origin = token_origin(configured)
    mine = stored is not None and stored.device_id == device_id
    if stored is not None and mine and origin in (stored.origin, token_origin(stored.token)):
        return stored if stored.origin else replace(stored, origin=origin)
    return StoredCredential(device_id, configured, origin=origin)


def renewal_due(cred: StoredCredential, now: datetime, renew_before_s: float) -> bool:
    """Whether to renew now (pure): less than ``renew_before_s`` left, or already expired.
    A credential whose expiry is unknown (a legacy token) is never due."""
    if cred.not_after is None:
        return False
    return now >= cred.not_after - timedelta(seconds=renew_before_s)


class CredentialStore:
    """``STATE_DIR/credential.json`` (mode 600), written atomically (temp, fsync, replace)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CREDENTIAL_FILE

    def load(self) -> StoredCredential | None:
        """The stored credential, or None when there is none.

        Raises:
            ConfigError: the file is there but unreadable or malformed.
        """
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the device credential {self.path}: {e}") from e
        try:
            not_after = data.get("not_after")
            return StoredCredential(
                str(data["device_id"]),
                str(data["token"]),
                data.get("credential_id"),
                datetime.fromisoformat(not_after) if not_after else None,
                data.get("origin"),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the device credential {self.path} is malformed: {e}") from e

    def save(self, cred: StoredCredential) -> None:
        """Write ``cred`` atomically, readable by the owner only.

        Raises:
            StorageError: it cannot be written.
        """
        body = {
            "device_id": cred.device_id,
            "token": cred.token,
            "credential_id": cred.credential_id,
            "not_after": cred.not_after.isoformat() if cred.not_after else None,
            "origin": cred.origin,
        }
        try:
            atomic_write_bytes(self.path, orjson.dumps(body), mode=0o600)
        except OSError as e:
            raise StorageError(f"cannot write the device credential {self.path}: {e}") from e


class CurrentCredential:
    """The credential in use, shared by every link to the hub (thread-safe); calling it
    gives the token, so links read it per request and follow a rotation."""

    def __init__(self, cred: StoredCredential) -> None:
        self._cred = cred
        self._lock = threading.Lock()

    def __call__(self) -> str:
        return self._cred.token

    def get(self) -> StoredCredential:
        return self._cred

    def replace(self, cred: StoredCredential) -> None:
        with self._lock:
            self._cred = cred


class CredentialRenewer:
    """Renews the credential when due, at most one try per backoff delay; never raises
    (every failure is logged: the agent keeps serving whatever happens here). A token that
    is not a device credential (one minted before issue 10) is exchanged for one at once.

    Args:
        current: the credential in use.
        store: where the renewed credential is written before it is used.
        rotate: ``token -> answer``: the hub's rotation for that credential
            (``HttpHubLink.rotate_credential``).
        whoami: ``() -> answer``: learns the expiry of a credential given without one.
        clock: wall time (expiry) and monotonic time (retry pacing).
        backoff: delays between failed tries (full jitter).
        rand: uniform random source in [0, 1).
        renew_before_s: renew when less than this is left.
    """

    def __init__(
        self,
        current: CurrentCredential,
        store: CredentialStore,
        rotate: Callable[[str], Mapping[str, Any]],
        whoami: Callable[[], Mapping[str, Any]],
        clock: Clock,
        *,
        backoff: BackoffPolicy | None = None,
        rand: Callable[[], float] = random.random,
        renew_before_s: float = DEFAULT_RENEW_BEFORE_S,
    ) -> None:
        self._current = current
        self._store = store
        self._rotate = rotate
        self._whoami = whoami
        self._clock = clock
        self._backoff = backoff or BackoffPolicy(base_s=30.0, cap_s=3600.0)
        self._rand = rand
        self._renew_before_s = renew_before_s
        self._next_try = float("-inf")
        self.failures = 0
        self._unsaved = False
        self._asked_expiry = False
        self._no_rotation = False
        self.last_error = ""

    def tick(self) -> bool:
        """Renew if due and not waiting out a backoff; whether a new credential is in use."""
        mono = self._clock.monotonic()
        if self._unsaved:
            self._save(self._current.get())
        if mono < self._next_try:
            return False
        cred = self._current.get()
        if cred.not_after is None and not self._asked_expiry and cred.token.startswith("mfd_"):
            self._learn_expiry(cred)
            cred = self._current.get()
        legacy = not cred.token.startswith("mfd_") and not self._no_rotation
        if not legacy and not renewal_due(cred, self._clock.now(), self._renew_before_s):
            return False
        try:
            fresh = replace(
                StoredCredential.from_answer(self._rotate(cred.token)), origin=cred.origin
            )
        except NotFoundError:  # a hub from before issue 10: nothing to renew there
            self._no_rotation = True
            log.info("the hub has no credential renewal; keeping the token as it is")
            return False
        except ModelfleetError as e:
            self._failed(f"credential renewal failed: {e}")
            return False
        # Disk first (the hub still accepts the old one for its grace window), then use it.
        self._save(fresh)
        self._current.replace(fresh)
        self.failures, self.last_error = 0, ""
        log.info(
            "device credential renewed: %s until %s",
            fresh.credential_id,
            fresh.not_after.isoformat() if fresh.not_after else "?",
        )
        return True

    def _learn_expiry(self, cred: StoredCredential) -> None:
        try:
            identity = self._whoami()
            info = identity.get("credential")
        except UnauthenticatedError:
            # Refused already (expired while offline?): renewal is the one way back.
            self._asked_expiry = True
            self._current.replace(replace(cred, not_after=self._clock.now()))
            return
        except ModelfleetError as e:
            self._failed(f"cannot learn the credential's expiry: {e}")
            return
        self._asked_expiry = True
        if identity.get("device_id") != cred.device_id:
            return  # another device's token: the identity check refuses it; never store it
        if isinstance(info, Mapping) and info.get("not_after"):
            try:
                not_after = datetime.fromisoformat(str(info["not_after"]))
            except ValueError:
                return
            learnt = replace(cred, credential_id=str(info.get("id")), not_after=not_after)
            self._current.replace(learnt)
            self._save(learnt)

    def _save(self, cred: StoredCredential) -> None:
        try:
            self._store.save(cred)
        except StorageError as e:  # keep using it in memory; write it again next tick
            self._unsaved = True
            log.error("%s (the credential is kept in memory; writing it again later)", e)
        else:
            self._unsaved = False

    def _failed(self, message: str) -> None:
        self.failures += 1
        delay = self._backoff.delay(self.failures, self._rand)
        self._next_try = self._clock.monotonic() + delay
        self.last_error = message
        log.warning("%s; next try in %.0f s (still serving)", message, delay)
