"""The registry of served models: model name -> :class:`Route`, swapped atomically."""

from __future__ import annotations

import threading
from types import MappingProxyType

from modelfleet.serving.model import Servable
from modelfleet.serving.router import Route

__all__ = ["ModelHost"]


class ModelHost:
    """Thread-safe map of model names to routes.

    Writers (the agent daemon's thread) replace the whole map under a lock; readers (request
    handlers) read the current map without locking. A request reads its route once, so it
    sees either the old route or the new one, never a mix.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: MappingProxyType[str, Route] = MappingProxyType({})

    def set_route(self, name: str, route: Route) -> Route | None:
        """Serve ``name`` by ``route`` from the next request on; return the route replaced.

        Raises:
            ValueError: the route's production model has another name.
        """
        if route.production.name != name:
            raise ValueError(f"route for {name!r} serves model {route.production.name!r}")
        with self._lock:
            old = self._routes.get(name)
            self._routes = MappingProxyType({**self._routes, name: route})
        return old

    def remove(self, name: str) -> Route | None:
        """Stop serving ``name``; return the route removed, or None if there was none."""
        with self._lock:
            old = self._routes.get(name)
            if old is not None:
                self._routes = MappingProxyType(
                    {k: v for k, v in self._routes.items() if k != name}
                )
        return old

    def route(self, name: str) -> Route | None:
        """The current route of ``name``, or None."""
        return self._routes.get(name)

    def routes(self) -> MappingProxyType[str, Route]:
        """A consistent snapshot of every route."""
        return self._routes

    def names(self) -> list[str]:
        """Names of the models served, sorted."""
        return sorted(self._routes)

    def find_version(self, name: str, version: str) -> Servable | None:
        """The loaded ``version`` of ``name`` (production, candidate or previous), or None."""
        route = self._routes.get(name)
        return None if route is None else route.find(version)
