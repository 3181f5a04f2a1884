"""Who runs the rollout controller, and the thread that ticks it (issue 8, ADR 0015).

One controller acts among many hub processes: :class:`ControllerLease` holds a session-level
PostgreSQL advisory lock (:data:`~modelfleet.hub.locks.ROLLOUT_CONTROLLER`) on a dedicated
connection for as long as the process lives; the other processes try again each interval.
On SQLite the single hub process is the controller. :class:`ControllerLoop` is the thread
``hub serve`` runs around :class:`~modelfleet.hub.controller.RolloutController`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Final

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from modelfleet.clock import Clock
from modelfleet.errors import ModelfleetError
from modelfleet.hub import locks
from modelfleet.hub.controller import RolloutController

__all__ = ["EVALUATE_EVERY_TICKS", "MIN_REAL_WAIT_S", "ControllerLease", "ControllerLoop"]

log = logging.getLogger("modelfleet.hub.controller")


class ControllerLease:
    """Who may run the controller: a session advisory lock on PostgreSQL, always this
    process on SQLite.

    The lock lives on a dedicated connection (autocommit, never idle in a transaction) held
    while the process lives; PostgreSQL releases it when the connection ends (the process
    died, or the network dropped it), and another process's next :meth:`acquire` takes it.

    Args:
        engine: the hub's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._sqlite = engine.dialect.name == "sqlite"

    @property
    def held(self) -> bool:
        """Whether this process held the lease at the last :meth:`acquire`."""
        return self._sqlite or self._conn is not None

    def acquire(self) -> bool:
        """Hold the lease, or try to take it; True when this process holds it now.

        A held lease is checked (the connection still answers); a lost one is given up and
        tried again at the next call. Never raises for a database failure: no lease.
        """
        if self._sqlite:
            return True
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))
                return True
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": locks.ROLLOUT_CONTROLLER}
                    ).scalar()
                )
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            log.info("this process holds the rollout controller lease (pid %d)", os.getpid())
            return True
        except SQLAlchemyError as e:
            if self._conn is not None:
                log.warning("lost the rollout controller lease: %s", str(e).partition("\n")[0])
                self._drop()
            return False

    def release(self) -> None:
        """Give the lease up (at shutdown)."""
        if self._conn is None:
            return
        # Closing the connection releases it anyway.
        with contextlib.suppress(SQLAlchemyError):
            self._conn.execute(
                text("SELECT pg_advisory_unlock(:k)"), {"k": locks.ROLLOUT_CONTROLLER}
            )
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()
                conn.close()


MIN_REAL_WAIT_S: Final = 0.05
"""The loop waits at least this many real seconds between ticks, whatever the clock's rate."""

EVALUATE_EVERY_TICKS: Final = 6
"""The loop evaluates a stage's telemetry at most every this many ticks (30 s at the default
5 s interval); guard rollbacks and crashes are looked at every tick."""


class ControllerLoop:
    """The thread ``hub serve`` runs: every ``interval_s`` of the hub clock, take or keep
    the lease, and tick when held. Sets the controller's ``evaluate_every_s`` to
    :data:`EVALUATE_EVERY_TICKS` intervals.

    Args:
        controller: what to tick.
        lease: who may.
        interval_s: seconds of clock time between ticks (a scaled clock runs them faster).
        clock: the hub's clock (``real_seconds`` of a scaled clock converts the wait).
    """

    def __init__(
        self,
        controller: RolloutController,
        lease: ControllerLease,
        interval_s: float,
        clock: Clock,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("the controller interval must be positive")
        self._controller = controller
        controller.evaluate_every_s = EVALUATE_EVERY_TICKS * interval_s
        self._lease = lease
        real_seconds = getattr(clock, "real_seconds", None)
        wait_s = float(real_seconds(interval_s)) if callable(real_seconds) else interval_s
        # A fast scaled clock must not turn the loop into a busy one.
        self._wait_s = max(MIN_REAL_WAIT_S, wait_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Take or keep the lease and tick when held; True when it ticked. Errors are
        logged, never raised: the next round tries again."""
        if not self._lease.acquire():
            return False
        try:
            self._controller.tick()
        except ModelfleetError as e:
            log.error("rollout controller tick failed: %s", str(e).partition("\n")[0])
        except Exception:
            log.exception("rollout controller tick failed")
        return True

    def start(self) -> None:
        """Start the thread (daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._wait_s):
            self.run_once()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking, wait for a tick in progress, give the lease up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._lease.release()
