"""`/docs` (Swagger UI) and `/redoc` served from an installed package instead of a CDN.

FastAPI's own pages load their JavaScript and CSS from a CDN, and the service often runs with no
network (the image, an air-gapped cluster): there they render blank. The same assets ship inside
the `fastapi-offline` wheel (Swagger UI 5, which reads OpenAPI 3.1, and ReDoc); they are mounted
here as static files, so the installed package pins the UI version and nothing is fetched.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install_docs_ui(app: FastAPI) -> None:
    """Serve the app's `docs_url` and `redoc_url` pages with local assets.

    FastAPI registered its CDN pages at those URLs when the app was made; they are replaced in
    place, so the app keeps its own settings for where the docs live (None still means none).
    """
    if app.openapi_url is None:  # no spec, no pages (FastAPI's own rule)
        return
    pages = {app.docs_url, app.redoc_url} - {None}
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in pages]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        """The spec's and the assets' URLs under the proxy prefix the app is served at."""
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    if app.docs_url is not None:
        @app.get(app.docs_url, include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            spec, assets = urls(request)
            return get_swagger_ui_html(
                openapi_url=spec, title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                swagger_css_url=f"{assets}/swagger-ui.css",
                swagger_favicon_url=f"{assets}/favicon.png",
                oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
                swagger_ui_parameters=app.swagger_ui_parameters)

    if app.redoc_url is not None:
        @app.get(app.redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            spec, assets = urls(request)
            return get_redoc_html(
                openapi_url=spec, title=f"{app.title} - ReDoc",
                redoc_js_url=f"{assets}/redoc.standalone.js",
                redoc_favicon_url=f"{assets}/favicon.png", with_google_fonts=False)
