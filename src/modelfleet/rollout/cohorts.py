"""Deterministic rollout cohorts: which devices each stage of a rollout reaches.

A device's place in a rollout is a hash of the rollout id and its id, so replaying a rollout
over the same fleet picks the same canaries, and a new device does not move anyone else
(issue 8: "the same devices form the 1 % every time the rollout is replayed"). Stages are
cumulative: a device in stage k is in every later stage.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_STAGES", "CohortPlan", "plan_cohorts", "position", "stage_counts"]

MAX_STAGES = 100
"""Most stages a cohort plan may need (blast-radius overflow included)."""


def position(device_id: str, rollout_id: str) -> float:
    """A device's place in a rollout, uniform in [0, 1).

    ``sha256(rollout_id + b"\\0" + device_id)``, first 8 bytes big-endian over 2**64.
    The same pair always gives the same position; different rollouts shuffle the fleet
    independently.
    """
    raise NotImplementedError


def stage_counts(n: int, percents: Sequence[float]) -> list[int]:
    """Cumulative device counts per stage for a fleet of ``n``.

    ``ceil(n * percent / 100)``, then: stage 0 holds at least one device when ``n >= 1``;
    a stage below 100 % never holds the whole fleet when ``n >= 2``; 100 % is ``n``; the
    counts never decrease.

    Raises:
        InvalidInputError: ``n < 0``, no percents, or a percent outside (0, 100].
    """
    raise NotImplementedError


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
        raise NotImplementedError

    def added(self, k: int) -> list[str]:
        """The devices stage ``k`` adds (``stage_of == k``), in rollout order."""
        raise NotImplementedError

    def sizes(self) -> list[int]:
        """Cumulative member count per stage (``len(members(k))`` for every k)."""
        raise NotImplementedError


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
    raise NotImplementedError
