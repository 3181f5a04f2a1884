"""The device's telemetry shell: windows closed on clock time, appended, forwarded.

:class:`DeviceTelemetry` owns the :class:`~modelfleet.telemetry.windows.WindowRecorder` (a
request observer), the :class:`~modelfleet.telemetry.buffer.TelemetryBuffer` and the
:class:`~modelfleet.telemetry.forwarder.Forwarder`, and runs the *closer* thread: every
``window_s`` seconds of device time (boundaries aligned to multiples of ``window_s`` since
the epoch, so windows of a fleet line up; the first window is partial) it closes the window
and appends its records, and it appends update events as they come. Nothing here runs on the
event loop but the recorder's counters.

When an append fails (disk full, SQLite error) the records stay in memory, bounded, and are
tried again with the next append; the agent keeps serving, ``append_failing`` says so (in
``agent status`` and the ``modelfleet_agent_telemetry_append_failures_total`` metric).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, StorageError
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.forwarder import DEFAULT_BACKOFF, Forwarder, Send, real_wait
from modelfleet.telemetry.windows import (
    Attach,
    ProductionOf,
    RolloutOf,
    Routed,
    WindowRecorder,
)

__all__ = ["MAX_WINDOW_S", "MIN_WINDOW_S", "DeviceTelemetry"]

log = logging.getLogger("modelfleet.telemetry")

MIN_WINDOW_S: Final = 1.0
MAX_WINDOW_S: Final = 3600.0
#: Records kept in memory while appends fail; older ones are dropped (and counted).
MAX_UNWRITTEN: Final = 10_000
_MAX_MESSAGE: Final = 4096


class DeviceTelemetry:
    """Windows, events, buffer and forwarder of one agent.

    Args:
        device_id: this device.
        buffer: the write-ahead buffer (owned from now on: :meth:`stop` closes it).
        send: posts one batch to the hub.
        clock: device time; window boundaries and every wait are computed from it.
        window_s: window length in clock seconds (1 to 3600).
        rollout_of: the rollout id a (model, version) is served under.
        routed: the (model, version, role) triples routed now (idle windows).
        production_of: a model's production version now.
        attach: extra window fields per (model, version, role), asked at each close (the
            agent's drift profile counts, issue 9).
        follow: told the records of each closed window, returns more records appended with
            them in the same append (the review samples of suspect windows, issue 9); one
            that raises adds nothing (logged).
        backoff: the forwarder's waits between failed sends.
        rand: uniform [0, 1) source for the jitter.

    Raises:
        ConfigError: ``window_s`` out of range.
    """

    def __init__(
        self,
        device_id: str,
        buffer: TelemetryBuffer,
        send: Send,
        clock: Clock,
        *,
        window_s: float = 60.0,
        rollout_of: RolloutOf = lambda model, version: None,
        routed: Routed = lambda: (),
        production_of: ProductionOf = lambda model: None,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        rand: Callable[[], float] | None = None,
        forwarder_max_records: int = 1000,
        forwarder_max_duty: float | None = None,
        attach: Attach | None = None,
        follow: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> None:
        if not (math.isfinite(window_s) and MIN_WINDOW_S <= window_s <= MAX_WINDOW_S):
            raise ConfigError(
                f"telemetry window {window_s} s is outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}]"
            )
        self.device_id = device_id
        self.window_s = window_s
        self.buffer = buffer
        self.clock = clock
        self._rollout_of = rollout_of
        self._follow = follow
        self.recorder = WindowRecorder(
            device_id, clock.now(), rollout_of, routed, production_of, attach
        )
        extra: dict[str, Any] = {} if rand is None else {"rand": rand}
        if forwarder_max_duty is not None:
            extra["max_duty"] = forwarder_max_duty
        self.forwarder = Forwarder(
            buffer,
            send,
            clock,
            device_id,
            backoff=backoff,
            idle_s=window_s,
            max_records=forwarder_max_records,
            **extra,
        )
        self._events: deque[dict[str, Any]] = deque()
        self._unwritten: list[dict[str, Any]] = []
        self._append_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.append_failures_total = 0
        self.unwritten_dropped_total = 0
        self.append_failing = False
        self.last_append_error = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the closer and the forwarder."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="modelfleet-telemetry-closer", daemon=True
            )
            self._thread.start()
            self.forwarder.start()

    def stop(self, flush: bool = True) -> None:
        """Stop both threads; with ``flush`` close the partial window and append it first."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if flush:
            self._append(self._drain_events() + self._close(self.clock.now()))
        self.forwarder.stop()
        self.buffer.close()

    # -- events (any thread) --------------------------------------------------------------

    def record_event(
        self,
        at: str,
        kind: str,
        message: str,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        """Queue one update event (the updater's ``on_event`` hook); appended promptly.

        Refusals and other update events are also counted in the model's window.
        """
        rollout = None
        if model is not None and version is not None:
            try:
                rollout = self._rollout_of(model, version)
            except Exception:
                rollout = None
        self._events.append(
            {
                "kind": "event",
                "device_id": self.device_id,
                "at": at,
                "event": kind or "event",
                "model": model,
                "version": version,
                "message": message[:_MAX_MESSAGE],
                "rollout_id": rollout,
            }
        )
        if kind in ("switch", "refused", "rollback"):
            self.recorder.on_update_event(kind, model, version)
        self._wake.set()

    # -- closer thread --------------------------------------------------------------------

    def _next_boundary(self, now: datetime) -> float:
        t = now.timestamp()
        return (math.floor(t / self.window_s) + 1) * self.window_s

    def _run(self) -> None:
        boundary = self._next_boundary(self.recorder.opened_at)
        while not self._stop.is_set():
            try:
                now = self.clock.now()
                if now.timestamp() >= boundary:
                    closed_at = datetime.fromtimestamp(boundary, UTC)
                    if now.timestamp() - boundary > self.window_s:
                        closed_at = now  # the clock jumped (suspend, NTP): one long window
                    self._append(self._drain_events() + self._close(closed_at))
                    boundary = self._next_boundary(closed_at)
                elif self._events:
                    self._append(self._drain_events())
                wait = boundary - self.clock.now().timestamp()
            except Exception:  # the closer must survive anything; the reason is logged
                log.exception("telemetry closer failed")
                wait = self.window_s
            if wait > 0:
                self._wake.wait(real_wait(self.clock, wait))
                self._wake.clear()

    def close_window(self, now: datetime | None = None) -> list[int]:
        """Close the current window now and append it with the queued events (tests).

        Returns:
            The seqs given (empty when the append failed and the records wait in memory).
        """
        return self._append(self._drain_events() + self._close(now or self.clock.now()))

    def _close(self, at: datetime) -> list[dict[str, Any]]:
        """The window's records closed at ``at``, and what ``follow`` adds to them."""
        records = self.recorder.close(at)
        if self._follow is not None:
            try:
                records += self._follow(records)
            except Exception:  # a follower must never stop a window being appended
                log.exception("telemetry window follower failed")
        return records

    def _drain_events(self) -> list[dict[str, Any]]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def _append(self, records: Iterable[dict[str, Any]]) -> list[int]:
        with self._append_lock:
            batch = self._unwritten + list(records)
            if not batch:
                return []
            try:
                seqs = self.buffer.append(batch)
            except StorageError as e:
                self.append_failures_total += 1
                if not self.append_failing or str(e) != self.last_append_error:
                    log.error("telemetry not written (still serving; kept in memory): %s", e)
                self.append_failing = True
                self.last_append_error = str(e)
                over = len(batch) - MAX_UNWRITTEN
                if over > 0:
                    self.unwritten_dropped_total += over
                    del batch[:over]
                self._unwritten = batch
                return []
            if self.append_failing:
                log.info("telemetry written again after %d failed appends", len(self._unwritten))
            self._unwritten = []
            self.append_failing = False
            self.last_append_error = ""
        self.forwarder.wake()
        return seqs

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``telemetry`` object of ``agent status``."""
        stats = self.buffer.stats()
        fwd = self.forwarder.state()
        return {
            "records": stats.records,
            "bytes": stats.bytes,
            "file_bytes": stats.file_bytes,
            "max_bytes": stats.max_bytes,
            "buffer_id": stats.buffer_id,
            "appended_total": stats.appended_total,
            "evicted_total": stats.evicted_total,
            "acked_total": stats.acked_total,
            "forwarded_total": fwd["forwarded_total"],
            "forward_failures_total": fwd["forward_failures_total"],
            "rejected_total": fwd["rejected_total"],
            "last_forward_at": fwd["last_forward_at"],
            "last_error": fwd["last_error"] or self.last_append_error,
            "append_failing": self.append_failing,
            "append_failures_total": self.append_failures_total,
            "unwritten": len(self._unwritten),
            "window_s": self.window_s,
        }
