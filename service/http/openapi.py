"""The OpenAPI document: bodies FastAPI cannot see, and every error the server really answers.

Routes that read their body by hand (to stream it and to accept safetensors) declare it with
`tensor_body(Schema)` or `checkpoint_body()`, and `install_openapi` adds the schemas to the
components. Every operation then lists the error statuses it can answer — derived from what the
operation takes (auth, a run, a body) rather than listed per route, so a new route is documented
the same way — all with r2m's one error shape (`ErrorBody`); FastAPI's own `HTTPValidationError`
is replaced, since the server never answers with it. `proto/openapi.json` is the committed result
and a schemathesis run against a live server checks the two agree (tests/test_fuzz_schema.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from r2m_proto.errors import ErrorBody
from r2m_proto.media import CHECKPOINT_MEDIA_TYPE, JSON_MEDIA_TYPE, SAFETENSORS_MEDIA_TYPE

_REF = "#/components/schemas/{model}"
_BODY_SCHEMAS: list[type[BaseModel]] = [ErrorBody]
_ERROR_REF = {"$ref": _REF.format(model=ErrorBody.__name__)}
# What each error status means here (codes: proto/errors.py).
ERROR_STATUSES: dict[int, str] = {
    400: "malformed_body: the body is not valid JSON or safetensors",
    401: "unauthorized: no API key, or an unknown one (when keys are configured)",
    403: "forbidden: the key lacks this route's scope",
    404: "run_not_found: no run with this id",
    409: "version_conflict (`min_version` not reached in time, or a split-mode phase's "
         "`version` is no longer the run's), run_exists (a chosen run id taken with other "
         "settings) or context_token_stale (a split-mode context token unknown or expired)",
    413: "payload_too_large: the body exceeds max_body_bytes, or more items than max_items",
    415: "unsupported_media_type: a Content-Type this route does not read",
    422: "invalid_request: a field is invalid or beyond a server limit (the message names "
         "the limit); nothing was changed",
    429: "overloaded: the score queue is full, or the server holds as many runs as its limits "
         "allow (Retry-After)",
    503: "unavailable: the backbone is loading, the state store is unreachable, or the server "
         "is shutting down (Retry-After)",
}
_OPEN_PATHS = {"/healthz"}  # answers even while the backbone loads


def tensor_body(schema: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a body that is JSON, or safetensors with the JSON in metadata."""
    _BODY_SCHEMAS.append(schema)
    ref = {"$ref": _REF.format(model=schema.__name__)}
    return {"requestBody": {"required": True, "content": {
        JSON_MEDIA_TYPE: {"schema": ref},
        SAFETENSORS_MEDIA_TYPE: {"schema": {
            "type": "string", "format": "binary", "minLength": 8,
            "description": f"safetensors file: __metadata__.request is a {schema.__name__} "
                           "whose hidden-state fields name tensors of this file."}},
    }}}


def checkpoint_body() -> dict[str, Any]:
    """`openapi_extra` declaring a safetensors checkpoint upload."""
    return {"requestBody": {"required": True, "content": {CHECKPOINT_MEDIA_TYPE: {"schema": {
        "type": "string", "format": "binary", "minLength": 8,
        "description": "safetensors file of the six trainable tensors (float32), as GET "
                       "/v1/runs/{run_id}/checkpoint serves it."}}}}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for schema in _BODY_SCHEMAS:
                definition = schema.model_json_schema(ref_template=_REF)
                components.update(definition.pop("$defs", {}))
                components[schema.__name__] = definition
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            authorized = _keyed_paths(app.routes)
            for path, operations in spec.get("paths", {}).items():
                for method, operation in operations.items():
                    _document_errors(path, method, operation, components, path in authorized)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _keyed_paths(routes: list[Any]) -> set[str]:
    """Paths of routes with a route-level dependency: how routes here require an API key
    (`auth.require`), walking routers included in the app."""
    paths: set[str] = set()
    for route in routes:
        if isinstance(route, APIRoute) and route.dependencies:
            paths.add(route.path)
        included = getattr(route, "original_router", None)  # FastAPI ≥ 0.16x nests routers
        if included is not None:
            paths |= _keyed_paths(included.routes)
    return paths


def _document_errors(path: str, method: str, operation: dict[str, Any],
                     components: dict[str, Any], authorized: bool) -> None:
    """Every error status the operation can answer, with the error shape."""
    body = _body_properties(operation, components)
    statuses: set[int] = set()
    if path not in _OPEN_PATHS and path != "/metrics":
        statuses.add(503)
    if authorized:
        statuses |= {401, 403}
    if operation.get("parameters") or body is not None:
        statuses.add(422)
    if "requestBody" in operation or method in ("post", "put"):  # a body, declared or not
        statuses |= {400, 413, 415}
    properties = (body or {}).get("properties", {})
    names_run = ("{run_id}" in path or "run_id" in (body or {}).get("required", [])
                 or any(p.get("name") == "run_id" for p in operation.get("parameters", [])))
    if names_run:
        statuses.add(404)
    if names_run or "run_id" in properties:
        statuses.add(429)  # a run to load (or create) may not fit the server's run limits
    if "min_version" in properties or "version" in properties or (
            body is not None and "run_id" not in body.get("required", [])
            and "run_id" in properties):
        statuses.add(409)
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        responses[str(status)] = {"description": ERROR_STATUSES[status],
                                  "content": {JSON_MEDIA_TYPE: {"schema": _ERROR_REF}}}


def _body_properties(operation: dict[str, Any], components: dict[str, Any]
                     ) -> dict[str, Any] | None:
    """The JSON body's schema (resolved), {} for a body that is not a JSON object, None for
    no body."""
    content = operation.get("requestBody", {}).get("content")
    if content is None:
        return None
    ref = content.get(JSON_MEDIA_TYPE, {}).get("schema", {}).get("$ref", "")
    return components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
