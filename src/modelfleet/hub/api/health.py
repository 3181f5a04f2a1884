"""Liveness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelfleet import __version__
from modelfleet.hub.api.bodies import HealthOut

__all__ = ["router"]

router = APIRouter(tags=["hub"])


@router.get("/health", response_model=HealthOut)
def health() -> dict[str, Any]:
    """Liveness; needs no token."""
    return {"status": "ok", "version": __version__}
