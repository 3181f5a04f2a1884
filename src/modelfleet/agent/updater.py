"""The device's update cycle, a thin shell: fetch the director's word, install, switch.

The decisions are pure and live elsewhere: :mod:`modelfleet.agent.cycle` (screening a
desired state, the rollback rule of :mod:`modelfleet.rollout.assignment`),
:mod:`modelfleet.agent.plan` (what to install, the slots that result). Installing is
:mod:`modelfleet.agent.install`, the loaded-model cache :mod:`modelfleet.agent.models`.

The state lock is held only to read or change the state and to switch routes, never while
anything downloads (issue 6, defect 13): status and rollback answer during a download. An
install that fails for a transient reason is retried with backoff until it succeeds or is
refused (defect 12); ``update_status`` says which. An artefact whose delivered bytes do
not match its signed hash is refused *and* retried the same way, at once when the mounted
folder it came from changes (issue 11, :mod:`modelfleet.agent.refusals`).

Expired metadata (issue 11, ADR 0036: checked against the device's time floor) blocks new
installs and never unloads anything: what was verified and is running keeps serving, and
``update_status`` and :meth:`Updater.metadata_health` say so until fresh metadata arrives.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modelfleet.agent.cycle import (
    describe_switch,
    expired_status,
    needs_work,
    pending_after,
    rollback_record,
    rollback_slots,
    screen_desired,
    to_install,
    update_status,
    used_slot_keys,
)
from modelfleet.agent.install import (
    PackageSource,
    check_manifest_matches,
    install_version,
    smoke_test,
)
from modelfleet.agent.models import (
    MemoryProbe,
    ModelCache,
    ModelLoader,
    proc_meminfo_available,
    publish_route,
)
from modelfleet.agent.plan import SlotPlan, plan_slots, slot_key
from modelfleet.agent.refusals import (
    FailureKind,
    failure_kind,
    refusal_after_install,
    refusal_kind,
    retry_due,
)
from modelfleet.agent.slots import SlotStore
from modelfleet.agent.state import (
    AgentState,
    ModelSlots,
    PendingInstall,
    Refusal,
    SlotRecord,
    StateFile,
    load_state,
)
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import Clock
from modelfleet.errors import (
    InvalidInputError,
    MetadataExpiredError,
    ModelfleetError,
    TransportError,
    TrustError,
)
from modelfleet.packaging.target import DeviceProfile
from modelfleet.rollout.desired_state import (
    ArtefactRef,
    Assignment,
    DesiredState,
    model_target_path,
)
from modelfleet.serving.host import ModelHost

if TYPE_CHECKING:
    from modelfleet.trust.client import MetadataTimes

__all__ = [
    "CatalogView",
    "Check",
    "CycleResult",
    "EventHook",
    "FreshnessSource",
    "MetadataHealth",
    "MetadataTimeSource",
    "PackageSource",
    "SlotPlan",
    "Updater",
    "check_manifest_matches",
    "smoke_test",
]

log = logging.getLogger("modelfleet.agent")

#: Retries of a failed install: from a few seconds up to five minutes apart.
DEFAULT_RETRY = BackoffPolicy(base_s=2.0, cap_s=300.0)


#: (at, kind, message, model, version) of one state event.
EventHook = Callable[[str, str, str, "str | None", "str | None"], None]


@runtime_checkable
class FreshnessSource(Protocol):
    """A package source that can say, from the check-in answer, what changed (issue 8)."""

    def stale(self, device_id: str, answer: object, now: datetime) -> frozenset[str]:
        """The repositories (``catalog``, ``director``) to refresh."""
        ...

    def refresh_catalog(self) -> None:
        """Refresh the catalog's metadata now."""
        ...


@runtime_checkable
class CatalogView(Protocol):
    """A package source that can say whether the catalog still lists a version (issue 10:
    a revoked version is gone from it)."""

    def catalog_lists(self, target_path: str, sha256: str) -> bool:
        """Whether the verified catalog lists ``target_path`` with ``sha256`` now.

        Raises:
            TrustError, TransportError, StorageError: the catalog could not be refreshed.
        """
        ...


