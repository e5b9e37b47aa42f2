"""The OpenAPI document of the agent API, served at ``GET /api/v1/openapi.json``.

The daemon's HTTP assembly calls :func:`install_openapi` after the API's routes. The document
is generated from those routes — each was installed from an
:class:`~reconciler.fleet.operations.Operation` of the wire contract
(``reconciler/fleet/operations.py``, through ``webhook.agents_api.serves``) and carries it — and
from the JSON schemas of the operations' pydantic models (``reconciler/fleet/api.py``), which the handlers validate and answer with; nothing is listed
twice by hand. A test (``tests/test_agents_api.py``) checks that every ``/api/v1`` route of
the daemon's app is documented and every operation of the contract is a route, and validates
the document with openapi-spec-validator. ``docs/agents-api.md`` is its prose.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, get_origin

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from reconciler.fleet import operations
from reconciler.fleet.api import ErrorAnswer
from reconciler.fleet.operations import Operation, Who
from webhook.agents_api import serves
from webhook.app import json_response

OPENAPI_PATH = operations.OPENAPI.path
VERSION = "1"

_SECURITY: Mapping[Who, list[dict[str, list[str]]]] = {
    "agent": [{"agentToken": []}],
    "operator": [{"operatorToken": []}],
    "agent_or_operator": [{"agentToken": []}, {"operatorToken": []}],
    # A new id registers with the enrolment secret (or, without one configured, with nothing);
    # an existing id with its current token or the secret.
    "registration": [{}, {"agentToken": []}, {"enrolmentSecret": []}],
    "anyone": [{}],
    "task": [{"taskToken": []}],
}


def route_operations(app: bottle.Bottle) -> list[Operation]:
    """The operations whose routes are installed on ``app``, in installation order."""
    found = (route.config.get("operation") for route in app.routes)
    return [op for op in found if isinstance(op, Operation)]


def _parameters(op: Operation, defs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Path parameters, then the query model's fields (their schemas from the components)."""
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": text,
        }
        for name, text in op.path_params.items()
    ]
    if op.query is not None:
        properties = defs[op.query.__name__]["properties"]
        for name, info in op.query.model_fields.items():
            schema = _not_null(properties[name])
            parameter: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": False,
                "description": schema.pop("description", ""),
                "schema": schema,
            }
            if get_origin(info.annotation) is tuple:
                parameter.update(style="form", explode=True)
            parameters.append(parameter)
    return parameters


def _not_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is how "none" is said, so the
    ``null`` branch of an optional field (and its null default) is left out."""
    result = {k: v for k, v in schema.items() if not (k == "default" and v is None)}
    branches = [b for b in result.pop("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        result.update(branches[0])
    elif branches:
        result["anyOf"] = branches
    return result


def openapi_document(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (usually :func:`route_operations`)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorAnswer, "serialization")]
    for op in operations:
        if op.request is not None:
            models.append((op.request, "validation"))
        if op.query is not None:
            models.append((op.query, "validation"))
        if op.answer is not None:
            models.append((op.answer, "serialization"))
    refs, schemas = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = schemas.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        answer: dict[str, Any] = {"description": op.answer_text}
        if op.answer is not None:
            answer["content"] = {"application/json": {"schema": refs[(op.answer, "serialization")]}}
        else:
            answer["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(op.status): answer}
        if op.no_content:
            responses["204"] = {"description": op.no_content}
        for code, text in sorted(op.errors.items()):
            responses[str(code)] = {
                "description": text,
                "content": {"application/json": {"schema": refs[(ErrorAnswer, "serialization")]}},
            }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "security": _SECURITY[op.who],
            "responses": responses,
        }
        parameters = _parameters(op, defs)
        if parameters:
            operation["parameters"] = parameters
        if op.request is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
            }
        paths.setdefault(op.path, {})[op.method] = operation
    # The query models describe parameters, not bodies: no schema of their own is needed.
    for query in {op.query for op in operations if op.query is not None}:
        defs.pop(query.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-fleet agent API",
            "version": VERSION,
            "description": "Registration, heartbeats, drains, listings, task status, taking "
            "tasks, completing them and receipts. "
            "Every error is JSON {error, message} with a stable error code.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "agentToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The registry token an agent got when it registered.",
                },
                "taskToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A task token (aft1.<task>.<lease>.<mac>) scoped to one "
                    "task and lease, given to the run's `agent-fleet mcp` (docs/mcp.md).",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "api.operator_token from the configuration.",
                },
                "enrolmentSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "api.enrolment_secret from the configuration.",
                },
            },
        },
    }


def install_openapi(app: bottle.Bottle) -> None:
    """Serve the document of ``app``'s operations at ``GET /api/v1/openapi.json`` (no
    credential needed). Built at the first request, once every route is installed."""
    built: list[dict[str, Any]] = []
    lock = threading.Lock()

    @serves(app, operations.OPENAPI)
    def openapi() -> bottle.HTTPResponse:
        with lock:
            if not built:
                built.append(openapi_document(route_operations(app)))
        return json_response(200, built[0])
