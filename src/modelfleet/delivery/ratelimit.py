"""Bandwidth budgets (issue 11, ADR 0038): a token bucket paced on the bytes received.

:class:`TokenBucket` is the pure core: ``reserve(n, now)`` books ``n`` bytes and returns how
long to wait before reading more. The bucket may go into debt: a reader that just received
a piece larger than the tokens left waits until the debt is paid back at ``rate``, so
several readers sharing one bucket (the mirror's concurrent upstream downloads: the
site's WAN budget) together never receive more than ``burst + rate * t`` bytes in ``t``
seconds, plus the one piece each has in hand. Pacing the reader is enough: while it waits
the socket's receive buffer fills and TCP slows the sender down.

:class:`RateLimiter` (threads) and :class:`AsyncRateLimiter` (one event loop) are the two
shells around it; both take their clock and sleep injected.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable

from modelfleet.errors import ConfigError

__all__ = ["AsyncRateLimiter", "RateLimiter", "TokenBucket", "mbps_to_bytes_s"]


def mbps_to_bytes_s(mbps: float | None) -> float | None:
    """Megabits per second (how links are sold) to bytes per second; None stays None."""
    return None if mbps is None else mbps * 1_000_000 / 8


#: The smallest burst: one socket read's worth, so pacing does not split every read.
MIN_BURST_BYTES = 64 * 1024


class TokenBucket:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` bytes; pure.

    Args:
        rate_bytes_s: the budget, bytes per second (> 0, finite).
        burst_bytes: the most that may be received at once after an idle spell (default:
            one second's worth, at least 64 KiB).

    Raises:
        ConfigError: a rate or burst that is not a positive finite number.
    """

    def __init__(self, rate_bytes_s: float, burst_bytes: float | None = None) -> None:
        if not (math.isfinite(rate_bytes_s) and rate_bytes_s > 0):
            raise ConfigError(f"a bandwidth budget must be a positive rate, not {rate_bytes_s}")
        burst = max(float(MIN_BURST_BYTES), rate_bytes_s) if burst_bytes is None else burst_bytes
        if not (math.isfinite(burst) and burst > 0):
            raise ConfigError(f"a bandwidth burst must be positive, not {burst}")
        self.rate = float(rate_bytes_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at: float | None = None

    def reserve(self, n: int, now: float) -> float:
        """Book ``n`` bytes at time ``now``; return the seconds to wait before the next read
        (0 when the budget covers them)."""
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now
        self._tokens -= max(0, n)
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """A :class:`TokenBucket` shared by threads; :meth:`wait` sleeps off each booking.

    Args:
        rate_bytes_s: the budget, bytes per second.
        monotonic: the clock the bucket refills on.
        sleep: how to wait (tests pass a fake that moves their clock).
    """

    def __init__(
        self,
        rate_bytes_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = TokenBucket(rate_bytes_s)
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Book ``n`` received bytes; the seconds to wait before reading more."""
        with self._lock:
            return self.bucket.reserve(n, self._monotonic())

    def wait(self, n: int) -> None:
        """Book ``n`` received bytes and sleep as long as the budget asks (no lock held)."""
        delay = self.reserve(n)
        if delay > 0:
            self._sleep(delay)


class AsyncRateLimiter:
    """A :class:`TokenBucket` shared by the tasks of one event loop (no lock needed).

    Args:
        rate_bytes_s: the budget, bytes per second.
        monotonic: the clock the bucket refills on.
        sleep: how to wait (``asyncio.sleep``; tests pass a fake that moves their clock).
    """

    def __init__(
        self,
        rate_bytes_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bucket = TokenBucket(rate_bytes_s)
        self._monotonic = monotonic
        self._sleep = sleep

    async def wait(self, n: int) -> None:
        """Book ``n`` received bytes and sleep as long as the budget asks."""
        delay = self.bucket.reserve(n, self._monotonic())
        if delay > 0:
            await self._sleep(delay)
