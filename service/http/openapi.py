"""OpenAPI for routes that read their body by hand (to stream it and to accept safetensors).

FastAPI cannot see those bodies, so the routes declare them with `tensor_body(Schema)` and
`install_openapi` adds the schemas to the components. `proto/openapi.json` is the committed result.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from r2m_proto.media import JSON_MEDIA_TYPE, SAFETENSORS_MEDIA_TYPE

_REF = "#/components/schemas/{model}"
_BODY_SCHEMAS: list[type[BaseModel]] = []


def tensor_body(schema: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a body that is JSON, or safetensors with the JSON in metadata."""
    _BODY_SCHEMAS.append(schema)
    ref = {"$ref": _REF.format(model=schema.__name__)}
    return {"requestBody": {"required": True, "content": {
        JSON_MEDIA_TYPE: {"schema": ref},
        SAFETENSORS_MEDIA_TYPE: {"schema": {
            "type": "string", "format": "binary",
            "description": f"safetensors file: __metadata__.request is a {schema.__name__} "
                           "whose hidden-state fields name tensors of this file."}},
    }}}


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
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
