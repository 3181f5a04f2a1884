"""modelfleet.hub: the control plane (database, services, REST API, TUF serving).

Import what you need from its modules (``modelfleet.hub.service.HubService``,
``modelfleet.hub.app.build_hub_app``, ``modelfleet.hub.home.init_home``...): this package
re-exports nothing, so importing ``modelfleet.hub.db`` does not pull in the web framework, and
no lazy face hides an import cycle (issue 6).
"""
