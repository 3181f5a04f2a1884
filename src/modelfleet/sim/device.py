"""One simulated device's state and its pure transitions: apply a verified desired state by
the rules of :mod:`modelfleet.rollout.assignment`, roll back by the local guard, report like
the agent, close telemetry windows and hand out batches. No I/O and no clock: the fleet
(:mod:`modelfleet.sim.fleet`) passes the device's time in.

The report has the agent's shape (``modelfleet.agent.state.AgentState.to_dict`` plus
``loaded``): the hub reads ``models.<name>.{active,candidate,previous}.version``, ``mode``,
``share``, ``applied_serial``, ``last_refusal``, ``events`` and the unacknowledged
``rollbacks`` (issue 6 contract 2), exactly as it reads a real agent's.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from modelfleet.rollout import assignment as rules
from modelfleet.rollout.desired_state import ArtefactRef, Assignment, DesiredState, Mode
from modelfleet.sim.faults import DeviceEffects, Fault, version_effects
from modelfleet.sim.traffic import ServedWindow, Traffic, draw_counts
from modelfleet.sim.verify import TrustedRepo

__all__ = ["MAX_BUFFERED", "MAX_EVENTS", "SimDevice", "Tally", "align_down"]

#: Events kept in the report, as the agent keeps its last 50 (fewer: a light device).
MAX_EVENTS = 20
#: Rollbacks kept until the hub acknowledges them (the agent's MAX_ROLLBACKS).
MAX_ROLLBACKS = 50
#: Telemetry records buffered before the oldest are evicted (about 72 h of 60 s windows
#: of two routes, as the agent's default 64 MiB buffer holds).
MAX_BUFFERED = 10_000

Slots = rules.Slots[ArtefactRef]


def _iso(t: datetime) -> str:
    return t.replace(microsecond=0).isoformat()


def align_down(t: datetime, window_s: float) -> datetime:
    """``t`` rounded down to a multiple of ``window_s`` since the epoch (the agent aligns
    windows so a fleet's windows line up)."""
    epoch = t.timestamp()
    return datetime.fromtimestamp(epoch - epoch % window_s, t.tzinfo)


def _slot(ref: ArtefactRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"version": ref.version, "sha256": ref.sha256, "path": f"sim/{ref.sha256[:16]}"}


@dataclass
class Tally:
    """What one device did (summed over the fleet for the summary)."""

    checkins: int = 0
    refreshes: int = 0
    refreshes_skipped: int = 0
    applied: int = 0
    refusals: int = 0
    guard_rollbacks: int = 0
    rollbacks_acked: int = 0
    crashes: int = 0
    windows: int = 0
    events: int = 0
    records_acked: int = 0
    batches: int = 0
    evicted: int = 0
    offline_ticks: int = 0
    errors: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    requests: int = 0


@dataclass
class SimDevice:
    """A light device: slots per model, the desired state it holds, its telemetry buffer.

    Attributes:
        device_id, site, tags: as enrolled.
        token: its device token.
        effects: the device faults that hit it (offline, late, skew).
        director, catalog: its trusted TUF metadata.
    """

    device_id: str
    site: str
    tags: tuple[str, ...]
    token: str
    effects: DeviceEffects
    director: TrustedRepo
    catalog: TrustedRepo
    director_layout: str = ""
    desired: DesiredState | None = None
    desired_sha256: str = ""
    applied_serial: int = 0
    slots: dict[str, Slots] = field(default_factory=dict)
    slo: dict[str, dict[str, float]] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    rolled_back: dict[str, int] = field(default_factory=dict)
    last_refusal: dict[str, Any] | None = None
    last_error: str = ""
    last_check: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    buffer_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    buffer: deque[ServedWindow | dict[str, Any]] = field(default_factory=deque)
    next_seq: int = 1
    evicted_total: int = 0
    window_opened: datetime | None = None
    telemetry_ticks: int = 0
    pending_updates: dict[str, int] = field(default_factory=dict)
    pending_refusals: dict[str, int] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    # -- the update cycle ------------------------------------------------------------------

    @property
    def desired_serial(self) -> int:
        return self.desired.serial if self.desired is not None else self.applied_serial

    def screen(self, desired: DesiredState) -> str:
        """Why ``desired`` must not be applied here, or "" (the agent's ``screen_desired``)."""
        if desired.device_id != self.device_id:
            return f"desired state is for device {desired.device_id!r}, not this one"
        if desired.serial < self.desired_serial:
            return f"desired state serial {desired.serial} is older than applied"
        return ""

    def needs_work(self, desired: DesiredState) -> bool:
        return self.desired is None or desired.serial != self.applied_serial

    def apply(self, desired: DesiredState, now: datetime) -> bool:
        """Switch the slots to ``desired`` (already verified, artefacts checked).

        Per model: a new production is deployed ``full`` (the old one becomes previous), a
        split or shadow candidate is deployed on top (:func:`rules.deploy`); a version the
        device refused or rolled away from at this serial is not applied again (the agent's
        ``plan_slots``). Models no longer assigned are dropped.

        Returns:
            Whether any model's slots changed.
        """
        serial = desired.serial
        self.desired = desired
        changed = False
        for a in desired.assignments:
            before = self.slots.get(a.model)
            after = self._plan(before, a, serial)
            self.slo[a.model] = dict(a.slo)
            if after is not None and after != before:
                self.slots[a.model] = after
                changed = True
                self._event(now, "switch", _describe(a.model, before, after), a.model, after)
        for name in [m for m in self.slots if desired.assignment(m) is None]:
            del self.slots[name]
            self.slo.pop(name, None)
            self._event(now, "unassigned", f"{name} is no longer assigned", name, None)
            changed = True
        self.applied_serial = serial
        self.tally.applied += 1
        return changed

    def _plan(self, current: Slots | None, a: Assignment, serial: int) -> Slots | None:
        def usable(ref: ArtefactRef | None) -> ArtefactRef | None:
            if ref is None:
                return None
            key = f"{ref.sha256}:{ref.version}"
            if self.refused.get(key) == serial or self.rolled_back.get(key) == serial:
                return None
            return ref

        slots = current or Slots(None)
        production = usable(a.production)
        if production is not None:
            slots = rules.deploy(slots, production, Mode.FULL)
        candidate = usable(a.candidate) if a.mode is not Mode.FULL else None
        if candidate is not None and slots.production not in (None, candidate):
            slots = rules.deploy(slots, candidate, a.mode, a.share)
        return slots if slots.production is not None else current

    def refuse(self, desired: DesiredState, reason: str, kind: str, now: datetime) -> None:
        """Record a refused desired state (a trust failure): nothing switches; its versions
        are not tried again at this serial, which counts as applied (as the agent's
        updater does: only a new serial is looked at again)."""
        self.desired = desired
        self.applied_serial = desired.serial
        for a in desired.assignments:
            for ref in (a.production, a.candidate):
                if ref is None:
                    continue
                self.refused[f"{ref.sha256}:{ref.version}"] = desired.serial
                self.last_refusal = {
                    "at": _iso(now),
                    "model": ref.model,
                    "version": ref.version,
                    "sha256": ref.sha256,
                    "serial": desired.serial,
                    "reason": reason,
                    "kind": kind,
                }
                self.pending_refusals[ref.model] = self.pending_refusals.get(ref.model, 0) + 1
        self.tally.refusals += 1
        self._event(now, "refused", reason, None, None)

    def guard_rollback(self, model: str, reason: str, now: datetime) -> rules.Rollback[ArtefactRef]:
        """The local guard rolls ``model`` back (no download), as the agent's updater does:
        the rule is :func:`rules.roll_back`; the version left is pinned away at this serial
        and a rollback record goes into every report until the hub acknowledges it."""
        slots = self.slots[model]
        done = rules.roll_back(slots)
        assert done is not None, "the guard rolls back only where there is something to go to"
        self.slots[model] = done.slots
        serial = self.desired_serial
        self.rolled_back[f"{done.away.sha256}:{done.away.version}"] = serial
        self.rollbacks.append(
            {
                "id": uuid.uuid4().hex,
                "at": _iso(now),
                "model": model,
                "kind": done.kind.value,
                "from_version": done.away.version,
                "to_version": done.to.version,
                "reason": reason,
                "serial": serial,
            }
        )
        del self.rollbacks[:-MAX_ROLLBACKS]
        self.tally.guard_rollbacks += 1
        msg = f"{model}: rolled back from v{done.away.version} to v{done.to.version} ({reason})"
        self._event(now, "rollback", msg, model, None, version=done.away.version)
        return done

    def acknowledge(self, ids: Iterable[str]) -> None:
        """Forget the rollbacks the hub says it applied (``applied_rollbacks``)."""
        gone = set(ids)
        kept = [r for r in self.rollbacks if r["id"] not in gone]
        self.tally.rollbacks_acked += len(self.rollbacks) - len(kept)
        self.rollbacks = kept

    # -- the report ------------------------------------------------------------------------

    def report(self, now: datetime) -> dict[str, Any]:
        """The check-in report, in the agent's shape."""
        self.last_check = _iso(now)
        desired = self.desired
        return {
            "device_id": self.device_id,
            "applied_serial": self.applied_serial,
            "desired": None
            if desired is None
            else {
                "serial": desired.serial,
                "assignments": [a.to_dict() for a in desired.assignments],
            },
            "models": {
                name: {
                    "active": _slot(s.production),
                    "previous": _slot(s.previous),
                    "candidate": _slot(s.candidate),
                    "mode": s.mode.value,
                    "share": s.share,
                    "slo": self.slo.get(name, {}),
                }
                for name, s in self.slots.items()
            },
            "last_refusal": self.last_refusal,
            "refused": {k.partition(":")[0]: v for k, v in self.refused.items()},
            "rolled_back": {k.partition(":")[0]: v for k, v in self.rolled_back.items()},
            "last_check": self.last_check,
            "last_error": self.last_error,
            "events": list(self.events),
            "pending": [],
            "update_status": f"up to date (serial {self.applied_serial})",
            "rollbacks": list(self.rollbacks),
            "loaded": {},
            "simulated": True,
        }

    def serving(self) -> dict[str, tuple[int | None, int | None]]:
        """``{model: (production version, candidate version)}`` now."""
        return {
            name: (
                s.production.version if s.production else None,
                s.candidate.version if s.candidate else None,
            )
            for name, s in self.slots.items()
        }

    # -- telemetry -------------------------------------------------------------------------

    def close_windows(
        self,
        now: datetime,
        window_s: float,
        traffic: Traffic,
        faults: Sequence[Fault],
        rng: random.Random,
    ) -> int:
        """Close every window that ended by ``now`` (device time); returns how many closed.

        Windows are aligned to multiples of ``window_s``; the first is partial. Each routed
        version gets a window even when idle. A version that crashed at least its fault's
        ``guard_crashes`` times in a window is rolled back by the local guard at its close.
        """
        if self.window_opened is None:
            self.window_opened = now
            return 0
        closed = 0
        while True:
            end = align_down(self.window_opened, window_s) + timedelta(seconds=window_s)
            if end > now:
                return closed
            self._close_one(self.window_opened, end, traffic, faults, rng)
            self.window_opened = end
            closed += 1

    def _close_one(
        self,
        opened: datetime,
        closed: datetime,
        traffic: Traffic,
        faults: Sequence[Fault],
        rng: random.Random,
    ) -> None:
        seconds = (closed - opened).total_seconds()
        opened_s, closed_s = opened.isoformat(), closed.isoformat()
        for name in list(self.slots):
            slots = self.slots[name]
            if slots.production is None:
                continue
            routes: list[tuple[ArtefactRef, str, float]] = []
            cand = slots.candidate
            if cand is not None and slots.mode is Mode.SPLIT:
                routes = [(slots.production, "production", 1.0 - slots.share)]
                routes.append((cand, "candidate", slots.share))
            else:
                routes = [(slots.production, "production", 1.0)]
                if cand is not None:
                    routes.append((cand, "shadow", slots.share))
            rollback_of: ArtefactRef | None = None
            for ref, role, share in routes:
                fx = version_effects(faults, self.device_id, self.site, name, ref.version)
                c = draw_counts(traffic, fx, seconds, share, rng, shadow=role == "shadow")
                breach = bool(fx.guard_crashes and c.crashes >= fx.guard_crashes)
                can_roll = role != "production" or slots.candidate is None
                guarded = breach and can_roll and rules.roll_back(slots) is not None
                if guarded and rollback_of is None:
                    rollback_of = ref
                production = role == "production"
                self._append(
                    ServedWindow(
                        seq=0,
                        model=name,
                        version=ref.version,
                        role=role,
                        rollout_id=self._rollout_of(name, ref.version),
                        opened_at=opened_s,
                        closed_at=closed_s,
                        requests=c.requests,
                        server_errors=c.server_errors,
                        client_errors=c.client_errors,
                        timeouts=c.timeouts,
                        latency_median_s=c.latency_median_s,
                        confidence=c.confidence,
                        shadow_compared=c.shadow_compared,
                        shadow_disagreed=c.shadow_disagreed,
                        guard_breaches=int(breach),
                        guard_rollbacks=int(guarded and rollback_of is ref),
                        crashes=c.crashes,
                        refusals=self.pending_refusals.pop(name, 0) if production else 0,
                        updates=self.pending_updates.pop(name, 0) if production else 0,
                        seed=rng.getrandbits(48),
                    )
                )
                self.tally.crashes += c.crashes
                for _ in range(min(c.crashes, 3)):
                    self._event(closed, "crash", f"{name} v{ref.version} crashed", name, None,
                                version=ref.version, keep=False)  # fmt: skip
            if rollback_of is not None:
                self.guard_rollback(name, f"local guard: v{rollback_of.version} crashed", closed)

    def _rollout_of(self, model: str, version: int) -> str | None:
        a = self.desired.assignment(model) if self.desired is not None else None
        if a is None:
            return None
        versions = {r.version for r in (a.production, a.candidate) if r is not None}
        return (a.rollout_id or None) if version in versions else None

    def _append(self, record: ServedWindow | dict[str, Any]) -> None:
        seq = self.next_seq
        self.next_seq += 1
        if isinstance(record, ServedWindow):
            record = _with_seq(record, seq)
            self.tally.windows += 1
        else:
            record["seq"] = seq
            self.tally.events += 1
        self.buffer.append(record)
        while len(self.buffer) > MAX_BUFFERED:
            self.buffer.popleft()
            self.evicted_total += 1
            self.tally.evicted += 1

    def batch(
        self, now: datetime, limit: int, traffic: Traffic, *, newer_first: bool = False
    ) -> tuple[dict[str, Any], tuple[int, int]]:
        """The next telemetry batch and the buffer slice ``(start, stop)`` it takes;
        ``({}, (0, 0))`` when there is nothing to send.

        Oldest first, as the agent's forwarder sends; with ``newer_first`` (the ``late``
        fault) the newer half of the buffer goes first, so older records arrive after
        newer ones.
        """
        ready = len(self.buffer)
        if ready <= 0:
            return {}, (0, 0)
        start = ready // 2 if newer_first else 0
        stop = min(ready, start + limit)
        records = [self._encode(self.buffer[i], traffic) for i in range(start, stop)]
        return {
            "format": 1,
            "device_id": self.device_id,
            "buffer_id": self.buffer_id,
            "sent_at": now.isoformat(),
            "records": records,
            "buffered": ready - (stop - start),
            "evicted_total": self.evicted_total,
        }, (start, stop)

    def telemetry_due(self) -> bool:
        """Whether this check-in sends telemetry: every one, or under the ``late`` fault
        every ``late + 1``-th (windows wait up to ``late`` check-ins)."""
        self.telemetry_ticks += 1
        late = self.effects.late
        return not late or self.telemetry_ticks % (late + 1) == 0

    def _encode(self, r: ServedWindow | dict[str, Any], traffic: Traffic) -> dict[str, Any]:
        if isinstance(r, ServedWindow):
            return r.to_record(self.device_id, traffic.latency_sigma)
        return {**r, "device_id": self.device_id}

    def acked(self, taken: tuple[int, int]) -> None:
        """Drop the records of the batch the hub acknowledged (the slice :meth:`batch`
        named; nothing else touched the buffer in between)."""
        start, stop = taken
        if start == 0:
            for _ in range(stop):
                self.buffer.popleft()
        else:
            kept = list(self.buffer)
            del kept[start:stop]
            self.buffer = deque(kept)
        self.tally.records_acked += stop - start
        self.tally.batches += 1

    # -- internals -------------------------------------------------------------------------

    def _event(
        self,
        at: datetime,
        kind: str,
        message: str,
        model: str | None,
        slots: Slots | None,
        *,
        version: int | None = None,
        keep: bool = True,
    ) -> None:
        if version is None and slots is not None and slots.production is not None:
            version = slots.production.version
        if keep:
            self.events.append({"at": _iso(at), "kind": kind, "message": message})
            del self.events[:-MAX_EVENTS]
        if model is not None and kind != "crash":
            self.pending_updates[model] = self.pending_updates.get(model, 0) + 1
        self._append(
            {
                "kind": "event",
                "at": _iso(at),
                "event": kind,
                "model": model,
                "version": str(version) if version is not None else None,
                "message": message[:4096],
                "rollout_id": self._rollout_of(model, version) if model and version else None,
            }
        )


def _with_seq(w: ServedWindow, seq: int) -> ServedWindow:
    return replace(w, seq=seq)


def _describe(name: str, old: Slots | None, new: Slots) -> str:
    def v(r: ArtefactRef | None) -> str:
        return f"v{r.version}" if r else "none"

    share = f" {new.share:.0%}" if new.candidate else ""
    before = old.production if old else None
    return (
        f"{name}: active {v(before)} -> {v(new.production)}, candidate {v(new.candidate)} "
        f"({new.mode.value}{share}), previous {v(new.previous)}"
    )
