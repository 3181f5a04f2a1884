"""modelfleet.hub: the control plane (database, services, REST API, TUF serving).

Names are imported lazily: importing a submodule (``modelfleet.hub.db``, say) does not pull
in the whole service and its web framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "HubConfig",
    "HubHome",
    "HubService",
    "build_hub_app",
    "init_home",
    "load_hub_config",
    "migrate",
    "serve",
]

_WHERE = {
    "HubConfig": "modelfleet.hub.config",
    "HubHome": "modelfleet.hub.config",
    "load_hub_config": "modelfleet.hub.config",
    "HubService": "modelfleet.hub.service",
    "init_home": "modelfleet.hub.home",
    "build_hub_app": "modelfleet.hub.app",
    "serve": "modelfleet.hub.app",
    "migrate": "modelfleet.hub.db",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'modelfleet.hub' has no attribute {name!r}")
