"""The update loop: poll the director, apply on a worker, check in with the hub.

A shell around :class:`~modelfleet.agent.updater.Updater`; its timing is pure
(:mod:`modelfleet.backoff`) and its random source injected.

Staggered pulls (issue 11, ADR 0038): with a pull window or an off-shift period, a new
serial that needs a download waits until :func:`modelfleet.rollout.stagger.pull_at` (the
model already running keeps serving meanwhile). A serial whose versions are all in slots
already (a hub rollback, a smaller set) applies at once, and so does a retry of a serial
whose download already began: staggering spreads downloads, nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from modelfleet.agent.cycle import to_install
from modelfleet.agent.hub_link import HubLink, check_identity
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy, jittered_interval
from modelfleet.errors import ForbiddenError, NotFoundError, TransportError, UnauthenticatedError
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.rollout.stagger import OffShift, pull_at

__all__ = ["IdentityCheck", "Reporter", "UpdateLoop", "verify_token"]

log = logging.getLogger("modelfleet.agent")


#: Status fields that change every cycle without anything having happened.
_VOLATILE_STATUS = ("last_check", "loaded", "guard")

#: (report) -> the hub's answer (``{"applied_rollbacks": [...]}``), or None.
Reporter = Callable[[dict[str, Any]], Mapping[str, Any] | None]


def verify_token(link: HubLink, device_id: str) -> bool:
    """Ask the hub who the token is and refuse one that is not this device's (contract 3).

    Returns:
        True when checked (or the hub is too old to say), False when the hub could not
        be asked (unreachable, or it did not accept the token): ask again later.

    Raises:
        ForbiddenError: the token is another role's or another device's.
    """
    try:
        check_identity(link.whoami(), device_id)
    except NotFoundError:
        log.warning("the hub has no /api/v1/whoami: cannot check that the token is this device's")
    except UnauthenticatedError as e:
        log.error("%s", e)
        return False
    except TransportError as e:
        log.debug("cannot check the token yet: %s", e)
        return False
    return True


IdentityCheck = Callable[[], bool]


@dataclass
class _Job:
    """An apply in progress on its own thread (so the loop keeps polling meanwhile)."""

    serial: int
    thread: threading.Thread
    cancel: threading.Event = field(default_factory=threading.Event)


class UpdateLoop:
    """Background thread: poll the director, apply on a worker, report to the hub.

    Polls are spread by jitter; while the hub is unreachable they back off (capped
    exponential, full jitter) so a fleet does not return in lockstep. An apply runs on
    its own thread: the loop keeps polling, and a newer desired state cancels a download
    still in progress. A check-in is sent when the status changed, when
    :meth:`report_soon` asked for one, or every ``heartbeat`` seconds.

    Args:
        updater: the update cycle.
        interval: seconds between routine polls (before jitter).
        reporter: sends a check-in; its answer's ``applied_rollbacks`` are acknowledged.
        heartbeat: longest time between two check-ins.
        backoff: delays between polls while the hub is unreachable.
        rand: uniform random source in [0, 1) for jitter.
        identity: checks the token on first contact (see :func:`verify_token`); until it
            passes nothing is polled or reported.
        renew: called first in every tick (``CredentialRenewer.tick``, issue 10): renews
            the device credential when due; it never raises and never stops the loop.
        pull_window_s: spread the download of a new serial over this many seconds
            (0: none; with ``off_shift``: the whole period).
        off_shift: start those downloads inside this daily UTC period (None: any time).
    """

    def __init__(
        self,
        updater: Updater,
        interval: float,
        reporter: Reporter | None = None,
        heartbeat: float = 60.0,
        *,
        backoff: BackoffPolicy | None = None,
        rand: Callable[[], float] = random.random,
        identity: IdentityCheck | None = None,
        renew: Callable[[], object] | None = None,
        pull_window_s: float = 0.0,
        off_shift: OffShift | None = None,
    ) -> None:
        self.updater = updater
        self.interval = interval
        self.reporter = reporter
        self.heartbeat = heartbeat
        self.backoff = backoff or BackoffPolicy(base_s=interval, cap_s=max(interval, 300.0))
        self._rand = rand
        self._identity = identity
        self._renew = renew
        self._pull_window_s = pull_window_s
        self._off_shift = off_shift
        #: (serial, when its download may start) of the newest serial that had to wait.
        self._scheduled: tuple[int, datetime] | None = None
        self.refused = ""
        self._failures = 0
        self._forced = True
        self._last_sent_key = b""
        self._last_sent_at = float("-inf")
        self._job: _Job | None = None
        self._fast = reporter is not None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelfleet-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        job = self._job
        if job is not None:
            job.cancel.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)
        if job is not None:
            job.thread.join(timeout=30)

    def report_soon(self) -> None:
        self._forced = True
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for the apply in progress, if any, to end; whether it did."""
        job = self._job
        if job is None:
            return True
        job.thread.join(timeout)
        return not job.thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:  # the loop must survive anything; the reason is logged
                log.exception("update cycle failed")
                delay = self.interval
            if delay is None:
                return
            self._wake.wait(delay)
            self._wake.clear()

    def tick(self) -> float | None:
        """One poll (and check-in); returns the seconds to wait, or None to stop."""
        if self._renew is not None:
            self._renew()  # before the identity check: an expired credential renews first
        if self._identity is not None:
            try:
                checked = self._identity()
            except ForbiddenError as e:
                self.refused = str(e)
                log.error("%s; updates and check-ins stopped (still serving from disk)", e)
                self.updater.note_problem(f"token refused: {e}")
                return None
            if not checked:
                self._failures += 1
                return self.backoff.delay(self._failures, self._rand)
            self._identity = None
        hub_tuf: object = None
        if self._fast:
            # The check-in is the poll (issue 8): its answer says whether TUF changed.
            answer = self._report(always=True)
            if answer is not None:
                hub_tuf = answer.get("tuf")
                if not isinstance(hub_tuf, Mapping):
                    self._fast = False  # an older hub: check in on change only, as before
                    hub_tuf = None
        check = self.updater.check(hub_tuf)
        self._failures = 0 if check.reachable else self._failures + 1
        if check.desired is not None:
            self._maybe_apply(check.desired)
        if not self._fast:
            self._report()
        if not check.reachable:
            return self.backoff.delay(self._failures, self._rand)
        delay = jittered_interval(self.interval, self._rand)
        retry = self.updater.retry_in()
        if retry is not None:
            delay = min(delay, retry)
        waiting = self._waiting_for()
        if waiting is not None:
            delay = min(delay, max(0.0, (waiting[1] - self.updater.clock.now()).total_seconds()))
        return delay

    def status(self) -> dict[str, Any]:
        """The updater's status; while a staggered download waits, its ``update_status``
        says so and ``pull_scheduled`` holds the serial and the time."""
        status = self.updater.status()
        waiting = self._waiting_for()
        if waiting is not None:
            serial, at = waiting
            status["update_status"] = (
                f"new serial {serial}: download scheduled at {_iso_minute(at)} (staggered)"
            )
            status["pull_scheduled"] = {"serial": serial, "at": at.isoformat()}
        return status

    def _waiting_for(self) -> tuple[int, datetime] | None:
        """The scheduled pull not yet due, if any (and not yet overtaken by an apply)."""
        scheduled = self._scheduled
        if scheduled is None or self.updater.clock.now() >= scheduled[1]:
            return None
        if self.updater.state.desired_serial >= scheduled[0]:
            return None  # applied (or attempted) meanwhile
        return scheduled

    def _pull_due(self, desired: DesiredState) -> bool:
        """Whether ``desired``'s downloads may start now (see the module docstring)."""
        if not self._pull_window_s and self._off_shift is None:
            return True
        state = self.updater.state
        if state.desired is not None and desired.serial == state.desired_serial:
            return True  # a retry: its own backoff applies, the download already began
        scheduled = self._scheduled
        if scheduled is None or scheduled[0] != desired.serial:
            # Read without the updater's lock: only this thread applies, and a guard
            # rollback in between changes no download this serial needs.
            if not to_install(desired, state):
                return True  # everything is in slots already: switch at once
            now = self.updater.clock.now()
            at = pull_at(
                self.updater.device_id, desired.serial, now, self._pull_window_s, self._off_shift
            )
            scheduled = self._scheduled = (desired.serial, at)
            log.info(
                "new serial %d: download scheduled at %s (staggered)",
                desired.serial,
                _iso_minute(at),
            )
            self._forced = True  # tell the hub when this device will pull
        return self.updater.clock.now() >= scheduled[1]

    def _maybe_apply(self, desired: DesiredState) -> None:
        job = self._job
        if job is not None and job.thread.is_alive():
            if desired.serial > job.serial and not job.cancel.is_set():
                log.info(
                    "desired state serial %d supersedes serial %d: abandoning its download",
                    desired.serial,
                    job.serial,
                )
                job.cancel.set()
            return
        if not self.updater.due(desired) or not self._pull_due(desired):
            return
        cancel = threading.Event()

        def work() -> None:
            try:
                self.updater.apply(desired, cancel)
            except Exception:
                log.exception("applying serial %d failed", desired.serial)
            finally:
                self._forced = True
                self._wake.set()  # report now, and pick up a newer serial at once

        thread = threading.Thread(target=work, name=f"modelfleet-apply-{desired.serial}")
        thread.daemon = True
        self._job = _Job(desired.serial, thread, cancel)
        thread.start()

    def _report(self, *, always: bool = False) -> Mapping[str, Any] | None:
        """Send a check-in when the status changed, one was asked for, the heartbeat is
        due, or ``always``; return the hub's answer (``{}`` when it said nothing; None: nothing
        sent, or it failed)."""
        if self.reporter is None:
            return None
        status = self.status()
        key = orjson.dumps(
            {k: v for k, v in status.items() if k not in _VOLATILE_STATUS},
            option=orjson.OPT_SORT_KEYS,
        )
        now = self.updater.clock.monotonic()
        unchanged = key == self._last_sent_key
        if (
            unchanged
            and not always
            and not self._forced
            and now - self._last_sent_at < self.heartbeat
        ):
            return None
        try:
            answer = self.reporter(status)
        except Exception as e:  # reporting is best effort
            log.debug("check-in failed (will retry): %s", e)
            return None
        self._forced = False
        self._last_sent_key = key
        self._last_sent_at = now
        applied = (answer or {}).get("applied_rollbacks")
        if isinstance(applied, list) and applied:
            self.updater.acknowledge_rollbacks([str(i) for i in applied])
        return answer or {}


def _iso_minute(at: datetime) -> str:
    """``2026-12-05T23:41Z``: the UTC minute, for status lines."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
