"""The thread ``hub serve`` runs for webhook deliveries (issue 9, ADR 0021).

Every ``interval_s`` of the hub clock it runs one :meth:`Webhooks.run_once` round. Several
hub replicas may each run one: claiming a delivery is a write transaction, so no attempt is
sent twice (see :mod:`modelfleet.hub.webhooks`).
"""

from __future__ import annotations

import logging
import threading

from modelfleet.clock import Clock
from modelfleet.errors import ModelfleetError
from modelfleet.hub.webhooks import RoundResult, Webhooks

__all__ = ["MIN_REAL_WAIT_S", "WebhookLoop"]

log = logging.getLogger("modelfleet.hub.webhooks")

MIN_REAL_WAIT_S = 0.05
"""The loop waits at least this many real seconds between rounds, whatever the clock's rate."""


class WebhookLoop:
    """Runs delivery rounds on a daemon thread.

    Args:
        webhooks: what delivers.
        interval_s: seconds of clock time between rounds (a scaled clock runs them faster).
        clock: the hub's clock (``real_seconds`` of a scaled clock converts the wait).
    """

    def __init__(self, webhooks: Webhooks, interval_s: float, clock: Clock) -> None:
        if not interval_s > 0:
            raise ValueError("the webhook interval must be positive")
        self._webhooks = webhooks
        real_seconds = getattr(clock, "real_seconds", None)
        wait_s = float(real_seconds(interval_s)) if callable(real_seconds) else interval_s
        self._wait_s = max(MIN_REAL_WAIT_S, wait_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> RoundResult | None:
        """One round; errors are logged, never raised (None then): the next round retries."""
        try:
            result = self._webhooks.run_once()
        except ModelfleetError as e:
            log.error("webhook round failed: %s", str(e).partition("\n")[0])
            return None
        except Exception:
            log.exception("webhook round failed")
            return None
        if result.attempted:
            log.info(
                "webhooks: %d attempted, %d delivered, %d to retry, %d dead",
                result.attempted,
                result.delivered,
                result.retrying,
                result.dead,
            )
        return result

    def start(self) -> None:
        """Start the thread (daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._wait_s):
            self.run_once()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop after the round in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
