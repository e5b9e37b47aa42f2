"""The agent API: registration, heartbeats, drains, listings and task status, over JSON.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_agent_api` once.
Every handler is thin: parse and validate the request (pydantic models, unknown fields
refused), work out who is calling, call the :class:`~reconciler.fleet.agents.Fleet`, and answer JSON.
The reference, with every error code, is ``docs/agents-api.md``; the OpenAPI document served
at ``GET /api/v1/openapi.json`` is built by ``webhook/openapi.py`` from the models here.

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
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.console.views import AgentList, AgentMetadata, AgentSummary
from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    IllegalTransitionError,
    NotFoundError,
    RefusedError,
    UnauthenticatedError,
)
from reconciler.fleet.agents import Fleet
from reconciler.fleet.records import HeldTask, Profile, grace_period
from reconciler.models import AgentId, AgentStatus, Task, TaskEvent, TaskId, TaskState
from reconciler.settings import CapabilityName, RoleName, Settings
from webhook.app import json_response

log = structlog.get_logger(__name__)

API = "/api/v1"
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# An agent id also appears in `fleet/assign:<id>` labels, which Forgejo caps at 50 characters.
AGENT_ID_MAX = 36

_STATUS_OF: dict[type[RefusedError], int] = {
    UnauthenticatedError: 401,
    ForbiddenError: 403,
    ConflictError: 409,
}

AgentIdText = Annotated[str, Field(pattern=AGENT_ID_PATTERN, max_length=AGENT_ID_MAX)]


# --- request and answer shapes ---------------------------------------------------------------


class _Request(BaseModel):
    # A misspelt field is an error, never silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class RegisterRequest(_Request):
    """``POST /api/v1/agents/register``."""

    agent_id: AgentIdText | None = Field(
        default=None, description="The id to register (again); one is generated when absent."
    )
    type: str = Field(
        min_length=1,
        max_length=64,
        description="claude-code, codex-cli, hermes, openclaw, acp, or any string.",
    )
    hostname: str = Field(default="", max_length=253)
    roles: tuple[RoleName, ...] = Field(
        default=(),
        max_length=50,
        description="Standard roles (developer, code-reviewer, ...) or custom ones.",
    )
    capabilities: tuple[CapabilityName, ...] = Field(
        default=(), max_length=200, description="e.g. code:python, review, test."
    )
    max_concurrency: int = Field(default=1, ge=1, le=1000)
    mode: Literal["pull"] = Field(
        default="pull", description="Only pull agents register; ssh hosts come from the config."
    )
    metadata: AgentMetadata = Field(default_factory=AgentMetadata)


class RegisterAnswer(_Answer):
    agent_id: str
    token: str = Field(description="The registry token. Shown this once; keep it secret.")
    created: bool = Field(description="False when an existing id was registered again.")
    heartbeat_interval_s: float
    missed_heartbeats: int
    lease_ttl_s: float = Field(
        description="Stop every task when no heartbeat was acknowledged for this long."
    )


class HeldTaskItem(_Request):
    task_id: str = Field(min_length=1, max_length=100)
    lease_generation: int = Field(ge=1)


class HeartbeatRequest(_Request):
    """``POST /api/v1/agents/heartbeat``."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )
    load: float | None = Field(default=None, ge=0, description="The agent's own load figure.")
    version: str = Field(default="", max_length=100)
    tasks: tuple[HeldTaskItem, ...] = Field(
        default=(), max_length=1000, description="The tasks the agent believes it runs."
    )


class StopItem(_Answer):
    task_id: str
    code: Literal["unknown_task", "requeued", "reassigned", "stale_lease", "not_active"]
    reason: str


class HeartbeatAnswer(_Answer):
    agent_id: str
    status: AgentStatus
    heartbeat_interval_s: float
    lease_ttl_s: float
    stop: tuple[StopItem, ...] = Field(description="Tasks the agent must stop working on now.")