@runtime_checkable
class MetadataTimeSource(Protocol):
    """A package source that can say when its verified metadata expires (ADR 0036)."""

    def metadata_times(self, device_id: str) -> MetadataTimes:
        """Reference time, time floor and each repository's earliest cached expiry."""
        ...


@dataclass(frozen=True)
class MetadataHealth:
    """Whether this device's metadata is expired, for status and metrics (ADR 0036).

    Attributes:
        expired: the last refresh was refused as expired, or the cached metadata is
            expired at the reference time (no new installs until fresh metadata).
        reason: why, or "".
        expires: per repository, the earliest expiry of its cached metadata (None: not
            known).
        floor: the device's time floor, when the source keeps one.
    """

    expired: bool
    reason: str = ""
    expires: Mapping[str, datetime | None] = field(default_factory=dict)
    floor: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "expired": self.expired,
            "reason": self.reason,
            "expires": {r: None if t is None else t.isoformat() for r, t in self.expires.items()},
            "time_floor": None if self.floor is None else self.floor.isoformat(),
        }


@dataclass(frozen=True)
class Check:
    """What one look at the director found.

    Attributes:
        reachable: the hub answered (even if what it said was refused).
        desired: the screened desired state, or None (none, or refused: see ``error``).
        error: why nothing can be applied, or "".
    """

    reachable: bool
    desired: DesiredState | None = None
    error: str = ""


@dataclass(frozen=True)
class CycleResult:
    """What one update cycle did."""

    changed: bool
    serial: int
    refusals: tuple[Refusal, ...] = ()
    error: str = ""
    retrying: tuple[PendingInstall, ...] = ()
    superseded: bool = False


