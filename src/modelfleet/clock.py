"""Injectable clocks: code that needs the time takes a :class:`Clock`, never calls ``time``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock", "parse_scaled_clock"]


class Clock(Protocol):
    """Source of wall-clock and monotonic time."""

    def now(self) -> datetime:
        """Return the current wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds (only differences are meaningful)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    #: ``time.monotonic`` itself, not a method around it: the guard reads it per watched
    #: request (issue 6).
    monotonic = staticmethod(time.monotonic)


class ManualClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds``."""
        from datetime import timedelta

        self._now += timedelta(seconds=seconds)
        self._mono += seconds


class ScaledClock:
    """Real time run faster: for simulations and time-compressed tests across processes.

    Every process given the same ``origin`` and ``rate`` reads the same time: ``origin``
    plus ``rate`` times the real seconds since ``origin``. ``monotonic()`` runs ``rate``
    times faster than the real monotonic clock. Never used unless asked for
    (``MODELFLEET_SIM_CLOCK``, read by the CLI only).

    Args:
        origin_epoch_s: the real Unix time at which simulated and real time coincide.
        rate: simulated seconds per real second (1 to 1,000,000).
    """

    def __init__(self, origin_epoch_s: float, rate: float) -> None:
        if not 1.0 <= rate <= 1_000_000.0:
            raise ValueError("a scaled clock's rate must be between 1 and 1,000,000")
        self.origin_epoch_s = origin_epoch_s
        self.rate = rate

    def now(self) -> datetime:
        real = time.time()
        return datetime.fromtimestamp(
            self.origin_epoch_s + (real - self.origin_epoch_s) * self.rate, UTC
        )

    def monotonic(self) -> float:
        return time.monotonic() * self.rate

    def real_seconds(self, simulated_s: float) -> float:
        """How many real seconds ``simulated_s`` simulated seconds take."""
        return simulated_s / self.rate


def parse_scaled_clock(spec: str) -> ScaledClock:
    """Parse ``"ORIGIN_EPOCH_S:RATE"`` (the ``MODELFLEET_SIM_CLOCK`` value).

    Raises:
        ValueError: the spec is malformed or the rate out of range.
    """
    origin, sep, rate = spec.partition(":")
    if not sep:
        raise ValueError(f"expected ORIGIN_EPOCH_S:RATE, got {spec!r}")
    return ScaledClock(float(origin), float(rate))
