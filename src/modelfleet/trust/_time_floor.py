"""The device's time floor: never trust a clock older than the last accepted metadata.

Issue 11, ADR 0036. A device at an air-gapped site may have its clock set back (a dead RTC
battery, a reset to 1970, an operator "fixing" a refusal). TUF checks expiry against the
device's clock, so a clock set back would make expired metadata valid again. The floor is
the latest time this device has reason to believe has passed; expiry is checked against
``max(now, floor)`` (:meth:`TimeFloor.reference`), and the floor never decreases. The
trust client (:class:`~modelfleet.trust.client.DeviceTrustClient`) raises it:

* after an accepted refresh, to the clock's ``now`` (every final role was valid then, so
  the floor never passes the expiry of metadata the device accepted);
* after a refresh refused as expired, to the signed expiry of the role found expired
  (never to the clock itself), so a clock set back afterwards still sees it expired.

Either way a clock set *forward* can push the floor no later than a signed expiry the
device has seen: fresh metadata from the hub (which expires later) is still accepted.

File: ``<cache>/time-floor.json``, ``{"floor": "<ISO 8601 UTC>"}`` (unknown fields kept),
written atomically (:mod:`modelfleet._atomic`).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelfleet._atomic import atomic_write_text

__all__ = ["FLOOR_FILE", "TimeFloor"]

log = logging.getLogger("modelfleet.trust")

#: The floor's file name in the device's TUF cache folder.
FLOOR_FILE = "time-floor.json"


class TimeFloor:
    """A persistent, never-decreasing lower bound on the device's idea of "now".

    Thread-safe. An unreadable or malformed file is logged and read as no floor (the
    metadata cache it guards is on the same disk; a floor cannot be forged from outside
    without write access to that cache).

    Args:
        path: the floor's file (created on the first :meth:`advance`).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._extra: dict[str, Any] = {}
        self._floor = self._load()

    @property
    def floor(self) -> datetime | None:
        """The floor, or None when this device has never accepted metadata."""
        return self._floor

    def reference(self, now: datetime) -> datetime:
        """The time expiry is checked against: ``max(now, floor)``."""
        floor = self._floor
        return now if floor is None or now >= floor else floor

    def advance(self, at: datetime) -> bool:
        """Raise the floor to ``at`` (metadata was accepted then); never lowers it.

        Args:
            at: the device's wall-clock time of the accepted refresh (timezone-aware).

        Returns:
            Whether the floor moved (and was written).

        Raises:
            StorageError: the file could not be written; the floor in memory is unchanged.
        """
        at = at.astimezone(UTC).replace(microsecond=0)
        with self._lock:
            if self._floor is not None and at <= self._floor:
                return False
            body = {**self._extra, "floor": at.isoformat()}
            atomic_write_text(self.path, json.dumps(body, sort_keys=True) + "\n")
            self._floor = at
            return True

    def _load(self) -> datetime | None:
        try:
            raw = self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("time floor %s unreadable, ignored: %s", self.path, e.strerror or e)
            return None
        try:
            body = json.loads(raw)
            floor = datetime.fromisoformat(body["floor"])
        except (ValueError, KeyError, TypeError) as e:
            log.error("time floor %s malformed, ignored: %s", self.path, e)
            return None
        if floor.tzinfo is None:
            log.error("time floor %s has no time zone, ignored", self.path)
            return None
        self._extra = {k: v for k, v in body.items() if k != "floor"}
        return floor.astimezone(UTC)