class Updater:
    """Applies the director's desired state to this device; thread-safe.

    Args:
        device_id: this device's id; a desired state for another id is refused.
        state_dir: persistent folder (state.json, models/).
        source: verified package source.
        host: the serving host whose routes are switched.
        clock: wall clock for timestamps, monotonic clock for retry timing.
        keep_previous_loaded: keep the previous version in memory for instant rollback.
        memory: free-memory probe (whether the previous version may stay loaded).
        loader: how a version is loaded into memory (default: ONNX Runtime).
        retry: backoff between retries of a failed install.
        rand: uniform random source in [0, 1) for the retry jitter.
        profile: the device's declared hardware tags and execution providers; a package
            whose signed ``target`` does not fit is refused (issue 10). None: not checked.
        medium: fingerprint of what the delivery medium holds now (a mounted folder's,
            :meth:`~modelfleet.delivery.folder_fetcher.FolderFetcher.fingerprint`); when
            it changes, a pending retry is due at once (issue 11). None: not watched.
    """

    def __init__(
        self,
        device_id: str,
        state_dir: Path,
        source: PackageSource | None,
        host: ModelHost,
        clock: Clock,
        keep_previous_loaded: bool = True,
        *,
        memory: MemoryProbe = proc_meminfo_available,
        loader: ModelLoader | None = None,
        retry: BackoffPolicy = DEFAULT_RETRY,
        rand: Callable[[], float] = random.random,
        profile: DeviceProfile | None = None,
        medium: Callable[[], str | None] | None = None,
    ) -> None:
        self.device_id = device_id
        self.profile = profile
        self.state_dir = Path(state_dir)
        self.source = source
        self.host = host
        self.clock = clock
        self.keep_previous_loaded = keep_previous_loaded
        self.slots = SlotStore(self.state_dir / "models")
        self.models = ModelCache(memory, loader) if loader else ModelCache(memory)
        self._retry = retry
        self._rand = rand
        self._lock = threading.RLock()
        self.state: AgentState = load_state(self.state_dir, device_id)
        #: Called after every route switch with (model, slots, fallback_ok): the guard
        #: re-targets its watch. ``fallback_ok`` is False when the previous version is
        #: one the device rolled away from (a rollback to it would flap).
        self.on_route_published: Callable[[str, ModelSlots, bool], None] | None = None
        #: Called with (at, kind, message, model, version) for every event added to the
        #: state (issue 7: the agent appends them to its telemetry buffer). Called with the
        #: state lock held: it must only queue, never block.
        self.on_event: EventHook | None = None
        #: Called with (result, bytes) after each download: ``"ok"`` (installed) or
        #: ``"failed"`` (a transient failure or a refusal).
        self.on_download: Callable[[str, int], None] | None = None
        self._file = StateFile(self.state_dir, clock.monotonic)
        self._retry_failures = 0
        self._retry_at = float("-inf")
        self._medium = medium
        self._retry_medium: str | None = None  # the medium when the failed attempt began
        self._hub_ok: bool | None = None
        self._last_problem = ""
        self._last_full: Check | None = None
        #: The last refresh's expiry refusal, until a refresh succeeds (ADR 0036).
        self._expired: MetadataExpiredError | None = None

    # -- startup -------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Serve what the state says, from disk only (works with no hub in reach).

        Returns:
            Problems found (a version that no longer loads is dropped and reported).
        """
        problems: list[str] = []
        with self._lock:
            for name, slots in list(self.state.models.items()):
                try:
                    self._publish_route(name, slots)
                except ModelfleetError as e:
                    problems.append(f"{name}: {e}")
                    log.error("cannot restore %s: %s", name, e)
        return problems

    # -- the cycle -----------------------------------------------------------------------

    @property
    def hub_reachable(self) -> bool | None:
        """Whether the last look at the director reached the hub (None: not tried yet)."""
        return self._hub_ok

    def run_cycle(self) -> CycleResult:
        """Check the director once and apply any change that is due, synchronously.

        Never raises for hub or verification problems: they are recorded in the state.
        """
        check = self.check()
        if check.desired is None:
            return CycleResult(False, self.state.applied_serial, error=check.error)
        if not self.due(check.desired):
            with self._lock:
                return CycleResult(
                    False, self.state.applied_serial, retrying=tuple(self.state.pending)
                )
        return self.apply(check.desired)

    def check(self, hub_tuf: object = None) -> Check:
        """Fetch and screen this device's desired state (no lock held while fetching).

        Args:
            hub_tuf: the ``"tuf"`` versions of the check-in answer just received, or None.
                When the source can tell (:class:`FreshnessSource`) that they match what it
                holds, the director is not asked again and the last verified desired state
                is used (the check-in fast path, issue 8); a changed catalog alone is
                refreshed without the director.
        """
        if self.source is None:
            return Check(False, error="no package source")
        fast = self._fast_check(hub_tuf)
        if fast is not None:
            self._leave_revoked()
            return fast
        check = self._full_check()
        self._last_full = check if check.reachable and not check.error else None
        if check.reachable:
            self._leave_revoked()
        return check

    def _leave_revoked(self) -> None:
        """Fall back from every running version the catalog no longer lists (revoked;
        issue 10), by the rollback rule and without downloading, before the director
        says so. A version with nothing to fall back to keeps serving (logged)."""
        source = self.source
        if not isinstance(source, CatalogView):
            return
        with self._lock:
            running = [
                (name, rec)
                for name, slots in self.state.models.items()
                for rec in (slots.candidate, slots.active)
                if rec is not None
            ]
        gone: list[tuple[str, int]] = []
        for name, rec in running:
            try:
                if not source.catalog_lists(model_target_path(name, rec.version), rec.sha256):
                    gone.append((name, rec.version))
            except ModelfleetError as e:  # the next refresh decides; keep serving
                log.debug("catalog not checked for revocations: %s", e)
                if isinstance(e, MetadataExpiredError):
                    self._note_expired(e)
                return
        for name, version in gone:
            try:
                self.rollback(
                    name, reason=f"v{version} was revoked (not in the catalog)", away_from=version
                )
            except InvalidInputError:
                if self._problem(f"{name} v{version} revoked, nothing to fall back to"):
                    log.error(
                        "%s v%s is no longer in the catalog and there is no earlier version "
                        "to fall back to: it keeps serving until the director names another",
                        name,
                        version,
                    )

    def _fast_check(self, hub_tuf: object) -> Check | None:
        last = self._last_full
        source = self.source
        if hub_tuf is None or last is None or not isinstance(source, FreshnessSource):
            return None
        try:
            stale = source.stale(self.device_id, hub_tuf, self.clock.now())
            if "director" in stale:
                return None
            if "catalog" in stale:
                source.refresh_catalog()
        except ModelfleetError as e:  # the full check says what is wrong
            log.debug("fast path not taken: %s", e)
            return None
        with self._lock:
            self.state.last_check = self._now()
            self._save()
        return last

    def _full_check(self) -> Check:
        assert self.source is not None  # checked by check()
        now = self._now()
        try:
            raw = self.source.fetch_desired_state(self.device_id)
        except TransportError as e:
            self._hub_contact(False, str(e))
            with self._lock:
                self.state.last_check = now
                self.state.last_error = f"hub unreachable: {e}"
                self._save()
            return Check(False, error=str(e))
        except TrustError as e:
            self._hub_contact(True)
            msg = f"director metadata refused: {e}"
            with self._lock:
                self.state.last_check = now
                self.state.last_error = msg
                if isinstance(e, MetadataExpiredError):
                    # Nothing is unloaded: what was verified earlier keeps serving.
                    self._expired = e
                    self.state.update_status = expired_status(e, self.state.models)
                else:
                    self.state.update_status = f"refused: {msg}"
                if self._problem(msg):
                    self._event(now, "refused", msg)
                    log.error("%s", msg)
                self._save()
            return Check(True, error=str(e))
        self._hub_contact(True)
        with self._lock:
            self.state.last_check = now
            self.state.last_error = ""
            if self._expired is not None:  # fresh metadata: say what the cycle says again
                log.info("fresh metadata accepted: metadata no longer expired")
                self._expired = None
                self.state.update_status = update_status(
                    self.state.applied_serial,
                    self.state.pending,
                    self.retry_in(),
                    self.state.last_refusal,
                )
            screened = screen_desired(raw, self.device_id, self.state)
            if screened.error:
                self.state.last_error = screened.error
                if self._problem(screened.error):
                    log.warning("desired state not applied: %s", screened.error)
            else:
                self._problem("")
                log.debug(
                    "poll: director serial %s, applied %d",
                    screened.desired.serial if screened.desired else "-",
                    self.state.applied_serial,
                )
            self._save()
        return Check(True, screened.desired, screened.error)

    def due(self, desired: DesiredState) -> bool:
        """Whether ``desired`` needs applying now: new, or a retry whose backoff is over or
        whose delivery medium changed since the attempt that failed (issue 11)."""
        with self._lock:
            if not needs_work(desired, self.state):
                return False
            retrying = desired.serial == self.state.desired_serial and self.state.pending
            if not retrying:
                return True
            now, retry_at, then = self.clock.monotonic(), self._retry_at, self._retry_medium
        if now >= retry_at:
            return True
        due = retry_due(now, retry_at, then, self._medium_print())  # no lock: it reads a folder
        if due:
            log.info("the update folder changed: retrying the pending install now")
        return due

    def retry_in(self) -> float | None:
        """Seconds until a failed install is due for a retry, or None when none is pending."""
        with self._lock:
            if not self.state.pending:
                return None
            return max(0.0, self._retry_at - self.clock.monotonic())

    def apply(self, desired: DesiredState, cancel: threading.Event | None = None) -> CycleResult:
        """Install what ``desired`` needs and switch to it.

        Downloads run with no lock held. When ``cancel`` is set meanwhile (a newer desired
        state arrived) nothing is switched and the result says ``superseded``.
        """
        assert self.source is not None
        medium = self._medium_print()  # before anything is read from it, and with no lock
        with self._lock:
            if desired.serial < self.state.desired_serial:
                return CycleResult(False, self.state.applied_serial, superseded=True)
            new_serial = self.state.desired is None or desired.serial != self.state.desired_serial
            if new_serial or medium != self._retry_medium:
                self._retry_failures = 0  # a new serial, or new content: backoff afresh
            if new_serial:
                self.state.pending = []
            self.state.desired = {
                "serial": desired.serial,
                "assignments": [a.to_dict() for a in desired.assignments],
            }
            refs = to_install(desired, self.state)
            if refs:
                names = ", ".join(f"{r.model} v{r.version}" for r in refs)
                self.state.update_status = f"downloading: {names} (serial {desired.serial})"
            self._save()
        installed: dict[str, SlotRecord] = {}
        refused: list[tuple[ArtefactRef, ModelfleetError]] = []
        failed: list[tuple[ArtefactRef, ModelfleetError]] = []
        rollouts = {a.model: a.rollout_id or None for a in desired.assignments}  # for the logs
        for ref in refs:
            if cancel is not None and cancel.is_set():
                break
            try:
                installed[slot_key(ref.sha256, ref.version)] = install_version(
                    self.source,
                    self.slots,
                    ref,
                    cancel,
                    rollout_id=rollouts.get(ref.model),
                    profile=self.profile,
                )
            except ModelfleetError as e:
                kind = failure_kind(e)
                if kind is not FailureKind.TRANSIENT:
                    refused.append((ref, e))
                if kind is not FailureKind.REFUSED:
                    failed.append((ref, e))  # retried (delivery: refused and retried)
                self._downloaded("failed", 0)
            else:
                self._downloaded("ok", ref.length)
        self._preload(installed, refs, cancel)
        with self._lock:
            if (
                cancel is not None and cancel.is_set()
            ) or desired.serial < self.state.desired_serial:
                log.info("serial %d superseded before it was applied", desired.serial)
                return CycleResult(False, self.state.applied_serial, superseded=True)
            self._retry_medium = medium
            return self._finish(desired, installed, refused, failed, new_serial)

    def _preload(
        self,
        installed: dict[str, SlotRecord],
        refs: list[ArtefactRef],
        cancel: threading.Event | None,
    ) -> None:
        """Load what installed before taking the lock, so the switch itself is quick."""
        for ref in refs:
            rec = installed.get(slot_key(ref.sha256, ref.version))
            if rec is None or (cancel is not None and cancel.is_set()):
                continue
            try:
                self.models.get(ref.model, rec)
            except ModelfleetError as e:  # the switch will report it
                log.debug("preloading %s v%s failed: %s", ref.model, ref.version, e)

    def _finish(
        self,
        desired: DesiredState,
        installed: dict[str, SlotRecord],
        refused: list[tuple[ArtefactRef, ModelfleetError]],
        failed: list[tuple[ArtefactRef, ModelfleetError]],
        new_serial: bool,
    ) -> CycleResult:
        serial = desired.serial
        refusals = [self._refuse(ref, serial, e) for ref, e in refused]
        self.state.last_refusal = refusal_after_install(
            self.state.last_refusal, (rec.sha256 for rec in installed.values())
        )
        changed = new_serial
        for assignment in desired.assignments:
            changed |= self._switch(assignment, serial, installed)
        for name in list(self.state.models):
            if desired.assignment(name) is None:
                self._unassign(name)
                changed = True
        pending = pending_after([(r, str(e)) for r, e in failed], self.state.pending, serial)
        self.state.pending = pending
        delay: float | None = None
        if pending:
            self._retry_failures += 1
            delay = self._retry.delay(self._retry_failures, self._rand)
            self._retry_at = self.clock.monotonic() + delay
            for p in pending:
                self._event(
                    self._now(),
                    "retrying",
                    f"{p.model} v{p.version}: {p.reason}",
                    p.model,
                    str(p.version),
                )
                log.warning(
                    "install of %s v%s failed (attempt %d), retrying in %.1f s: %s",
                    p.model,
                    p.version,
                    p.attempts,
                    delay,
                    p.reason,
                )
        else:
            self._retry_failures = 0
            self.state.applied_serial = serial
        self.state.update_status = update_status(serial, pending, delay, self.state.last_refusal)
        expired = [e for _, e in failed if isinstance(e, MetadataExpiredError)]
        if expired:
            self._expired = expired[0]
            self.state.update_status = expired_status(expired[0], self.state.models)
        self._save()
        self._collect_garbage()
        return CycleResult(changed, serial, tuple(refusals), retrying=tuple(pending))

    def _switch(
        self, assignment: Assignment, serial: int, installed: dict[str, SlotRecord]
    ) -> bool:
        name = assignment.model
        current = self.state.models.get(name, ModelSlots())
        plan = plan_slots(current, assignment, serial, self.state.refused, self.state.rolled_back)
        new_slots = plan.resolve(current, installed)
        if new_slots == current and name in self.host.names():
            return False
        try:
            self._publish_route(name, new_slots)
        except ModelfleetError as e:
            self._event(self._now(), "error", f"{name}: cannot serve: {e}", name)
            log.error("%s: cannot serve: %s", name, e)
            return False
        msg = describe_switch(name, current, new_slots)
        active = new_slots.active
        self._event(self._now(), "switch", msg, name, str(active.version) if active else None)
        log.info(msg)
        self.state.models[name] = new_slots
        return True

    def _refuse(self, ref: ArtefactRef, serial: int, error: ModelfleetError) -> Refusal:
        """Record a refusal; a deterministic one is pinned to ``serial`` (not retried), a
        delivery one (bad bytes) is not: it is retried like a transient failure."""
        kind = refusal_kind(error)
        refusal = Refusal(
            at=self._now(),
            model=ref.model,
            version=ref.version,
            sha256=ref.sha256,
            serial=serial,
            reason=str(error),
            kind=kind,
        )
        if failure_kind(error) is FailureKind.REFUSED:
            self.state.refused[ref.sha256] = serial
        self.state.last_refusal = refusal
        self._event(
            refusal.at,
            "refused",
            f"{ref.model} v{ref.version}: {error}",
            ref.model,
            str(ref.version),
        )
        log.error("REFUSED %s v%s: %s", ref.model, ref.version, error)
        return refusal

    def _unassign(self, name: str) -> None:
        self.host.remove(name)
        self.state.models.pop(name, None)
        self._event(self._now(), "unassigned", f"{name} is no longer assigned", name)
        log.info("%s is no longer assigned: not serving it", name)

    # -- rollback ------------------------------------------------------------------------

    def rollback(
        self,
        model: str | None = None,
        reason: str = "operator request",
        away_from: int | None = None,
    ) -> dict[str, Any]:
        """Switch back without downloading anything (never waits on a download).

        The rule is :func:`modelfleet.rollout.assignment.roll_back`: a model with a
        candidate drops the candidate; otherwise the previous version becomes production
        and there is no previous any more. The version rolled away from is not re-applied
        until the director issues a new desired state. Each rollback is kept as a
        structured record and reported to the hub until it acknowledges it.

        Args:
            model: one model, or every model when None.
            reason: kept in the events and reported to the hub.
            away_from: only roll back if this is the version being rolled away from
                (the guard's check that nothing changed since it decided).

        Returns:
            ``{"rolled_back": [{"model", "from", "to", "kind", "id"}], "reason"}``.

        Raises:
            InvalidInputError: nothing to roll back to.
        """
        with self._lock:
            names = [model] if model else list(self.state.models)
            done: list[dict[str, Any]] = []
            for name in names:
                slots = self.state.models.get(name)
                if slots is None or slots.active is None:
                    continue
                result = rollback_slots(slots)
                if result is None:
                    continue
                new, rb = result
                if away_from is not None and rb.away.version != away_from:
                    continue
                serial = self.state.desired_serial
                self.state.rolled_back[rb.away.sha256] = serial
                self._publish_route(name, new)
                self.state.models[name] = new
                now = self._now()
                record = rollback_record(uuid.uuid4().hex, now, name, rb, reason, serial)
                self.state.add_rollback(record)
                done.append(
                    {
                        "model": name,
                        "from": rb.away.version,
                        "to": rb.to.version,
                        "kind": rb.kind.value,
                        "id": record.id,
                    }
                )
                msg = f"{name}: rolled back from v{rb.away.version} to v{rb.to.version} ({reason})"
                self._event(now, "rollback", msg, name, str(rb.away.version))
                log.warning(msg)
            if not done:
                raise InvalidInputError("nothing to roll back: no previous version or candidate")
            self._save()
            return {"rolled_back": done, "reason": reason}

    def acknowledge_rollbacks(self, ids: list[str] | set[str]) -> None:
        """Forget the rollbacks the hub says it has applied (``applied_rollbacks``)."""
        with self._lock:
            if self.state.acknowledge_rollbacks(set(ids)):
                self._save()

    def note_problem(self, message: str) -> None:
        """Record a problem found outside the cycle (e.g. the token was refused)."""
        with self._lock:
            self.state.last_error = message
            self.state.update_status = f"refused: {message}"
            self._event(self._now(), "refused", message)
            self._save()

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The state as a JSON-able dict, plus what is loaded in memory (also the check-in
        report; ``agent status`` adds :meth:`metadata_health`)."""
        with self._lock:
            data = self.state.to_dict()
            data["loaded"] = self.models.describe()
            return data

    def metadata_health(self) -> MetadataHealth:
        """Whether the metadata is expired (the last refresh said so, or the cached
        metadata is, at the source's reference time), and when each repository's expires.

        Reads the metadata cache: call it with no lock held."""
        refused = self._expired
        times = None
        if isinstance(self.source, MetadataTimeSource):
            try:
                times = self.source.metadata_times(self.device_id)
            except Exception:  # status must answer even if the cache cannot be read
                log.exception("metadata expiry not readable")
        cached: list[str] = times.expired if times is not None else []
        if refused is not None:
            reason = str(refused)
        elif cached:
            reason = f"cached {' and '.join(cached)} metadata expired"
        else:
            reason = ""
        return MetadataHealth(
            expired=refused is not None or bool(cached),
            reason=reason,
            expires={} if times is None else dict(times.expires),
            floor=None if times is None else times.floor,
        )

    def _note_expired(self, error: MetadataExpiredError) -> None:
        """Record an expiry refusal found outside the director check (the catalog's); one
        found by this cycle's director check is kept (it is what the device saw first)."""
        with self._lock:
            if self._expired is not None:
                return
            self._expired = error
            status = expired_status(error, self.state.models)
            if status != self.state.update_status:
                self.state.update_status = status
                self.state.last_error = str(error)
                self._save()
            if self._problem(str(error)):
                log.error("%s", status)

    # -- internals -----------------------------------------------------------------------

    def _publish_route(self, name: str, slots: ModelSlots) -> None:
        used = used_slot_keys(self.state.models, self.keep_previous_loaded)
        publish_route(self.host, self.models, name, slots, self.keep_previous_loaded, used)
        if self.on_route_published is not None and slots.active is not None:
            fallback_ok = (
                slots.previous is not None
                and self.state.rolled_back.get(slots.previous.sha256) is None
            )
            self.on_route_published(name, slots, fallback_ok)

    def _collect_garbage(self) -> None:
        keep = {
            r.path
            for s in self.state.models.values()
            for r in (s.active, s.previous, s.candidate)
            if r is not None
        }
        self.slots.garbage_collect(keep)
        # Partial downloads kept across restarts (issue 11): only those of installs still
        # to be retried stay. An optional capability of the source (DeviceTrustClient).
        prune = getattr(self.source, "prune_partials", None)
        if callable(prune):
            prune(p.sha256 for p in self.state.pending)

    def _hub_contact(self, ok: bool, error: str = "") -> None:
        """Log hub lost / regained once each, not every poll (issue 6, defect 7)."""
        if ok and self._hub_ok is False:
            log.info("hub reachable again")
        elif not ok and self._hub_ok is not False:
            log.warning("hub unreachable, serving what is installed: %s", error)
        elif not ok:
            log.debug("hub still unreachable: %s", error)
        self._hub_ok = ok

    def _problem(self, message: str) -> bool:
        """Whether ``message`` is new (so it is logged once, not every poll)."""
        new = message != self._last_problem
        self._last_problem = message
        return new and bool(message)

    def _save(self) -> None:
        self._file.save(self.state)

    def _event(
        self,
        at: str,
        kind: str,
        message: str,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        """Add an event to the state and tell the ``on_event`` hook (never failing)."""
        self.state.add_event(at, kind, message)
        hook = self.on_event
        if hook is not None:
            try:
                hook(at, kind, message, model, version)
            except Exception:  # telemetry must never break an update
                log.exception("event hook failed")

    def _downloaded(self, result: str, size: int) -> None:
        hook = self.on_download
        if hook is not None:
            try:
                hook(result, size)
            except Exception:
                log.exception("download hook failed")

    def _now(self) -> str:
        return self.clock.now().replace(microsecond=0).isoformat()

    def _medium_print(self) -> str | None:
        """The delivery medium's fingerprint now (None: not watched, or unreadable)."""
        if self._medium is None:
            return None
        try:
            return self._medium()
        except Exception:  # a watch that fails must not stop updates; the timer still runs
            log.exception("update folder fingerprint failed")
            return None
