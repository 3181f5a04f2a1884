"""Deterministic rollout cohorts: which devices each stage of a rollout reaches.

A device's place in a rollout is a hash of the rollout id and its id, so replaying a rollout
over the same fleet picks the same canaries, and a new device does not move anyone else
(issue 8: "the same devices form the 1 % every time the rollout is replayed"). Stages are
cumulative: a device in stage k is in every later stage.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from modelfleet.errors import InvalidInputError

__all__ = [
    "MAX_STAGES",
    "CohortPlan",
    "blast_radius_groups",
    "plan_cohorts",
    "position",
    "stage_counts",
]

MAX_STAGES = 100
"""Most stages a cohort plan may need (blast-radius overflow included)."""


def position(device_id: str, rollout_id: str) -> float:
    """A device's place in a rollout, uniform in [0, 1).

    ``sha256(rollout_id + b"\\0" + device_id)``, first 8 bytes big-endian over 2**64.
    The same pair always gives the same position; different rollouts shuffle the fleet
    independently.
    """
    digest = hashlib.sha256(rollout_id.encode() + b"\0" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _position_key(rollout_id: str) -> Callable[[str], tuple[float, str]]:
    """A sort key equal to ``(position(d, rollout_id), d)``, hashing the shared prefix once."""
    prefix = hashlib.sha256(rollout_id.encode() + b"\0")

    def key(device_id: str) -> tuple[float, str]:
        h = prefix.copy()
        h.update(device_id.encode())
        return int.from_bytes(h.digest()[:8], "big") / 2**64, device_id

    return key


def stage_counts(n: int, percents: Sequence[float]) -> list[int]:
    """Cumulative device counts per stage for a fleet of ``n``.

    ``ceil(n * percent / 100)``, then: stage 0 holds at least one device when ``n >= 1``;
    a stage below 100 % never holds the whole fleet when ``n >= 2``; 100 % is ``n``; the
    counts never decrease.

    Raises:
        InvalidInputError: ``n < 0``, no percents, or a percent outside (0, 100].
    """
    if n < 0:
        raise InvalidInputError(f"fleet size must not be negative, got {n}")
    if not percents:
        raise InvalidInputError("at least one stage percent is needed")
    counts: list[int] = []
    for p in percents:
        if not (math.isfinite(p) and 0.0 < p <= 100.0):
            raise InvalidInputError(f"stage percent must be in (0, 100], got {p}")
        if p >= 100.0:
            c = n
        else:
            # The epsilon keeps 9 % of 100 at 9 when n * p / 100 lands a hair above it.
            c = math.ceil(n * p / 100.0 - 1e-9)
            c = min(max(c, 1 if n >= 1 else 0), n - 1 if n >= 2 else n)
        counts.append(max(c, counts[-1]) if counts else c)
    return counts


@dataclass(frozen=True)
class CohortPlan:
    """Which stage first reaches each device.

    Attributes:
        stage_of: device id -> index of the first stage it is in (0-based); iteration order
            is the devices' rollout order (by position).
        stages: number of stages; more than the plan's when blast-radius groups needed extra
            trailing stages (those repeat the plan's last stage).
    """

    stage_of: Mapping[str, int]
    stages: int

    def members(self, k: int) -> list[str]:
        """Every device in stage ``k`` (cumulative: ``stage_of <= k``), in rollout order."""
        return [d for d, s in self.stage_of.items() if s <= k]

    def added(self, k: int) -> list[str]:
        """The devices stage ``k`` adds (``stage_of == k``), in rollout order."""
        return [d for d, s in self.stage_of.items() if s == k]

    def sizes(self) -> list[int]:
        """Cumulative member count per stage (``len(members(k))`` for every k)."""
        added = [0] * self.stages
        for s in self.stage_of.values():
            added[s] += 1
        out: list[int] = []
        total = 0
        for a in added:
            total += a
            out.append(total)
        return out


def blast_radius_groups(tags: Mapping[str, Sequence[str]], prefix: str | None) -> dict[str, str]:
    """Blast-radius groups from device tags: devices sharing a tag that starts with ``prefix``.

    Args:
        tags: device id -> its tags.
        prefix: the plan's ``blast_radius_tag`` (``"cell:"``); None or "" = no groups.

    Returns:
        device id -> group tag, for the devices that have one (the smallest, when a device
        carries several), as :func:`plan_cohorts` takes it.
    """
    if not prefix:
        return {}
    out: dict[str, str] = {}
    for device, device_tags in tags.items():
        matching = [t for t in device_tags if t.startswith(prefix)]
        if matching:
            out[device] = min(matching)
    return out


def plan_cohorts(
    device_ids: Sequence[str],
    rollout_id: str,
    percents: Sequence[float],
    groups: Mapping[str, str] | None = None,
) -> CohortPlan:
    """Assign every device to the first stage that reaches it.

    Devices are taken in order of :func:`position` (ties by id) until each stage's
    cumulative :func:`stage_counts` is filled. Blast radius: two devices of one group
    (``groups``: device id -> group key; devices not in it have no group) are never *added*
    in the same stage — the later one waits for the next stage, and the stage fills its count
    with the next eligible devices. Trailing stages are appended while devices remain (a group
    of m members needs at least m stages). Duplicate ids count once. Deterministic.

    Raises:
        InvalidInputError: bad percents (see :func:`stage_counts`), or a blast-radius group so
            large that more than :data:`MAX_STAGES` stages would be needed.
    """
    groups = groups or {}
    unique = dict.fromkeys(device_ids)
    ordered = sorted(unique, key=_position_key(rollout_id))
    counts = stage_counts(len(ordered), percents)
    sizes: dict[str, int] = {}
    for d in ordered:
        g = groups.get(d)
        if g is not None:
            sizes[g] = sizes.get(g, 0) + 1
    if sizes:
        biggest = max(sizes, key=lambda g: (sizes[g], g))
        if sizes[biggest] > MAX_STAGES:
            raise InvalidInputError(
                f"blast-radius group {biggest!r} has {sizes[biggest]} devices: it would need "
                f"as many stages (at most {MAX_STAGES}); use a narrower group tag"
            )
    stage_of: dict[str, int] = {}
    remaining = ordered
    k = 0
    while remaining:
        # Past the plan's last stage every remaining device is due (the last count is n).
        target = counts[k] if k < len(counts) else len(ordered)
        need = target - len(stage_of)
        used: set[str] = set()
        later: list[str] = []
        for d in remaining:
            if need <= 0:
                later.append(d)
                continue
            g = groups.get(d)
            if g is not None:
                if g in used:
                    later.append(d)
                    continue
                used.add(g)
            stage_of[d] = k
            need -= 1
        remaining = later
        k += 1
    stages = max(k, len(counts))
    # Rollout order: by position, as `ordered`.
    return CohortPlan({d: stage_of[d] for d in ordered}, stages)
