"""schemathesis against the hub's own OpenAPI document (issue 6, defect 4).

Every operation gets generated requests, valid and invalid, from an admin token (so the
routes are reached) against an in-process hub with one registered, deployed model. Half
of the valid requests name the things that exist (model ``iris`` v1, device ``dev-1``,
the ``catalog`` repository), so the success answers are checked against their schemas
too, not only the 4xx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from tests.hub._support import auth
from tests.pg import pg_database

MAX_EXAMPLES = 20

_KNOWN_PATH = {
    "name": "iris",
    "version": 1,
    "device_id": "dev-1",
    "repo": "catalog",
    "rollout_id": "",  # set by _with_rollout
}
_KNOWN_BODY = {"model": "iris", "version": 1, "devices": ["dev-1"], "all": False}


def _known(case: Any) -> Any:
    """Point a generated request at the things that exist."""
    for key, value in _KNOWN_PATH.items():
        if key in (case.path_parameters or {}):
            case.path_parameters[key] = value
    if isinstance(case.body, dict) and "model" in case.body:
        case.body.update(_KNOWN_BODY)  # a rollback's body ignores "version"
    return case


def _with_rollout(service: HubService) -> None:
    """A rollout of iris v1 to dev-1, so the rollout routes are reached with a known id."""
    plan = {"model": "iris", "version": 1, "target": {"devices": ["dev-1"]}}
    _KNOWN_PATH["rollout_id"] = service.create_rollout(plan, actor="admin:admin")["id"]


@pytest.fixture
def deployed(service: HubService, tokens: dict[str, str], onnx_bytes: bytes) -> HubService:
    # ``tokens`` enrols dev-1 and mints a token per role.
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.deploy("iris", 1, ["dev-1"], actor="admin:admin")
    _with_rollout(service)
    return service


def _failures(
    service: HubService,
    token: str,
    modes: tuple[schemathesis.GenerationMode, ...],
    max_examples: int,
) -> list[str]:
    """Run schemathesis over every operation; a line per operation and mode that failed."""
    schema = schemathesis.openapi.from_asgi(
        "/api/v1/openapi.json", build_hub_app(service, refresh_interval_s=0)
    )
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operations.append(result.ok())
    assert len(operations) >= 18
    failures: list[str] = []
    for operation in operations:
        for mode in modes:
            cases = operation.as_strategy(generation_mode=mode)
            if mode is schemathesis.GenerationMode.POSITIVE:
                cases = st.one_of(cases, cases.map(_known))

            @given(case=cases)
            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                # A list of no or one value as a query value is sent as nothing or as that
                # one value, so such a "negative" case reaches the hub as a valid request (a
                # schemathesis artefact); two or more values are refused (a repeated name).
                assume(
                    not any(
                        isinstance(v, list) and len(v) <= 1 for v in (case.query or {}).values()
                    )
                )
                case.call_and_validate(
                    headers=auth(token),
                    # The schema does not spell out every rule the service enforces (a
                    # device list or all=true, name syntax, a report's 64-bit integers):
                    # such requests get a documented 400, which this check would flag.
                    excluded_checks=[positive_data_acceptance],
                )

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to make invalid (e.g. GET /health takes no input)
            except (Exception, BaseExceptionGroup) as e:
                failures.append(f"{operation.label} [{mode.value}]: {str(e)[:2000]}")
    return failures


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_schemathesis_finds_no_server_error_and_no_answer_off_schema(
    deployed: HubService, admin_token: str
) -> None:
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    failures = _failures(deployed, admin_token, modes, MAX_EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_schemathesis_with_a_device_token_meets_only_documented_refusals(
    deployed: HubService, tokens: dict[str, str]
) -> None:
    # The 403s (and a device's own reads) are answers too: each must be documented.
    failures = _failures(deployed, tokens["device"], (schemathesis.GenerationMode.POSITIVE,), 5)
    assert not failures, "\n\n".join(failures)


@pytest.mark.postgres
@pytest.mark.slow  # 25-60 s of real CLI processes
def test_schemathesis_on_postgres_finds_no_server_error(tmp_path: Path, onnx_bytes: bytes) -> None:
    # PostgreSQL refuses what SQLite takes (32-bit INTEGER, no NUL in text): each was a 5xx.
    with pg_database() as url:
        clock = ManualClock()
        token = init_home(tmp_path / "hub", clock, database_url=url)
        service = HubService(load_hub_config(tmp_path / "hub"), clock)
        try:
            service.add_device("dev-1", "", [], actor="admin:admin")
            service.register_version("iris", onnx_bytes, actor="admin:admin")
            service.deploy("iris", 1, ["dev-1"], actor="admin:admin")
            _with_rollout(service)
            modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
            failures = _failures(service, token, modes, 10)
        finally:
            service.close()
    assert not failures, "\n\n".join(failures)