class DeregisterRequest(_Request):
    """``POST /api/v1/agents/deregister`` (an empty body will do)."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )


class DeregisterAnswer(_Answer):
    agent_id: str
    deregistered: bool


class DrainRequest(_Request):
    """``POST /api/v1/agents/{id}/drain`` and ``/undrain``: the body is empty or ``{}``."""


class TaskStatusRequest(_Request):
    """``POST /api/v1/tasks/{id}/status``: ``running``, a progress note, or both."""

    lease_generation: int = Field(ge=1, description="The lease the task was assigned under.")
    state: Literal["running"] | None = Field(default=None, description="assigned → running")
    note: str = Field(default="", max_length=4000, description="A progress note for the log.")


class TaskStatusAnswer(_Answer):
    task: Task
    changed: bool = Field(description="False when the task already was in that state.")


class TaskDetail(_Answer):
    """``GET /api/v1/tasks/{id}``: the task and its history, oldest event first."""

    task: Task
    events: tuple[TaskEvent, ...]


class TaskList(_Answer):
    """``GET /api/v1/tasks``: live tasks in queue order, each with why it waits or failed."""

    tasks: tuple[Task, ...]


class ErrorAnswer(_Answer):
    """Every error: a stable machine-readable code and a sentence for people."""

    error: str
    message: str


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
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except RefusedError as exc:
            status = next((s for cls, s in _STATUS_OF.items() if isinstance(exc, cls)), 400)
            return error_response(status, exc.code, str(exc))
        except IllegalTransitionError as exc:
            return error_response(409, "illegal_transition", str(exc))
        return json_response(status, answer.model_dump(mode="json"))

    return wrapped


_Model = TypeVar("_Model", bound=BaseModel)


def read_body(model: type[_Model], *, max_bytes: int) -> _Model:
    """The request's JSON body as ``model``; an empty body counts as ``{}``."""
    length = bottle.request.content_length
    if length > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is over {max_bytes} bytes")
    raw = bottle.request.body.read(max_bytes + 1) if length != 0 else b""
    if len(raw) > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is over {max_bytes} bytes")
    if raw.strip():
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", f"the body is not JSON: {exc}") from None
    else:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    """``field: problem; other.field: problem`` — what a client needs to fix its request."""
    problems = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def bearer_token() -> str | None:
    """The bearer token of the request, or None when there is none."""
    header = str(bottle.request.get_header("Authorization", ""))
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


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

    @app.post(f"{API}/agents/register")  # type: ignore[untyped-decorator]
    @endpoint
    def register() -> tuple[int, BaseModel]:
        request = body(RegisterRequest)
        outcome = fleet.register(
            Profile(
                type=request.type,
                hostname=request.hostname,
                roles=request.roles,
                capabilities=request.capabilities,
                max_concurrency=request.max_concurrency,
                metadata=request.metadata.to_record(),
            ),
            agent_id=request.agent_id,
            credential=bearer_token(),
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

    @app.post(f"{API}/agents/heartbeat")  # type: ignore[untyped-decorator]
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

    @app.post(f"{API}/agents/deregister")  # type: ignore[untyped-decorator]
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

    @app.post(f"{API}/agents/<agent_id>/drain")  # type: ignore[untyped-decorator]
    @endpoint
    def drain_agent(agent_id: str) -> tuple[int, BaseModel]:
        return drain(agent_id, True)

    @app.post(f"{API}/agents/<agent_id>/undrain")  # type: ignore[untyped-decorator]
    @endpoint
    def undrain_agent(agent_id: str) -> tuple[int, BaseModel]:
        return drain(agent_id, False)

    @app.get(f"{API}/agents")  # type: ignore[untyped-decorator]
    @endpoint
    def list_agents() -> tuple[int, BaseModel]:
        operator_caller(fleet)
        query = bottle.request.query
        unknown = sorted(set(query.keys()) - {"capability", "status", "role"})
        if unknown:
            raise ApiError(
                400, "invalid_query", f"unknown query parameter(s): {', '.join(unknown)}"
            )
        status_text = query.get("status")
        try:
            status = AgentStatus(status_text) if status_text else None
        except ValueError:
            known = ", ".join(s.value for s in AgentStatus)
            raise ApiError(
                400, "invalid_query", f"status must be one of {known}, not {status_text!r}"
            ) from None
        views = fleet.agents(
            capabilities=[c for c in query.getall("capability") if c],
            status=status,
            role=query.get("role") or None,
        )
        return 200, AgentList(agents=tuple(AgentSummary.of(v) for v in views))

    @app.get(f"{API}/agents/<agent_id>")  # type: ignore[untyped-decorator]
    @endpoint
    def get_agent(agent_id: str) -> tuple[int, BaseModel]:
        caller = any_caller(fleet)
        if not caller.may_act_for(agent_id):
            raise ForbiddenError("not_your_agent", f"only {agent_id} or an operator may read it")
        try:
            return 200, AgentSummary.of(fleet.get(agent_id))
        except NotFoundError as exc:
            raise _not_found("agent_not_found", exc) from None

    @app.post(f"{API}/tasks/<task_id>/status")  # type: ignore[untyped-decorator]
    @endpoint
    def task_status(task_id: str) -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = body(TaskStatusRequest)
        if request.state is None and not request.note:
            raise ApiError(400, "invalid_body", "give a state, a note, or both")
        try:
            update = fleet.update_task_status(
                agent_id,
                task_id,
                lease_generation=request.lease_generation,
                state=TaskState(request.state) if request.state else None,
                note=request.note,
            )
        except NotFoundError as exc:
            raise _not_found("task_not_found", exc) from None
        return 200, TaskStatusAnswer(task=update.task, changed=update.changed)

    @app.get(f"{API}/tasks")  # type: ignore[untyped-decorator]
    @endpoint
    def list_tasks() -> tuple[int, BaseModel]:
        operator_caller(fleet)
        query = bottle.request.query
        unknown = sorted(set(query.keys()) - {"state", "repo"})
        if unknown:
            raise ApiError(
                400, "invalid_query", f"unknown query parameter(s): {', '.join(unknown)}"
            )
        try:
            states = [TaskState(s) for s in query.getall("state") if s]
        except ValueError:
            known = ", ".join(s.value for s in TaskState)
            raise ApiError(400, "invalid_query", f"state must be one of {known}") from None
        tasks = fleet.tasks(states=states, repo=query.get("repo") or None)
        return 200, TaskList(tasks=tuple(tasks))

    @app.get(f"{API}/tasks/<task_id>")  # type: ignore[untyped-decorator]
    @endpoint
    def get_task(task_id: str) -> tuple[int, BaseModel]:
        caller = any_caller(fleet)
        try:
            task, events = fleet.read_task(task_id, agent_id=caller.agent_id)
        except NotFoundError as exc:
            raise _not_found("task_not_found", exc) from None
        return 200, TaskDetail(task=task, events=tuple(events))


__all__ = [
    "API",
    "ApiError",
    "Caller",
    "DeregisterAnswer",
    "DeregisterRequest",
    "DrainRequest",
    "ErrorAnswer",
    "HeartbeatAnswer",
    "HeartbeatRequest",
    "RegisterAnswer",
    "RegisterRequest",
    "TaskDetail",
    "TaskList",
    "TaskStatusAnswer",
    "TaskStatusRequest",
    "agent_caller",
    "any_caller",
    "bearer_token",
    "endpoint",
    "install_agent_api",
    "operator_caller",
    "read_body",
]
