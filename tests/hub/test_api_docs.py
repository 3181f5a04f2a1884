"""The API docs work at an air-gapped site (issue 6, defect 9), and the OpenAPI document
describes the answers the hub really gives (defect 4)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.hub.api.docs import docs_router

_URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


def test_docs_page_loads_every_asset_from_the_hub_itself(http: TestClient) -> None:
    page = http.get("/api/v1/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in _URL_ATTR.findall(page.text)]
    assert len(urls) >= 4, urls  # css, favicon, script, the OpenAPI document
    assert "://" not in page.text and "//cdn" not in page.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        r = http.get(url)
        assert r.status_code == 200, url
        assert r.content, url
    script = http.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in script.text
    assert script.headers["content-type"].startswith("text/javascript")


def test_docs_page_turns_off_the_online_validator(http: TestClient) -> None:
    # Swagger UI otherwise asks validator.swagger.io about the document.
    assert '"validatorUrl": null' in http.get("/api/v1/docs").text


def test_docs_assets_are_only_the_named_files(http: TestClient) -> None:
    assert http.get("/api/v1/docs/assets/..%2F__init__.py").status_code == 404
    assert http.get("/api/v1/docs/assets/index.html").status_code == 404


@pytest.fixture
def doc(http: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = http.get("/api/v1/openapi.json").json()
    return body


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def test_openapi_documents_400_for_invalid_requests_not_fastapis_422(
    doc: dict[str, Any],
) -> None:
    for method, path, op in _operations(doc):
        assert "422" not in op["responses"], (method, path)
        has_input = op.get("parameters") or op.get("requestBody")
        if has_input:
            assert "400" in op["responses"], (method, path)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_openapi_documents_401_on_every_route_that_needs_a_token(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        if path == "/api/v1/health":
            assert "security" not in op
            continue
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
        assert {"401", "503"} <= set(op["responses"]), (method, path)


def test_openapi_success_answers_are_typed(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        success = [op["responses"][s] for s in ("200", "201") if s in op["responses"]]
        assert len(success) == 1, (method, path)
        content = success[0]["content"]
        schema = next(iter(content.values()))["schema"]
        assert schema.get("$ref") or schema.get("type") in {"object", "array", "string"}, (
            method,
            path,
            schema,
        )
        assert schema != {}, (method, path)


def test_openapi_mode_and_role_are_enums(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["Mode"]["enum"] == ["full", "split", "shadow"]
    assert set(schemas["Role"]["enum"]) == {
        "admin",
        "publisher",
        "operator",
        "viewer",
        "approver",
        "device",
    }
    assert schemas["DeploymentIn"]["properties"]["mode"]["$ref"].endswith("/Mode")
    assert schemas["AssignmentOut"]["properties"]["mode"]["$ref"].endswith("/Mode")


def test_openapi_bounds_integer_parameters(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        for param in op.get("parameters", []):
            if param["schema"].get("type") == "integer":
                assert param["schema"]["maximum"] <= 2**31 - 1, (method, path, param)
                assert "minimum" in param["schema"], (method, path, param)
    version = doc["components"]["schemas"]["DeploymentIn"]["properties"]["version"]
    assert version["maximum"] == 2**31 - 1 and version["minimum"] == 1


def test_openapi_describes_whoami(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/api/v1/whoami"]["get"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/WhoAmIOut")
    props = doc["components"]["schemas"]["WhoAmIOut"]["properties"]
    assert set(props) == {"subject", "role", "device_id"}


def test_without_the_assets_there_is_no_docs_page_rather_than_a_cdn_one(tmp_path: Path) -> None:
    assert docs_router("/api/v1/docs", "/api/v1/openapi.json", "hub", tmp_path) is None
