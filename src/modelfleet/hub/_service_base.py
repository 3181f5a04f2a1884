"""What the hub service's operation mixins share: its state and its session helpers.

:class:`~modelfleet.hub.service.HubService` sets the attributes and defines the helpers; the
mixins in ``_devices``, ``_versions``, ``_deployments`` and ``_upkeep`` only declare them here so
that they type-check on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.clock import Clock
from modelfleet.hub.config import HubConfig
from modelfleet.trust.hub_trust import HubTrust


class _ServiceBase:
    """The attributes and helpers every operation group of the hub service relies on."""

    config: HubConfig
    clock: Clock
    store: FileArtefactStore
    trust: HubTrust

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...

        def _read(self) -> AbstractContextManager[Session]: ...

        def _audit(
            self,
            session: Session,
            actor: str,
            action: str,
            subject: str,
            details: Mapping[str, Any] | None = None,
            ticket: str | None = None,
        ) -> None: ...
