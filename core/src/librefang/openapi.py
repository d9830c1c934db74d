"""OpenAPI 3.1 document generated from the route table and its pydantic models.

Request and response models are rendered together by pydantic's ``models_json_schema``, so two
plugins' models that share a class name (``SearchResults`` in memory and runtime) get distinct
component names instead of one silently replacing the other (found by the fuzzing harness,
tests/reliability: a route answered a body its declared schema did not describe).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from librefang.schemas import ErrorBody

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
REF = "#/components/schemas/{model}"


def _is_model(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, BaseModel)


def _model_refs(models: set[type[BaseModel]], components: dict[str, Any]) -> dict[type[BaseModel], dict[str, Any]]:
    """Render every model at once (collision-free names) into ``components``; model -> its $ref."""
    ordered = sorted(models, key=lambda m: (m.__module__, m.__qualname__))
    refs, top = models_json_schema([(m, "validation") for m in ordered], ref_template=REF)
    components.update(top.get("$defs", {}))
    return {m: refs[(m, "validation")] for m in ordered}


def _schema_of(model: Any, components: dict[str, Any], refs: dict[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    if refs is not None and model in refs:
        return dict(refs[model])
    if _is_model(model):
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}
    schema = TypeAdapter(model).json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    return schema


def _openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for converter, name in _PARAM.findall(path):
        schema: dict[str, Any] = {"type": "integer"} if converter == "int" else {"type": "string"}
        if converter == "uuid":
            schema["format"] = "uuid"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _PARAM.sub(r"{\2}", path), params


def build_openapi(kernel: Kernel) -> dict[str, Any]:
    """Every route of every loaded plugin, with request/response schemas and auth."""
    components: dict[str, Any] = {}
    models = {ErrorBody} | {m for spec in kernel.routes.specs.values() for m in (spec.body, spec.response) if _is_model(m)}
    refs = _model_refs(models, components)
    error_ref = _schema_of(ErrorBody, components, refs)
    paths: dict[str, dict[str, Any]] = {}
    for (method, raw_path), spec in sorted(kernel.routes.specs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        path, params = _openapi_path(raw_path)
        op: dict[str, Any] = {
            "operationId": spec.endpoint.replace(".", "_") + ("" if method == "GET" else f"_{method.lower()}"),
            "summary": spec.summary,
            "tags": list(spec.tags),
            "x-plugin": spec.plugin,
            "x-rate-cost": spec.cost,
            "parameters": list(params),
        }
        if spec.websocket:
            op["x-websocket"] = True
        if spec.public:
            op["security"] = []
        if spec.query is not None:
            schema = spec.query.model_json_schema()
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                op["parameters"].append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema_of(spec.body, components, refs)}},
            }
        responses: dict[str, Any] = {}
        if spec.response is not None:
            responses[str(spec.status)] = {
                "description": "Success",
                "content": {"application/json": {"schema": _schema_of(spec.response, components, refs)}},
            }
        else:
            responses[str(spec.status)] = {"description": "Success"}
        error = {"description": "Error", "content": {"application/json": {"schema": error_ref}}}
        for status in ("400", "404", "429", "500") + (() if spec.public else ("401",)):
            responses.setdefault(status, error)
        if spec.idempotent:
            op["parameters"].append(
                {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
            )
            responses.setdefault("409", error)
        op["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "LibreFang API", "version": kernel.version},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
