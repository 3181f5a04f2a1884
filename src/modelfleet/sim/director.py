"""Where a device's director metadata lives: the one small seam between the simulator and
the hub's director layout (issue 8 contract, H1).

Two layouts are served by hubs in the field:

* **per-device** (Uptane's per-vehicle director repository):
  ``/tuf/director/devices/{id}/metadata/`` serves ``{N}.root.json`` (the shared root),
  ``timestamp.json``, ``{V}.snapshot.json``, ``{V}.targets.json``; the targets list only
  ``devices/{id}/desired-state.json``;
* **shared** (before it): ``/tuf/director/metadata/`` lists every device's desired state.

The desired-state bytes are at ``/tuf/director/targets/devices/{id}/{sha256}.desired-state.json``
in both. :class:`DirectorLayouts` tries the per-device base first; a 404 there falls back to
the shared base, and the answer is remembered fleet-wide: once any device got its
per-device timestamp, a 404 for another device means "no desired state yet", not "old hub";
while the hub serves the shared layout, the per-device base is probed again every
``reprobe_s`` (a hub upgraded under a running fleet is found).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DirectorLayout", "DirectorLayouts", "desired_state_url"]


class DirectorLayout(StrEnum):
    UNKNOWN = "unknown"
    PER_DEVICE = "per-device"
    SHARED = "shared"


def desired_state_url(device_id: str, sha256: str) -> str:
    """The consistent-snapshot path of a device's desired-state bytes."""
    return f"/tuf/director/targets/devices/{device_id}/{sha256}.desired-state.json"


class DirectorLayouts:
    """The fleet's knowledge of the hub's director layout (pure; the caller fetches).

    Args:
        reprobe_s: while the shared layout is in use, try the per-device base again after
            this many (monotonic) seconds.
    """

    def __init__(self, reprobe_s: float = 600.0) -> None:
        self.layout = DirectorLayout.UNKNOWN
        self._reprobe_s = reprobe_s
        self._shared_at = float("-inf")

    @staticmethod
    def base(layout: DirectorLayout, device_id: str) -> str:
        """The metadata base URL path (ends with ``/``) of ``layout`` for ``device_id``."""
        if layout is DirectorLayout.PER_DEVICE:
            return f"/tuf/director/devices/{device_id}/metadata/"
        return "/tuf/director/metadata/"

    def first(self, now: float) -> DirectorLayout:
        """The layout to try first for a refresh at monotonic time ``now``."""
        if self.layout is DirectorLayout.SHARED and now - self._shared_at < self._reprobe_s:
            return DirectorLayout.SHARED
        return DirectorLayout.PER_DEVICE

    def on_not_found(self, tried: DirectorLayout) -> DirectorLayout | None:
        """A 404 for ``tried``'s timestamp: the layout to try next, or None (this device
        simply has no director metadata yet)."""
        if tried is DirectorLayout.PER_DEVICE and self.layout is not DirectorLayout.PER_DEVICE:
            return DirectorLayout.SHARED
        return None

    def on_found(self, layout: DirectorLayout, now: float) -> None:
        """``layout``'s timestamp answered 200 at monotonic time ``now``."""
        if layout is DirectorLayout.SHARED:
            if self.layout is not DirectorLayout.PER_DEVICE:
                self.layout = DirectorLayout.SHARED
                self._shared_at = now
        else:
            self.layout = DirectorLayout.PER_DEVICE
