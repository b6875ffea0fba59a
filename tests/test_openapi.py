"""The committed OpenAPI document is what the service serves (regenerate: see README)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from r2m_service.http.app import create_app
from tests.conftest import Server

COMMITTED = Path(__file__).resolve().parents[1] / "proto" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    generated = create_app().openapi()
    committed = json.loads(COMMITTED.read_text())
    assert committed == generated, "stale: run `r2m openapi > proto/openapi.json`"


def test_served_openapi_declares_both_body_formats(llama_server: Server) -> None:
    spec = httpx.get(f"{llama_server.url}/openapi.json").json()
    content = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/vnd.r2m+safetensors"}
    assert "ScoreRequest" in spec["components"]["schemas"]
    assert "WireTensor" in spec["components"]["schemas"]
