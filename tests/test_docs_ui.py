"""`/docs` and `/redoc` work offline: every asset they load is served by the service itself."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import Server

# What each page must load to render, by the asset's kind.
_CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def _references(html: str) -> list[str]:
    """Every URL the page makes the browser fetch: src/href attributes and the spec URL."""
    return re.findall(r'(?:src|href|spec-url)="([^"]+)"', html) + re.findall(
        r"url: '([^']+)'", html)


@pytest.mark.parametrize(("page", "needs"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
    ("/redoc", {"redoc.standalone.js"}),
])
def test_api_docs_load_only_assets_the_service_serves(llama_server: Server, page: str,
                                                      needs: set[str]) -> None:
    with httpx.Client(base_url=llama_server.url, timeout=30) as http:
        html = http.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        urls = _references(html.text)
        assert {url.rsplit("/", 1)[-1] for url in urls} >= needs
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url}"
            asset = http.get(url)
            assert asset.status_code == 200, url
            kind = next((t for ext, t in _CONTENT_TYPES.items() if url.endswith(ext)), "json")
            assert kind in asset.headers["content-type"], url
            assert len(asset.content) > 1000, url
