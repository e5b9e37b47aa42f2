"""The agent API: registration, heartbeats, drains, listings and task status, over JSON.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_agent_api` once.
Every handler is thin: parse and validate the request (the wire contract's models,
``reconciler/fleet/api.py``; unknown fields refused), work out who is calling, call the
:class:`~reconciler.fleet.agents.Fleet`, and answer JSON. Each route is installed from the
contract's :class:`~reconciler.fleet.operations.Operation` by :func:`serves`, and the OpenAPI
document served at ``GET /api/v1/openapi.json`` is generated from those routes
(``webhook/openapi.py``).
The reference, with every error code, is ``docs/agents-api.md``.

| method | path                                | who                    |
|--------|-------------------------------------|------------------------|
| POST   | ``/api/v1/agents/register``         | anyone with the enrolment secret, or the id's current token |
| POST   | ``/api/v1/agents/heartbeat``        | the agent              |
| POST   | ``/api/v1/agents/deregister``       | the agent              |
| POST   | ``/api/v1/agents/{id}/drain``       | the agent, an operator |
| POST   | ``/api/v1/agents/{id}/undrain``     | the agent, an operator |
| GET    | ``/api/v1/agents``                  | an operator            |
| GET    | ``/api/v1/agents/{id}``             | the agent, an operator |
| POST   | ``/api/v1/tasks/{id}/status``       | the agent holding the task |
| GET    | ``/api/v1/tasks/{id}``              | the agent holding the task, an operator |
| GET    | ``/api/v1/openapi.json``            | anyone (``webhook/openapi.py``) |

Credentials are ``Authorization: Bearer <token>``: an agent's registry token, or the operator
token from ``api.operator_token``. Every error is JSON ``{"error": <stable code>, "message":
...}``. The endpoints through which pull agents take and finish work (``/api/v1/tasks/
dequeue``, ``/api/v1/tasks/{id}/complete``, ``/api/v1/receipts``) build on this module's
plumbing — :func:`read_body`, :func:`agent_caller`, :func:`endpoint` — in a module of their
own beside it.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_origin

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
import structlog
from pydantic import BaseModel, ValidationError

from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    IllegalTransitionError,
    NotFoundError,
    RefusedError,
    UnauthenticatedError,
)
from reconciler.fleet import api, operations
from reconciler.fleet.agents import Fleet
from reconciler.fleet.api import (
    AgentList,
    AgentQuery,
    AgentSummary,
    DeregisterAnswer,
    DeregisterRequest,
    DrainRequest,
    HeartbeatAnswer,
    HeartbeatRequest,
    RegisterAnswer,
    RegisterRequest,
    StopItem,
    TaskDetail,
    TaskList,
    TaskQuery,
    TaskStatusAnswer,
    TaskStatusRequest,
)
from reconciler.fleet.budgets import RunSpend
from reconciler.fleet.operations import Operation
from reconciler.fleet.records import HeldTask, Profile, grace_period
from reconciler.models import AgentId, TaskId, TaskState
from reconciler.settings import Settings
from webhook import inputs
from webhook.app import json_response
from webhook.inputs import InputError

log = structlog.get_logger(__name__)

_STATUS_OF: dict[type[RefusedError], int] = {
    UnauthenticatedError: 401,
    ForbiddenError: 403,
    ConflictError: 409,
}

# --- plumbing ------------------------------------------------------------------------------


class ApiError(Exception):
    """Answer with ``status`` and JSON ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


def error_response(status: int, code: str, message: str) -> bottle.HTTPResponse:
    return json_response(status, {"error": code, "message": message})


