"""GET /api/v1/whoami (issue 6, contract 3): who a token belongs to, for any valid token."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modelfleet.hub.service import HubService
from tests.hub._support import auth


@pytest.mark.parametrize(
    ("role", "subject", "device_id"),
    [
        ("admin", "admin", None),
        ("publisher", "pat", None),
        ("operator", "olga", None),
        ("viewer", "vic", None),
        ("device", "dev-1", "dev-1"),
    ],
)
def test_whoami_names_the_tokens_role_subject_and_device(
    role: str, subject: str, device_id: str | None, http: TestClient, tokens: dict[str, str]
) -> None:
    r = http.get("/api/v1/whoami", headers=auth(tokens[role]))
    assert r.status_code == 200, r.text
    body = r.json()
    credential = body.pop("credential", None)  # a device credential says when it expires
    assert body == {"subject": subject, "role": role, "device_id": device_id}
    assert (credential is not None) == (role == "device")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param(auth("mft_not-a-real-token"), id="unknown-token"),
        pytest.param({"Authorization": "Basic dXNlcjpwdw=="}, id="not-bearer"),
    ],
)
def test_whoami_without_a_valid_token_is_401(headers: dict[str, str], http: TestClient) -> None:
    r = http.get("/api/v1/whoami", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["type"] == "UnauthenticatedError"


def test_whoami_tells_one_device_token_from_another(
    http: TestClient, service: HubService, tokens: dict[str, str]
) -> None:
    # What the agent relies on to refuse a token that is not its own (defect 3).
    _, other = service.add_device("dev-2", "", [], actor="admin:admin")
    assert http.get("/api/v1/whoami", headers=auth(other)).json()["device_id"] == "dev-2"
    assert http.get("/api/v1/whoami", headers=auth(tokens["device"])).json()["device_id"] == "dev-1"
