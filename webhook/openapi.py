"""The OpenAPI document of the agent API, served at ``GET /api/v1/openapi.json``.

The daemon's HTTP assembly calls :func:`install_openapi`. The schemas are generated from the
same pydantic models the handlers in ``webhook/agents_api.py`` and ``webhook/tasks_api.py``
validate and answer with, so they cannot drift; the list of operations is written out here,
and a test (``tests/test_agents_api.py``) checks it against the real routes of the Bottle app
in both directions — every documented operation is a route, every ``/api/v1`` route is documented —
and validates the document with openapi-spec-validator. ``docs/agents-api.md`` is its prose.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from reconciler.console.views import AgentList, AgentSummary
from reconciler.models import AgentStatus, TaskState
from webhook.agents_api import (
    API,
    DeregisterAnswer,
    DeregisterRequest,
    DrainRequest,
    ErrorAnswer,
    HeartbeatAnswer,
    HeartbeatRequest,
    RegisterAnswer,
    RegisterRequest,
    TaskDetail,
    TaskList,
    TaskStatusAnswer,
    TaskStatusRequest,
)
from webhook.app import json_response
from webhook.tasks_api import (
    CompleteRequest,
    DequeueRequest,
    ReceiptAnswer,
    ReceiptRequest,
    TaskHandout,
)

OPENAPI_PATH = f"{API}/openapi.json"
VERSION = "1"

Who = Literal["agent", "operator", "agent_or_operator", "registration", "anyone"]

_SECURITY: Mapping[Who, list[dict[str, list[str]]]] = {
    "agent": [{"agentToken": []}],
    "operator": [{"operatorToken": []}],
    "agent_or_operator": [{"agentToken": []}, {"operatorToken": []}],
    # A new id registers with the enrolment secret (or, without one configured, with nothing);
    # an existing id with its current token or the secret.
    "registration": [{}, {"agentToken": []}, {"enrolmentSecret": []}],
    "anyone": [{}],
}

_AGENT_ID = {
    "name": "agent_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The agent's id.",
}
_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The task's id, e.g. 12-3f9a1c2b.",
}
_LIST_QUERY = (
    {
        "name": "capability",
        "in": "query",
        "required": False,
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
        "description": "Only agents with this capability; repeat for several (all required).",
    },
    {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": [s.value for s in AgentStatus]},
        "description": "Only agents in this status.",
    },
    {
        "name": "role",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Only agents with this role.",
    },
)


@dataclass(frozen=True)
class Operation:
    """One documented operation: its route, who may call it, what goes in and comes out."""

    method: str
    path: str  # OpenAPI style: /api/v1/agents/{agent_id}
    operation_id: str
    summary: str
    who: Who
    answer: tuple[int, type[BaseModel] | None, str]
    request: type[BaseModel] | None = None
    errors: Mapping[int, str] = field(default_factory=dict)
    parameters: tuple[Mapping[str, Any], ...] = ()
    no_content: str = ""  # when set, the operation may also answer 204 without a body


_AUTH_ERRORS = {
    401: "`missing_token`, `unknown_token`",
    403: "`not_your_agent`, `operator_only`",
}
_BODY_ERRORS = {
    400: "`malformed_json`, `invalid_body` (unknown fields included)",
    413: "`body_too_large`",
}
_RECEIPT_ERRORS = {
    **_BODY_ERRORS,
    401: _AUTH_ERRORS[401],
    403: "`not_your_task`: the agent never held the task under that lease",
    404: "`task_not_found`",
    409: "`stale_lease`, `illegal_transition` (the task is not running), `receipt_conflict` "
    "(another receipt under this id), `task_changed`",
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        f"{API}/agents/register",
        "registerAgent",
        "Register an agent, or register an existing id again (updating it, new token).",
        "registration",
        (201, RegisterAnswer, "Registered a new agent (200: an existing id again)."),
        request=RegisterRequest,
        errors={
            **_BODY_ERRORS,
            401: "`missing_token`: the enrolment secret or the id's token is needed",
            403: "`registration_refused`: neither the enrolment secret nor the id's token",
            409: "`agent_id_conflict`: the id is an ssh host from the configuration",
        },
    ),
    Operation(
        "post",
        f"{API}/agents/heartbeat",
        "heartbeat",
        "Say the agent is alive; the answer lists the tasks it must stop.",
        "agent",
        (200, HeartbeatAnswer, "Recorded."),
        request=HeartbeatRequest,
        errors={
            **_BODY_ERRORS,
            401: _AUTH_ERRORS[401],
            403: "`not_your_agent`",
            409: "`agent_deregistered`: register again to rejoin",
        },
    ),
    Operation(
        "post",
        f"{API}/agents/deregister",
        "deregisterAgent",
        "Leave the fleet: the agent goes offline and its tasks are requeued.",
        "agent",
        (200, DeregisterAnswer, "Deregistered."),
        request=DeregisterRequest,
        errors={**_BODY_ERRORS, 401: _AUTH_ERRORS[401], 403: "`not_your_agent`"},
    ),
    Operation(
        "post",
        f"{API}/agents/{{agent_id}}/drain",
        "drainAgent",
        "Drain an agent: it finishes its tasks and takes no new ones.",
        "agent_or_operator",
        (200, AgentSummary, "The agent, draining."),
        request=DrainRequest,
        errors={**_BODY_ERRORS, **_AUTH_ERRORS, 404: "`agent_not_found`"},
        parameters=(_AGENT_ID,),
    ),
    Operation(
        "post",
        f"{API}/agents/{{agent_id}}/undrain",
        "undrainAgent",
        "End a drain: the agent takes new tasks again.",
        "agent_or_operator",
        (200, AgentSummary, "The agent."),
        request=DrainRequest,
        errors={**_BODY_ERRORS, **_AUTH_ERRORS, 404: "`agent_not_found`"},
        parameters=(_AGENT_ID,),
    ),
    Operation(
        "get",
        f"{API}/agents",
        "listAgents",
        "List agents with their load, current tasks, last heartbeat and stats.",
        "operator",
        (200, AgentList, "The agents, by id."),
        errors={400: "`invalid_query`", **_AUTH_ERRORS},
        parameters=_LIST_QUERY,
    ),
    Operation(
        "get",
        f"{API}/agents/{{agent_id}}",
        "getAgent",
        "One agent.",
        "agent_or_operator",
        (200, AgentSummary, "The agent."),
        errors={**_AUTH_ERRORS, 404: "`agent_not_found`"},
        parameters=(_AGENT_ID,),
    ),
    Operation(
        "post",
        f"{API}/tasks/{{task_id}}/status",
        "reportTaskStatus",
        "Report assigned → running, or a progress note, under the task's lease.",
        "agent",
        (200, TaskStatusAnswer, "Accepted (an event was appended when it changed anything)."),
        request=TaskStatusRequest,
        errors={
            **_BODY_ERRORS,
            401: _AUTH_ERRORS[401],
            403: "`not_your_task`",
            404: "`task_not_found`",
            409: "`stale_lease`, `illegal_transition`, `task_changed`",
        },
        parameters=(_TASK_ID,),
    ),
    Operation(
        "get",
        f"{API}/tasks",
        "listTasks",
        "Live tasks in queue order, each with its state, agent, and why it waits or failed.",
        "operator",
        (200, TaskList, "The tasks, highest priority and oldest first."),
        errors={400: "`invalid_query`", **_AUTH_ERRORS},
        parameters=(
            {
                "name": "state",
                "in": "query",
                "required": False,
                "description": "Only tasks in this state; repeat for several.",
                "schema": {"type": "string", "enum": [s.value for s in TaskState]},
            },
            {
                "name": "repo",
                "in": "query",
                "required": False,
                "description": "Only tasks of this repository (owner/name).",
                "schema": {"type": "string"},
            },
        ),
    ),
    Operation(
        "get",
        f"{API}/tasks/{{task_id}}",
        "getTask",
        "A task with its event history.",
        "agent_or_operator",
        (200, TaskDetail, "The task and its events, oldest first."),
        errors={401: _AUTH_ERRORS[401], 403: "`not_your_task`", 404: "`task_not_found`"},
        parameters=(_TASK_ID,),
    ),
    Operation(
        "post",
        f"{API}/tasks/dequeue",
        "dequeueTask",
        "Take the next waiting task that fits the agent, under a new lease.",
        "agent",
        (200, TaskHandout, "The task, its lease, its branch and where to fetch and push it."),
        request=DequeueRequest,
        errors={
            **_BODY_ERRORS,
            401: _AUTH_ERRORS[401],
            403: "`not_your_agent`",
            404: "`agent_not_found`",
            409: "`agent_deregistered`, `task_changed`",
        },
        no_content="No task for the agent now: none fits, no free slot, or the agent is not "
        "online (offline, draining).",
    ),
    Operation(
        "post",
        f"{API}/tasks/{{task_id}}/complete",
        "completeTask",
        "Finish a running task that produces no pull request, with its receipt.",
        "agent",
        (201, ReceiptAnswer, "Accepted (a retry of the same receipt gets the same answer)."),
        request=CompleteRequest,
        errors=_RECEIPT_ERRORS,
        parameters=(_TASK_ID,),
    ),
    Operation(
        "post",
        f"{API}/receipts",
        "submitReceipt",
        "Hand in what the agent did for its running task; idempotent by receipt_id.",
        "agent",
        (201, ReceiptAnswer, "Accepted (a retry of the same receipt gets the same answer)."),
        request=ReceiptRequest,
        errors=_RECEIPT_ERRORS,
    ),
    Operation(
        "get",
        OPENAPI_PATH,
        "openapi",
        "This document.",
        "anyone",
        (200, None, "The OpenAPI document."),
    ),
)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; it depends on code only)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorAnswer, "serialization")]
    for op in OPERATIONS:
        if op.request is not None:
            models.append((op.request, "validation"))
        if op.answer[1] is not None:
            models.append((op.answer[1], "serialization"))
    refs, schemas = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        status, model, description = op.answer
        answer: dict[str, Any] = {"description": description}
        if model is not None:
            answer["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        else:
            answer["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(status): answer}
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
        if op.parameters:
            operation["parameters"] = [dict(p) for p in op.parameters]
        if op.request is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
            }
        paths.setdefault(op.path, {})[op.method] = operation
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
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "agentToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The registry token an agent got when it registered.",
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
    """Serve the document at ``GET /api/v1/openapi.json`` (no credential needed)."""

    @app.get(OPENAPI_PATH)  # type: ignore[untyped-decorator]
    def openapi() -> bottle.HTTPResponse:
        return json_response(200, openapi_document())
