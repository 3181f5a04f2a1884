"""The Swagger UI at ``/api/v1/docs``, served with its own assets (issue 6, defect 9).

FastAPI's default page loads Swagger UI from a CDN and is blank at an air-gapped site.
The scripts come from the ``fastapi-offline`` package (MIT; Swagger UI's ``dist`` files,
Apache-2.0), installed with the ``hub`` extra; without it the hub serves no docs page
and says so in its log. The page names no other host: its favicon is local and the
online validator (which would call out to the internet) is off.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from modelfleet.errors import NotFoundError

__all__ = ["ASSETS", "docs_router"]

log = logging.getLogger("modelfleet.hub")

# URL name -> (file in the package, media type)
ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "favicon.png": ("favicon.png", "image/png"),
}


def _asset_folder() -> Path | None:
    try:
        folder = importlib.resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        return None
    return Path(str(folder))


def docs_router(
    docs_url: str, openapi_url: str, title: str, assets_from: Path | None = None
) -> APIRouter | None:
    """The docs page at ``docs_url`` and its assets under ``docs_url/assets/``, or None
    when the assets are not installed (never a page that would fetch them elsewhere).

    Args:
        assets_from: the folder holding the assets (the installed package's if None).
    """
    folder = _asset_folder() if assets_from is None else assets_from
    if folder is None or not all((folder / f).is_file() for f, _ in ASSETS.values()):
        log.info("no API docs page: install modelfleet[hub] for its assets")
        return None
    router = APIRouter(include_in_schema=False)
    assets = f"{docs_url}/assets"

    @router.get(docs_url)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")  # behind a proxy prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - API docs",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get(f"{assets}/{{name}}")
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFoundError(f"no docs asset {name!r}")
        filename, media_type = ASSETS[name]
        return FileResponse(
            folder / filename,
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return router
