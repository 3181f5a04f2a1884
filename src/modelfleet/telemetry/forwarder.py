"""The forwarder: send the buffer's records to the hub, oldest first, exactly once.

A thread that takes the oldest waiting records (:meth:`TelemetryBuffer.pending`), sends them
as one wire-format batch and deletes only the records the hub acknowledged (``acked_through``
of its answer). The hub deduplicates on ``(device_id, buffer_id, seq)``, so a batch sent
again after a crash between the hub's commit and the agent's delete is counted as
duplicates there, never stored twice: nothing is lost, nothing doubled.

On failure it waits a capped exponential backoff with full jitter
(:class:`~modelfleet.backoff.BackoffPolicy`), computed on the injected clock, and tries the
same records again; it resumes by itself after any outage, and after a restart from what
the buffer still holds. Device time is kept: records carry the times they were made;
``sent_at`` is the device clock when the batch leaves.

A batch the hub refuses as malformed or too large (:class:`InvalidInputError`: 400/413) is
split in halves until the records refused one by one are found. When the hub took other
records meanwhile, those can never be accepted, so they are dropped (counted in
``rejected_total`` and logged) rather than blocking the buffer for ever; when it refuses
every record (an older hub that cannot read the format), nothing is dropped and the
forwarder backs off and tries again later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import orjson

from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import Clock
from modelfleet.errors import AuthError, InvalidInputError, ModelfleetError
from modelfleet.telemetry.buffer import BufferedRecord, PendingPage, TelemetryBuffer
from modelfleet.telemetry.wire import FORMAT_VERSION, MAX_RECORDS_PER_BATCH

__all__ = ["DEFAULT_BACKOFF", "Forwarder", "Send", "real_wait"]

log = logging.getLogger("modelfleet.telemetry")

#: (batch) -> the hub's answer ``{"stored", "duplicates", "acked_through", "status"}``.
Send = Callable[[Mapping[str, Any]], Mapping[str, Any]]

#: From 1 s up to 5 min between tries while the hub cannot be reached.
DEFAULT_BACKOFF: Final = BackoffPolicy(base_s=1.0, cap_s=300.0)
#: About this many bytes of records per batch (the hub's default limit is 8 MiB).
DEFAULT_BATCH_BYTES: Final = 1024 * 1024
#: Share of one CPU the forwarder uses while catching up on a backlog (0.5 %: within the
#: 5 % serving goal, a 72 h backlog of 6 series in two to three minutes; docs/benchmarks.md).
DEFAULT_MAX_DUTY: Final = 0.005


def real_wait(clock: Clock, seconds: float) -> float:
    """Real seconds to wait for ``seconds`` of ``clock`` time (a scaled clock runs faster)."""
    convert = getattr(clock, "real_seconds", None)
    return float(convert(seconds)) if callable(convert) else seconds


class Forwarder:
    """Sends the buffer to the hub on its own thread.

    Args:
        buffer: the write-ahead buffer.
        send: posts one batch (``HubLink.send_telemetry`` bound to the device id); raises a
            :class:`~modelfleet.errors.ModelfleetError` when the hub did not take it.
        clock: device time (``sent_at``, ``last_forward_at``) and the backoff waits.
        device_id: this device.
        backoff: waits between failed tries.
        idle_s: clock seconds between looks at an empty buffer (it is also woken by
            :meth:`wake` after each append).
        max_records: records per batch (1 to 5000).
        max_bytes: about this many bytes of records per batch.
        rand: uniform [0, 1) source for the jitter.
        max_duty: the share of one CPU the forwarder may use while it catches up on a
            backlog (after an outage): after each batch it pauses ``(1/max_duty - 1)`` times
            the CPU time the batch took (new records do not cut the pause short), so draining
            a full buffer never slows serving by much (``docs/benchmarks.md``). 1.0: no
            pause.
        cpu_time: this thread's CPU seconds (``time.thread_time``; tests pass their own).
    """

    def __init__(
        self,
        buffer: TelemetryBuffer,
        send: Send,
        clock: Clock,
        device_id: str,
        *,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        idle_s: float = 60.0,
        max_records: int = 1000,
        max_bytes: int = DEFAULT_BATCH_BYTES,
        rand: Callable[[], float] = random.random,
        max_duty: float = DEFAULT_MAX_DUTY,
        cpu_time: Callable[[], float] = time.thread_time,
    ) -> None:
        if not 0.001 <= max_duty <= 1.0:
            raise ValueError("max_duty must be within [0.001, 1]")
        if not 1 <= max_records <= MAX_RECORDS_PER_BATCH:
            raise ValueError(f"max_records must be within [1, {MAX_RECORDS_PER_BATCH}]")
        self.buffer = buffer
        self._send = send
        self._clock = clock
        self.device_id = device_id
        self._backoff = backoff
        self._idle_s = idle_s
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._rand = rand
        self._duty = max_duty
        self._cpu_time = cpu_time
        self._pausing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        #: Records the hub acknowledged (stored or already had).
        self.forwarded_total = 0
        #: Batches that failed (each failure, not each record).
        self.failures_total = 0
        #: Records dropped because the hub refused them as malformed.
        self.rejected_total = 0
        self.last_forward_at: datetime | None = None
        self.last_error = ""
        self._refusal = ""

    # -- thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="modelfleet-telemetry-forwarder", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; a send in flight finishes (or fails) first."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look at the buffer now (called after an append)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # the thread must survive anything; the reason is logged
                log.exception("telemetry forwarding failed")
                delay = self._backoff.cap_s
            if delay is None:
                continue
            if self._pausing:  # a duty-cycle pause: new records do not cut it short
                self._stop.wait(real_wait(self._clock, delay))
                continue
            self._wake.wait(real_wait(self._clock, delay))
            self._wake.clear()

    # -- one step (tests drive it directly) -----------------------------------------------

    def step(self) -> float | None:
        """Send one batch if any waits.

        Returns:
            None to go on at once (more may wait), else clock seconds to wait: idle, backing
            off, or pausing to keep within ``max_duty`` while catching up.
        """
        self._pausing = False
        cpu_before = self._cpu_time()
        page = self.buffer.pending_page(self._max_records, self._max_bytes)
        if page is None:
            return self._idle_s
        result = self._send_page(page)
        if result is not None and result[1]:
            acked, refused = result
            if acked:  # the hub takes other records: these ones it never will
                log.error(
                    "the hub refuses telemetry records %s, dropping them: %s",
                    refused[:10],
                    self._refusal,
                )
                self.buffer.ack(refused)
                self.rejected_total += len(refused)
            else:  # it refuses everything (an older hub?): keep all, try again later
                self._failed(f"the hub refuses every record (kept): {self._refusal}")
                result = None
        if result is None:
            self.failures += 1
            self.failures_total += 1
            return self._backoff.delay(self.failures, self._rand)
        self.failures = 0
        self.last_error = ""
        # CPU time, not wall time: waiting for the hub or for the interpreter costs nobody
        pause_s = (self._cpu_time() - cpu_before) * (1.0 / self._duty - 1.0)
        if pause_s <= 0:
            return None
        self._pausing = True
        return pause_s / real_wait(self._clock, 1.0)  # real seconds -> clock seconds

    def _send_page(self, page: PendingPage) -> tuple[int, list[int]] | None:
        """Send a page as one batch; on a refusal, fall back to halving it record by record."""
        try:
            answer = self._send(self._batch(orjson.Fragment(page.records_json), len(page.seqs)))
        except InvalidInputError as e:
            self._refusal = str(e)
            records = [
                r
                for r in self.buffer.pending(len(page.seqs), self._max_bytes * 2)
                if r.seq <= page.seqs[-1]
            ]
            return self._send_records(records) if records else (0, [])
        except AuthError as e:
            self._failed(f"the hub refuses this device's telemetry: {e}")
            return None
        except ModelfleetError as e:
            self._failed(str(e))
            return None
        return self._acknowledged(page.seqs, answer)

    def _acknowledged(
        self, seqs: list[int], answer: Mapping[str, Any]
    ) -> tuple[int, list[int]] | None:
        """Delete what the hub's answer acknowledges (``seq <= acked_through``)."""
        acked_through = answer.get("acked_through")
        if type(acked_through) is not int:
            self._failed(f"the hub's answer has no acked_through: {dict(answer)!r:.200}")
            return None
        acked = [s for s in seqs if s <= acked_through]
        self.buffer.ack(acked)
        self.forwarded_total += len(acked)
        self.last_forward_at = self._clock.now()
        if len(acked) < len(seqs):  # the hub took part of it: the rest goes next time
            log.warning("the hub acknowledged %d of %d records", len(acked), len(seqs))
        return len(acked), []

    def _send_records(self, records: list[BufferedRecord]) -> tuple[int, list[int]] | None:
        """Send ``records``, halving a batch the hub refuses as malformed or too large.

        Returns:
            (records acknowledged, seqs the hub refused one by one), or None when the hub
            could not be reached or refused for another reason (nothing more is tried).
        """
        try:
            answer = self._send(
                self._batch([orjson.Fragment(r.body) for r in records], len(records))
            )
        except InvalidInputError as e:
            self._refusal = str(e)
            if len(records) == 1:
                return 0, [records[0].seq]
            half = len(records) // 2
            first = self._send_records(records[:half])
            if first is None:
                return None
            rest = self._send_records(records[half:])
            if rest is None:
                return None
            return first[0] + rest[0], first[1] + rest[1]
        except AuthError as e:
            self._failed(f"the hub refuses this device's telemetry: {e}")
            return None
        except ModelfleetError as e:
            self._failed(str(e))
            return None
        return self._acknowledged([r.seq for r in records], answer)

    def _batch(self, records: Any, count: int) -> dict[str, Any]:
        """The wire batch. ``records`` are the stored bytes as ``orjson.Fragment`` (one for
        the whole array, or one per record): a sender that is not orjson-based decodes the
        batch with ``orjson.loads(orjson.dumps(batch))``."""
        stats = self.buffer.stats()
        return {
            "format": FORMAT_VERSION,
            "device_id": self.device_id,
            "buffer_id": self.buffer.buffer_id,
            "sent_at": self._clock.now().isoformat(),
            "records": records,
            "buffered": max(0, stats.records - count),
            "evicted_total": stats.evicted_total,
        }

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("telemetry not forwarded (will retry): %s", message)
        self.last_error = message

    def state(self) -> dict[str, Any]:
        """Forwarding figures for status and metrics."""
        return {
            "forwarded_total": self.forwarded_total,
            "forward_failures_total": self.failures_total,
            "rejected_total": self.rejected_total,
            "last_forward_at": self.last_forward_at.isoformat() if self.last_forward_at else None,
            "last_error": self.last_error,
        }
