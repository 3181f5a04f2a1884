"""The local guard, wired: watch what the updater publishes, roll back on breach.

It is a :class:`~modelfleet.agent.observers.RequestObserver` of the request path's fan-out
and judges the model, not the callers (issue 6, defect 10; ADR 0010): client errors are
not counted, the latency it sees is server-side (compute + queue, never the upload), and
a breach must be confirmed by several callers' own traffic.

On a breach the serving route is switched at once on the event loop (a pointer switch on
the :class:`~modelfleet.serving.host.ModelHost`: the next request is answered by the
fallback), then the persistent rollback — state file, event, pin, report to the hub —
runs on a worker thread so the event loop never waits for a disk or a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modelfleet.agent.guard_monitor import GuardMonitor
from modelfleet.agent.observers import ComparisonResult, Outcome
from modelfleet.agent.state import ModelSlots
from modelfleet.agent.updater import Updater
from modelfleet.errors import ModelfleetError
from modelfleet.monitoring.guard import SloPolicy, Verdict
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route

__all__ = ["GuardCollector", "LocalGuard", "policy_of"]

log = logging.getLogger("modelfleet.agent.guard")

#: ``RequestObserver.on_request``'s signature.
RequestHandler = Callable[
    [str, str, str, Outcome, float | None, float | None, float | None, str], None
]


def policy_of(slo: dict[str, float]) -> SloPolicy:
    """The deployment's SLO over the defaults; unknown keys fall back to the defaults."""
    try:
        return SloPolicy.from_mapping(slo)
    except ModelfleetError as e:
        log.error("ignoring invalid SLO %s: %s", slo, e)
        return SloPolicy()


class LocalGuard:
    """Connects the updater, the serving host and the guard monitor."""

    def __init__(
        self,
        updater: Updater,
        host: ModelHost,
        monotonic: Callable[[], float],
        after_rollback: Callable[[], None] | None = None,
        eval_interval: float = 0.02,
    ) -> None:
        self.updater = updater
        self.host = host
        self.monitor = GuardMonitor(monotonic, self._on_breach, eval_interval)
        self._after_rollback = after_rollback
        self.events: list[dict[str, Any]] = []
        self.last_persist: threading.Thread | None = None
        self._confidence_rules: set[str] = set()  # models whose watch judges confidence
        self._confidence_listeners: list[Callable[[], None]] = []
        #: The request path's ``on_request``: the monitor's own, so a request costs one call
        #: (issue 6). It drops client errors (the callers' mistakes are not the model's,
        #: defect 10) and feeds the rest, latency = compute + queue, to the monitor.
        self.on_request: RequestHandler = self.monitor.on_request
        updater.on_route_published = self._on_route

    # the request path's RequestObserver -----------------------------------------------------

    @property
    def wants_confidence(self) -> bool:
        """True while a watched version's policy judges confidence (``confidence_drop``):
        only then must the request path compute it (issue 6)."""
        return bool(self._confidence_rules)

    def subscribe_wants_confidence(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever :attr:`wants_confidence` changes."""
        self._confidence_listeners.append(callback)

    def on_comparison(
        self, model: str, candidate_version: str, comparison: ComparisonResult
    ) -> None:
        """Feed one shadow comparison to the monitor."""
        self.monitor.observe_comparison(model, candidate_version, comparison.disagreed)

    # ---------------------------------------------------------------------------------------

    def _on_route(self, model: str, slots: ModelSlots, fallback_ok: bool) -> None:
        policy = policy_of(slots.slo)
        watching = True
        if slots.candidate is not None and slots.active is not None:
            self.monitor.watch(
                model, policy, str(slots.candidate.version), str(slots.active.version), "candidate"
            )
        elif slots.active is not None and slots.previous is not None and fallback_ok:
            self.monitor.watch(
                model,
                policy,
                str(slots.active.version),
                str(slots.previous.version),
                "production",
            )
        else:
            self.monitor.watch(model, policy, None, None, "")
            watching = False
        self._need_confidence(model, watching and policy.confidence_drop is not None)

    def _need_confidence(self, model: str, needed: bool) -> None:
        before = bool(self._confidence_rules)
        if needed:
            self._confidence_rules.add(model)
        else:
            self._confidence_rules.discard(model)
        if bool(self._confidence_rules) != before:
            for listener in self._confidence_listeners:
                listener()

    def _on_breach(self, model: str, version: str, verdict: Verdict) -> None:
        route = self.host.route(model)
        if route is None:
            return
        if route.candidate is not None and route.candidate.version == version:
            fallback = Route(route.production, None, Mode.FULL, 0.0, route.previous)
        elif route.production.version == version and route.previous is not None:
            fallback = Route(route.previous, None, Mode.FULL, 0.0, route.production)
        else:
            return
        self.host.set_route(model, fallback)  # effective for the very next request
        reason = "local guard: " + "; ".join(verdict.reasons)
        log.warning("%s v%s breached its SLO, rolled back: %s", model, version, reason)
        now = self.updater.clock.now()  # the injected clock, not time.time()
        self.events.append(
            {
                "model": model,
                "version": version,
                "to": fallback.production.version,
                "reasons": list(verdict.reasons),
                "at": now.isoformat(),
                "at_unix": now.timestamp(),  # benchmarks/agent_lifecycle.py times from it
            }
        )
        del self.events[:-100]
        self.last_persist = threading.Thread(
            target=self._persist, args=(model, int(version), reason), daemon=True
        )
        self.last_persist.start()

    def _persist(self, model: str, version: int, reason: str) -> None:
        try:
            self.updater.rollback(model, reason, away_from=version)
        except ModelfleetError as e:
            log.error("could not record the guard rollback of %s v%s: %s", model, version, e)
        if self._after_rollback is not None:
            self._after_rollback()

    def state(self) -> dict[str, Any]:
        """The monitor's per-model view, for status and metrics."""
        return self.monitor.state()


class GuardCollector(Collector):
    """Prometheus view of the guard: what it watches, whether it is in breach, rollbacks."""

    def __init__(self, guard: LocalGuard) -> None:
        self._guard = guard

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        watched = GaugeMetricFamily(
            "modelfleet_agent_guard_watching",
            "1 for the version the local guard watches, with its role and armed state.",
            labels=["model", "version", "role", "armed"],
        )
        breached = GaugeMetricFamily(
            "modelfleet_agent_guard_breached",
            "1 while the watched version's last guard verdict is a breach.",
            labels=["model", "version"],
        )
        for model, st in self._guard.state().items():
            watched.add_metric([model, st["watched"], st["role"], str(st["armed"]).lower()], 1)
            breached.add_metric([model, st["watched"]], 1 if st["breach"] else 0)
        rollbacks = CounterMetricFamily(
            "modelfleet_agent_guard_rollbacks",
            "Rollbacks the local guard made, by model and version rolled away from.",
            labels=["model", "version"],
        )
        counts: dict[tuple[str, str], int] = {}
        for event in list(self._guard.events):
            key = (event["model"], event["version"])
            counts[key] = counts.get(key, 0) + 1
        for (model, version), n in sorted(counts.items()):
            rollbacks.add_metric([model, version], n)
        yield watched
        yield breached
        yield rollbacks