def endpoint(
    handler: Callable[..., tuple[int, BaseModel]],
) -> Callable[..., bottle.HTTPResponse]:
    """Turn a handler returning ``(status, model)`` into a JSON endpoint whose every refusal
    is a JSON error with its status (never a 500 for a client's mistake)."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> bottle.HTTPResponse:
        try:
            status, answer = handler(*args, **kwargs)
        except (ApiError, InputError) as exc:
            return error_response(exc.status, exc.code, exc.message)
        except RefusedError as exc:
            status = next((s for cls, s in _STATUS_OF.items() if isinstance(exc, cls)), 400)
            return error_response(status, exc.code, str(exc))
        except IllegalTransitionError as exc:
            return error_response(409, "illegal_transition", str(exc))
        return json_response(status, answer.model_dump(mode="json"))

    return wrapped


_Model = TypeVar("_Model", bound=BaseModel)
_Callback = TypeVar("_Callback", bound=Callable[..., bottle.HTTPResponse])


def read_body(model: type[_Model], *, max_bytes: int) -> _Model:
    """The request's JSON body as ``model``; an empty body counts as ``{}``.

    Refusals (too large, not JSON, too deep, not an object, invalid) are 4xx
    :class:`~webhook.inputs.InputError`; see ``webhook/inputs.py``.
    """
    raw = inputs.read_body(bottle.request.environ, max_bytes=max_bytes)
    data = inputs.parse_json(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe_validation(exc)) from None


_Query = TypeVar("_Query", bound=api.Query)


def read_query(model: type[_Query]) -> _Query:
    """The request's query string as ``model``: an unknown parameter or a bad value is 400
    ``invalid_query``; a tuple field takes every value of a repeated parameter, any other
    field the last one; empty values count as absent."""
    query = bottle.request.query
    unknown = sorted(set(query.keys()) - set(model.model_fields))
    if unknown:
        raise ApiError(400, "invalid_query", f"unknown query parameter(s): {', '.join(unknown)}")
    data: dict[str, object] = {}
    for name, info in model.model_fields.items():
        values = [v for v in query.getall(name) if v]
        if values:
            data[name] = tuple(values) if get_origin(info.annotation) is tuple else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_query", describe_validation(exc)) from None


def serves(app: bottle.Bottle, operation: Operation) -> Callable[[_Callback], _Callback]:
    """Install the decorated callback as ``operation``'s route on ``app``; the route carries
    the operation, from which the OpenAPI document is generated (``webhook/openapi.py``)."""

    def install(callback: _Callback) -> _Callback:
        app.route(
            operation.route,
            method=operation.method.upper(),
            callback=callback,
            operation=operation,
        )
        return callback

    return install


def describe_validation(exc: ValidationError) -> str:
    """``field: problem; other.field: problem`` — what a client needs to fix its request."""
    problems = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def bearer_token() -> str | None:
    """The bearer token of the request, or None when there is none (401 when malformed)."""
    return inputs.bearer_token(bottle.request.environ)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: an agent, or the operator (``agent_id`` None)."""

    agent_id: AgentId | None

    @property
    def is_operator(self) -> bool:
        return self.agent_id is None

    def may_act_for(self, agent_id: str) -> bool:
        return self.agent_id is None or self.agent_id == agent_id


def _require_token() -> str:
    token = bearer_token()
    if token is None:
        raise UnauthenticatedError(
            "missing_token", "this endpoint needs an Authorization: Bearer <token> header"
        )
    return token


def _unknown_token() -> UnauthenticatedError:
    return UnauthenticatedError("unknown_token", "the bearer token was not issued to anyone")


def agent_caller(fleet: Fleet) -> AgentId:
    """The agent whose registry token the request carries (401 otherwise)."""
    agent_id = fleet.authenticate(_require_token())
    if agent_id is None:
        raise _unknown_token()
    return agent_id


def any_caller(fleet: Fleet) -> Caller:
    """The operator, or the agent whose token the request carries (401 otherwise)."""
    token = _require_token()
    if fleet.is_operator(token):
        return Caller(None)
    agent_id = fleet.authenticate(token)
    if agent_id is None:
        raise _unknown_token()
    return Caller(agent_id)


def operator_caller(fleet: Fleet) -> Caller:
    """The operator (401 for an unknown token, 403 for an agent's)."""
    caller = any_caller(fleet)
    if not caller.is_operator:
        raise ForbiddenError("operator_only", "this endpoint needs the operator token")
    return caller


