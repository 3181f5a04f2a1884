"""The hub's REST API, one router per area; :func:`modelfleet.hub.app.build_hub_app`
assembles them.

* :mod:`.health` - liveness
* :mod:`.tokens` - who-am-I, tokens
* :mod:`.devices` - enrolment, device records, check-in reports
* :mod:`.models` - blob uploads, model versions
* :mod:`.rollout` - deployments and rollbacks
* :mod:`.rollouts` - staged rollouts: plans, gates, operator commands, approval (issue 8)
* :mod:`.review` - the review queue: samples, exports, labels, metrics (issue 9)
* :mod:`.audit` - the audit log
* :mod:`.tuf` - the trust root and TUF metadata and targets
* :mod:`.docs` - the Swagger UI, with local assets
* :mod:`.bodies` - request and response bodies (the OpenAPI schemas)

HTTP status codes live only here, in ``_errors``.
"""

from __future__ import annotations

from modelfleet.hub.api._errors import ErrorBody, error_responses, install_error_handlers, status_of

__all__ = ["ErrorBody", "error_responses", "install_error_handlers", "status_of"]
