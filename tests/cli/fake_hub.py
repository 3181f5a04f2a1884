"""A small fake of the hub's rollouts API (issue 8 contract, section H3), for CLI tests.

It keeps rollouts in memory and follows the contract's shapes and status codes: 201 + view
on create, 400 ``{"error", "type"}`` for a bad plan, 404 for an unknown rollout or model,
409 for a command the state does not allow, 403 when the role may not. It does not decide
anything a controller would; a test moves a rollout on with :meth:`FakeHub.script`, whose
views are handed out one per ``GET`` of that rollout (the last one repeats); a step
``{"http_status": 503}`` answers that error instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKENS = {
    "op-token": ("operator", "alice"),
    "approver-token": ("approver", "bob"),
    "viewer-token": ("viewer", "carol"),
}
PLAN_KEYS = frozenset(
    {
        "model",
        "version",
        "target",
        "stages",
        "gates",
        "blast_radius",
        "change",
        "on_failure",
        "safety_lag",
        "slo",
        "name",
    }
)
TERMINAL = {"completed", "rolled_back", "aborted"}
ALLOWED = {
    "pause": ({"running"}, "paused"),
    "resume": ({"paused"}, "running"),
    "promote": ({"running", "paused"}, None),
    "rollback": ({"running", "paused", "awaiting_approval"}, "rolled_back"),
    "abort": ({"running", "paused", "awaiting_approval"}, "aborted"),
    "approve": ({"awaiting_approval"}, "running"),
}


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind}, status_code=status)


@dataclass
class FakeHub:
    """The fake's state; ``app`` is the Starlette app to serve."""

    models: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "iris": {"name": "iris", "versions": 3, "safety_classified": False}
        }
    )
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def script(self, rollout_id: str, views: Sequence[dict[str, Any]]) -> None:
        """Hand out these views (merged over the stored one), one per GET."""
        self.scripts[rollout_id] = [dict(v) for v in views]

    # -- handlers ------------------------------------------------------------------------

    def _who(self, request: Request) -> tuple[str, str] | JSONResponse:
        auth = request.headers.get("authorization", "")
        who = TOKENS.get(auth.removeprefix("Bearer "))
        if who is None:
            return _error(401, "invalid token", "UnauthenticatedError")
        return who

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": "fake"})

    async def create(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        if who[0] == "viewer":
            return _error(403, "role viewer may not operate", "ForbiddenError")
        plan = await request.json()
        self.requests.append(("POST", "/api/v1/rollouts", plan))
        unknown = sorted(set(plan) - PLAN_KEYS)
        if unknown:
            return _error(400, f"plan: unknown key {unknown[0]!r}", "InvalidInputError")
        model = self.models.get(plan.get("model"))
        if model is None:
            return _error(404, f"no model {plan.get('model')!r}", "NotFoundError")
        if (
            not isinstance(plan.get("version"), int)
            or not 1 <= plan["version"] <= model["versions"]
        ):
            return _error(
                404, f"no version {plan.get('version')!r} of {model['name']}", "NotFoundError"
            )
        ticket = (plan.get("change") or {}).get("ticket")
        if model["safety_classified"] and not ticket:
            return _error(
                400,
                "change.ticket: a safety-classified model needs a change ticket",
                "InvalidInputError",
            )
        rid = f"ro-{next(self._ids):04x}"
        stages = plan.get("stages") or [
            {"name": n, "percent": p, "soak": 3600}
            for n, p in (("canary", 1), ("early", 9), ("stable", 90), ("full", 100))
        ]
        self.rollouts[rid] = {
            "id": rid,
            "model": plan["model"],
            "version": plan["version"],
            "from_version": 1,
            "state": "awaiting_approval" if model["safety_classified"] else "running",
            "stage_name": stages[0]["name"],
            "stage_index": 0,
            "stages": len(stages),
            "devices_total": 10,
            "created_at": "2026-12-02T15:00:00Z",
            "updated_at": "2026-12-02T15:00:00Z",
            "created_by": who[1],
            "plan": plan,
            "reason": "",
            "ticket": ticket,
            "approved_by": None,
            "stage": {
                "index": 0,
                "name": stages[0]["name"],
                "percent": stages[0]["percent"],
                "mode": "full",
                "share": 0.0,
                "started_at": "2026-12-02T15:00:00Z",
                "soak_s": 3600.0,
                "soak_left_s": 1800.0,
            },
            "devices": {
                "total": 10,
                "waiting": 9,
                "assigned": 1,
                "running": 0,
                "rolled_back": 0,
                "offline": 0,
            },
            "gates": [],
            "evaluated_at": None,
            "history": [
                {
                    "at": "2026-12-02T15:00:00Z",
                    "actor": who[1],
                    "action": "rollout-create",
                    "reason": None,
                }
            ],
        }
        return JSONResponse(self.rollouts[rid], status_code=201)

    async def list(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        q = request.query_params
        out = [
            {
                k: r[k]
                for k in (
                    "id",
                    "model",
                    "version",
                    "state",
                    "stage_name",
                    "stage_index",
                    "stages",
                    "devices_total",
                    "created_at",
                    "updated_at",
                )
            }
            for r in reversed(self.rollouts.values())
            if (not q.get("state") or r["state"] == q["state"])
            and (not q.get("model") or r["model"] == q["model"])
        ]
        return JSONResponse(out[: int(q.get("limit", 50))])

    def _rollout(self, request: Request) -> dict[str, Any] | JSONResponse:
        rid = request.path_params["rid"]
        if rid not in self.rollouts:
            return _error(404, f"no rollout {rid!r}", "NotFoundError")
        return self.rollouts[rid]

    async def get(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        r = self._rollout(request)
        if isinstance(r, JSONResponse):
            return r
        script = self.scripts.get(r["id"])
        if script:
            step = script.pop(0) if len(script) > 1 else script[0]
            if "http_status" in step:  # the hub failing this once (a restart, a proxy)
                return _error(step["http_status"], "upstream unavailable", "StorageError")
            r.update(step)
        return JSONResponse(r)

    async def command(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        r = self._rollout(request)
        if isinstance(r, JSONResponse):
            return r
        command = request.path_params["command"]
        body = await request.json()
        self.requests.append(("POST", request.url.path, body))
        if command not in ALLOWED:
            return _error(404, "Not Found", "NotFoundError")
        if command == "approve" and (who[0] != "approver" or who[1] == r["created_by"]):
            return _error(403, "approve needs the approver role, not the creator", "ForbiddenError")
        if who[0] == "viewer":
            return _error(403, "role viewer may not operate", "ForbiddenError")
        states, new = ALLOWED[command]
        if r["state"] not in states:
            return _error(409, f"cannot {command} a rollout that is {r['state']}", "ConflictError")
        if new is not None:
            r["state"] = new
        if command == "promote":
            r["stage_index"] += 1
            r["stage"] = {**r["stage"], "index": r["stage_index"]}
        if command == "approve":
            r["approved_by"] = who[1]
        r["reason"] = body.get("reason") or ""
        r["history"].append(
            {
                "at": "2026-12-02T15:05:00Z",
                "actor": who[1],
                "action": f"rollout-{command}",
                "reason": body.get("reason"),
            }
        )
        return JSONResponse(r)

    async def evaluations(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        r = self._rollout(request)
        if isinstance(r, JSONResponse):
            return r
        return JSONResponse(
            [
                {
                    "stage": 0,
                    "evaluated_at": "2026-12-02T15:01:00Z",
                    "verdict": "hold",
                    "evidence": {
                        "evaluation": {
                            "verdict": "hold",
                            "results": [{"metric": "error_rate", "verdict": "hold"}],
                        }
                    },
                }
            ]
        )

    async def patch_model(self, request: Request) -> JSONResponse:
        who = self._who(request)
        if isinstance(who, JSONResponse):
            return who
        model = self.models.get(request.path_params["name"])
        if model is None:
            return _error(404, f"no model {request.path_params['name']!r}", "NotFoundError")
        body = await request.json()
        self.requests.append(("PATCH", request.url.path, body))
        model["safety_classified"] = bool(body["safety_classified"])
        return JSONResponse(model)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/health", self.health),
                Route("/api/v1/rollouts", self.create, methods=["POST"]),
                Route("/api/v1/rollouts", self.list, methods=["GET"]),
                Route("/api/v1/rollouts/{rid}", self.get, methods=["GET"]),
                Route("/api/v1/rollouts/{rid}/evaluations", self.evaluations, methods=["GET"]),
                Route("/api/v1/rollouts/{rid}/{command}", self.command, methods=["POST"]),
                Route("/api/v1/models/{name}", self.patch_model, methods=["PATCH"]),
            ]
        )