def _registration_credential(fleet: Fleet, settings: Settings) -> str | None:
    """The credential a registration presents, checked as far as it can be without the body.

    With an enrolment secret configured every registration needs a credential: the secret
    itself, or (to register an existing id again) a token the registry issued. The fleet
    checks which id the token belongs to once the body names the id.
    """
    credential = bearer_token()
    secret = settings.api.enrolment_secret
    if secret is None:
        return credential  # open enrolment (see docs/agents-api.md)
    if credential is None:
        raise UnauthenticatedError(
            "missing_token", "registering needs the enrolment secret (or the id's token)"
        )
    is_secret = hmac.compare_digest(credential.encode(), secret.get_secret_value().encode())
    if not is_secret and fleet.authenticate(credential) is None:
        raise ForbiddenError(
            "registration_refused", "the bearer token is neither the enrolment secret nor a token"
        )
    return credential


def _own_agent(caller: AgentId, claimed: str | None) -> None:
    if claimed is not None and claimed != caller:
        raise ForbiddenError("not_your_agent", f"the token belongs to {caller}, not {claimed}")


def _not_found(code: str, exc: NotFoundError) -> ApiError:
    return ApiError(404, code, str(exc))


# --- the routes ----------------------------------------------------------------------------


def install_agent_api(
    app: bottle.Bottle, *, fleet: Fleet, settings: Callable[[], Settings], max_body_bytes: int
) -> None:
    """Add the agent API's routes to ``app``."""

    def body(model: type[_Model]) -> _Model:
        return read_body(model, max_bytes=max_body_bytes)

    def lease_ttl() -> float:
        return grace_period(settings().api).total_seconds()

    @serves(app, operations.REGISTER)
    @endpoint
    def register() -> tuple[int, BaseModel]:
        # Credentials first: a caller who may not register gets no body parsed at all.
        credential = _registration_credential(fleet, settings())
        request = body(RegisterRequest)
        outcome = fleet.register(
            Profile(
                type=request.type,
                hostname=request.hostname,
                roles=request.roles,
                capabilities=request.capabilities,
                max_concurrency=request.max_concurrency,
                metadata=request.metadata.to_record(),
                forgejo_login=request.forgejo_login,
            ),
            agent_id=request.agent_id,
            credential=credential,
        )
        api = settings().api
        return (201 if outcome.created else 200), RegisterAnswer(
            agent_id=outcome.agent.id,
            token=outcome.token,
            created=outcome.created,
            heartbeat_interval_s=api.heartbeat_interval,
            missed_heartbeats=api.missed_heartbeats,
            lease_ttl_s=lease_ttl(),
        )

    @serves(app, operations.HEARTBEAT)
    @endpoint
    def heartbeat() -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = body(HeartbeatRequest)
        _own_agent(agent_id, request.agent_id)
        try:
            reply = fleet.heartbeat(
                agent_id,
                load=request.load,
                version=request.version,
                tasks=[HeldTask(TaskId(t.task_id), t.lease_generation) for t in request.tasks],
            )
        except NotFoundError as exc:
            raise _not_found("agent_not_found", exc) from None
        return 200, HeartbeatAnswer(
            agent_id=agent_id,
            status=reply.agent.status,
            heartbeat_interval_s=settings().api.heartbeat_interval,
            lease_ttl_s=lease_ttl(),
            stop=tuple(
                StopItem.model_validate({"task_id": s.task_id, "code": s.code, "reason": s.reason})
                for s in reply.stop
            ),
        )

    @serves(app, operations.DEREGISTER)
    @endpoint
    def deregister() -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        _own_agent(agent_id, body(DeregisterRequest).agent_id)
        try:
            agent = fleet.deregister(agent_id)
        except NotFoundError as exc:
            raise _not_found("agent_not_found", exc) from None
        return 200, DeregisterAnswer(agent_id=agent.id, deregistered=agent.deregistered)

    def drain(agent_id: str, draining: bool) -> tuple[int, BaseModel]:
        caller = any_caller(fleet)
        if not caller.may_act_for(agent_id):
            raise ForbiddenError("not_your_agent", f"only {agent_id} or an operator may do this")
        body(DrainRequest)
        try:
            fleet.set_draining(
                agent_id, draining, by="an operator" if caller.is_operator else "the agent"
            )
            return 200, AgentSummary.of(fleet.get(agent_id))
        except NotFoundError as exc:
            raise _not_found("agent_not_found", exc) from None

    @serves(app, operations.DRAIN)
    @endpoint
    def drain_agent(agent_id: str) -> tuple[int, BaseModel]:
        return drain(agent_id, True)

    @serves(app, operations.UNDRAIN)
    @endpoint
    def undrain_agent(agent_id: str) -> tuple[int, BaseModel]:
        return drain(agent_id, False)

    @serves(app, operations.LIST_AGENTS)
    @endpoint
    def list_agents() -> tuple[int, BaseModel]:
        operator_caller(fleet)
        query = read_query(AgentQuery)
        views = fleet.agents(capabilities=query.capability, status=query.status, role=query.role)
        return 200, AgentList(agents=tuple(AgentSummary.of(v) for v in views))

    @serves(app, operations.GET_AGENT)
    @endpoint
    def get_agent(agent_id: str) -> tuple[int, BaseModel]:
        caller = any_caller(fleet)
        if not caller.may_act_for(agent_id):
            raise ForbiddenError("not_your_agent", f"only {agent_id} or an operator may read it")
        try:
            return 200, AgentSummary.of(fleet.get(agent_id))
        except NotFoundError as exc:
            raise _not_found("agent_not_found", exc) from None

    @serves(app, operations.TASK_STATUS)
    @endpoint
    def task_status(task_id: str) -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = body(TaskStatusRequest)
        if request.waiting and (request.failed or request.state is not None):
            raise ApiError(400, "invalid_body", "waiting ends the run: no state, not failed")
        if request.session_id is not None and not request.waiting:
            raise ApiError(400, "invalid_body", "a session_id is reported with waiting only")
        if request.state is None and not request.note and not request.waiting:
            raise ApiError(400, "invalid_body", "give a state, a note, or both")
        if request.failed and not request.note:
            raise ApiError(400, "invalid_body", "a failed run needs a note saying why")
        if request.over_budget and not request.failed:
            raise ApiError(400, "invalid_body", "over_budget describes a failed run: set failed")
        try:
            if request.waiting:
                spent = (
                    RunSpend(request.spent_usd, request.spent_tokens, estimated=False)
                    if request.spent_usd or request.spent_tokens
                    else None
                )
                update = fleet.wait_for_answers(
                    agent_id,
                    task_id,
                    lease_generation=request.lease_generation,
                    spent=spent,
                    session_id=request.session_id,
                )
                return 200, TaskStatusAnswer(task=update.task, changed=update.changed)
            if request.over_budget:
                spent = RunSpend(
                    request.spent_usd, request.spent_tokens, estimated=False, over_budget=True
                )
                update = fleet.report_failure(
                    agent_id,
                    task_id,
                    lease_generation=request.lease_generation,
                    reason=request.note,
                    retryable=False,
                    spent=spent,
                )
                return 200, TaskStatusAnswer(task=update.task, changed=update.changed)
            update = fleet.update_task_status(
                agent_id,
                task_id,
                lease_generation=request.lease_generation,
                state=TaskState(request.state) if request.state else None,
                note=request.note,
                failed=request.failed,
            )
        except NotFoundError as exc:
            raise _not_found("task_not_found", exc) from None
        return 200, TaskStatusAnswer(task=update.task, changed=update.changed)

    @serves(app, operations.LIST_TASKS)
    @endpoint
    def list_tasks() -> tuple[int, BaseModel]:
        operator_caller(fleet)
        query = read_query(TaskQuery)
        tasks = fleet.tasks(states=query.state, repo=query.repo)
        return 200, TaskList(tasks=tuple(tasks))

    @serves(app, operations.GET_TASK)
    @endpoint
    def get_task(task_id: str) -> tuple[int, BaseModel]:
        caller = any_caller(fleet)
        try:
            task, events = fleet.read_task(task_id, agent_id=caller.agent_id)
        except NotFoundError as exc:
            raise _not_found("task_not_found", exc) from None
        return 200, TaskDetail(task=task, events=tuple(events))


__all__ = [
    "ApiError",
    "Caller",
    "agent_caller",
    "any_caller",
    "bearer_token",
    "endpoint",
    "install_agent_api",
    "operator_caller",
    "read_body",
    "read_query",
    "serves",
]
