"""Routing decisions between production and candidate: full, sticky split, shadow.

Pure: the caller passes the random draw, so a decision is a function of its arguments.
A split is sticky by hashing a caller-chosen routing key into [0, 1) with BLAKE2b (the same
in every process, unlike ``hash()``); without a key the random draw decides. The version a
response names can be replayed by the caller to pin that version (Seldon's route header).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.model import Servable

__all__ = ["Decision", "Route", "bucket_of", "choose"]

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Route:
    """How one model name is served right now.

    Attributes:
        production: serves every request in ``full`` mode and the rest of a split.
        candidate: the version under test (split or shadow); ignored in ``full`` mode.
        mode: full, split or shadow.
        share: split: fraction of routing keys (or requests) sent to the candidate;
            shadow: fraction of requests mirrored to the candidate.
        previous: the version that production replaced, kept warm for rollback.
    """

    production: Servable
    candidate: Servable | None = None
    mode: Mode = Mode.FULL
    share: float = 0.0
    previous: Servable | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share {self.share} outside [0, 1]")

    @property
    def name(self) -> str:
        """The model name (production's)."""
        return self.production.name

    def find(self, version: str) -> Servable | None:
        """The loaded ``version`` (production, candidate or previous), or None."""
        for model in (self.production, self.candidate, self.previous):
            if model is not None and model.version == version:
                return model
        return None

    def versions(self) -> list[Servable]:
        """Production, candidate and previous, whichever are present, without repeats."""
        seen: dict[str, Servable] = {}
        for model in (self.production, self.candidate, self.previous):
            if model is not None and model.version not in seen:
                seen[model.version] = model
        return list(seen.values())


class Decision(NamedTuple):
    """Which version answers, and which one (if any) sees a mirrored copy."""

    serve: Servable
    shadow: Servable | None = None


def bucket_of(model_name: str, routing_key: str) -> float:
    """Map a routing key to a stable point in [0, 1) for one model.

    The model name salts the hash so that one key's side in one model's split says nothing
    about its side in another's. The share is not part of the hash: growing a split keeps
    every key that was already on the candidate there.
    """
    data = f"{model_name}\0{routing_key}".encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"modelfleet-split").digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose(
    route: Route, routing_key: str | None, pinned_version: str | None, rng_value: float
) -> Decision:
    """Decide which version serves one request.

    Args:
        route: the model's current route.
        routing_key: the caller's sticky key (e.g. a user or session id), or None.
        pinned_version: a version the caller replays from an earlier response; honoured when
            it is production, or the candidate of a split. Any other value is ignored.
        rng_value: a uniform draw in [0, 1), used when no key decides.

    Returns:
        full: production. split: the candidate for keys (or draws) below ``share``, else
        production. shadow: production, plus the candidate as shadow for draws below
        ``share`` (callers never get the candidate's answer).
    """
    production, candidate, mode = route.production, route.candidate, route.mode
    if mode is Mode.FULL or candidate is None:
        return Decision(production)
    if mode is Mode.SPLIT:
        if pinned_version is not None:
            if pinned_version == candidate.version:
                return Decision(candidate)
            if pinned_version == production.version:
                return Decision(production)
        point = rng_value if routing_key is None else bucket_of(production.name, routing_key)
        return Decision(candidate if point < route.share else production)
    # shadow
    return Decision(production, candidate if rng_value < route.share else None)
