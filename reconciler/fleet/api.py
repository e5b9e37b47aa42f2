"""The agent API's wire contract: every request and answer, defined once.

The server (``webhook/agents_api.py``, ``webhook/tasks_api.py``) validates requests and
answers with these models and installs its routes from the operations built on them
(``reconciler/fleet/operations.py``); the OpenAPI document (``webhook/openapi.py``) is
generated from the routes so installed and these models' JSON schemas; the pull worker's client (``reconciler/agent/client.py``) and the CLI's client
(``reconciler/console/client.py``) build their requests and read the answers with the same
models, and decode refusals with :func:`refusal`. One definition, so none of them can drift.

Requests refuse unknown fields (a misspelt field is an error, never silently ignored);
answers ignore them (an older client reads a newer daemon).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.errors import (
    ConflictError,
    FleetError,
    ForbiddenError,
    NotFoundError,
    RefusedError,
    TransientError,
    UnauthenticatedError,
)
from reconciler.fleet.questions import OPTION_MAX, OPTIONS_MAX, QUESTION_MAX
from reconciler.fleet.records import AgentView
from reconciler.models import (
    AgentStatus,
    ExecutionMode,
    Question,
    QuestionKind,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
)
from reconciler.settings import CapabilityName, RoleName

AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# An agent id also appears in `fleet/assign:<id>` labels, which Forgejo caps at 50 characters.
AGENT_ID_MAX = 36
RECEIPT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
NOTE_MAX = 4000
SUMMARY_MAX = 20_000

AgentIdText = Annotated[str, Field(pattern=AGENT_ID_PATTERN, max_length=AGENT_ID_MAX)]
ReceiptIdText = Annotated[
    str,
    Field(
        pattern=RECEIPT_ID_PATTERN,
        max_length=128,
        description="Chosen by the agent, unique per receipt; a retry sends the same id.",
    ),
]
CommitSha = Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")]
SKILL = r"[A-Za-z0-9][A-Za-z0-9_.:+-]*"
SkillName = Annotated[str, Field(pattern=f"^{SKILL}$", max_length=64)]
_SKILLS_SEPARATOR = ","
_METADATA_KEYS = ("version", "workdir", "llm_provider", "llm_model")
StopCode = Literal["unknown_task", "requeued", "reassigned", "stale_lease", "not_active"]


class Request(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Answer(BaseModel):
    """An answer body: unknown fields are ignored, so an older client reads a newer daemon."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Query(BaseModel):
    """A query string: unknown parameters are refused; a tuple field may be repeated."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- agents ----------------------------------------------------------------------------------


class AgentMetadata(BaseModel):
    """What an agent says about its set-up; shown in listings, never acted upon."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(default="", max_length=100, description="The agent's own version.")
    workdir: str = Field(default="", max_length=1000, description="Where it checks out work.")
    llm_provider: str = Field(default="", max_length=100, description="e.g. anthropic, openai.")
    llm_model: str = Field(default="", max_length=200, description="The model it runs.")
    skills: tuple[SkillName, ...] = Field(
        default=(), max_length=100, description="Free-form skills, e.g. terraform, react."
    )

    def to_record(self) -> dict[str, str]:
        """The flat text map ``Agent.metadata`` keeps (empty values left out)."""
        record = {key: getattr(self, key) for key in _METADATA_KEYS if getattr(self, key)}
        if self.skills:
            record["skills"] = _SKILLS_SEPARATOR.join(self.skills)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> AgentMetadata:
        skills = record.get("skills", "")
        return cls(
            **{key: record[key] for key in _METADATA_KEYS if key in record},
            skills=tuple(s for s in skills.split(_SKILLS_SEPARATOR) if s),
        )


class RegisterRequest(Request):
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
    forgejo_login: str = Field(
        default="",
        max_length=40,
        pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)?$",
        description="The agent's own Forgejo account (a login, or empty): the issues of the "
        "tasks it holds are assigned to it.",
    )
    mode: Literal["pull"] = Field(
        default="pull", description="Only pull agents register; ssh hosts come from the config."
    )
    metadata: AgentMetadata = Field(default_factory=AgentMetadata)


class RegisterAnswer(Answer):
    agent_id: str
    token: str = Field(description="The registry token. Shown this once; keep it secret.")
    created: bool = Field(description="False when an existing id was registered again.")
    heartbeat_interval_s: float
    missed_heartbeats: int
    lease_ttl_s: float = Field(
        description="Stop every task when no heartbeat was acknowledged for this long."
    )


class HeldTaskItem(Request):
    """A task the agent believes it runs, under the lease it was given."""

    task_id: str = Field(min_length=1, max_length=100)
    lease_generation: int = Field(ge=1)


class HeartbeatRequest(Request):
    """``POST /api/v1/agents/heartbeat``."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )
    load: float | None = Field(default=None, ge=0, description="The agent's own load figure.")
    version: str = Field(default="", max_length=100)
    tasks: tuple[HeldTaskItem, ...] = Field(
        default=(), max_length=1000, description="The tasks the agent believes it runs."
    )


class StopItem(Answer):
    """A task the agent must stop, with a stable code and why."""

    task_id: str
    code: StopCode
    reason: str


class HeartbeatAnswer(Answer):
    agent_id: str
    status: AgentStatus
    heartbeat_interval_s: float
    lease_ttl_s: float
    stop: tuple[StopItem, ...] = Field(description="Tasks the agent must stop working on now.")


class DeregisterRequest(Request):
    """``POST /api/v1/agents/deregister`` (an empty body will do)."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )


class DeregisterAnswer(Answer):
    agent_id: str
    deregistered: bool


class DrainRequest(Request):
    """``POST /api/v1/agents/{id}/drain`` and ``/undrain``: the body is empty or ``{}``."""


class AgentQuery(Query):
    """``GET /api/v1/agents``' filters."""

    capability: tuple[str, ...] = Field(
        default=(),
        description="Only agents with this capability; repeat for several (all required).",
    )
    status: AgentStatus | None = Field(default=None, description="Only agents in this status.")
    role: str | None = Field(default=None, description="Only agents with this role.")


class CurrentTask(Answer):
    """A task an agent holds a lease on."""

    id: str
    repo: str
    issue_number: int
    state: TaskState
    lease_generation: int

    @classmethod
    def of(cls, task: Task) -> CurrentTask:
        return cls(
            id=task.id,
            repo=task.repo,
            issue_number=task.issue_number,
            state=task.state,
            lease_generation=task.lease_generation,
        )


class AgentStatsSummary(Answer):
    tasks_completed: int
    errors: int
    average_duration_s: float | None
    tokens: int
    cost_usd: float
    estimated_cost_usd: float = Field(
        default=0.0,
        description="The part of cost_usd estimated from tokens and api.token_prices "
        "(the CLI reported no cost).",
    )
    uptime_percent: float = Field(
        description="Share of the time since registration spent online or draining."
    )
    failing_runs: int = Field(
        default=0, description="Runs that failed in a row (0 after a successful one)."
    )


class AgentSummary(Answer):
    """One agent in ``GET /api/v1/agents`` and ``GET /api/v1/agents/{id}``."""

    id: str
    type: str
    hostname: str
    mode: ExecutionMode
    roles: tuple[str, ...]
    capabilities: tuple[str, ...]
    max_concurrency: int
    metadata: AgentMetadata
    status: AgentStatus
    status_reason: str = Field(description="Why the agent is offline or draining.")
    draining: bool = Field(description="A drain was asked for (kept across an outage).")
    deregistered: bool
    registered_at: datetime
    status_since: datetime | None
    last_heartbeat_at: datetime | None = Field(
        description="When the agent was last heard of: its last heartbeat (pull agents) or its "
        "last health check (ssh hosts); null when never since the daemon started."
    )
    load: float | None = Field(description="The load the agent last reported.")
    version: str
    current_tasks: tuple[CurrentTask, ...]
    stats: AgentStatsSummary
    consecutive_failures: int = Field(description="ssh hosts: health checks failed in a row.")

    @classmethod
    def of(cls, view: AgentView) -> AgentSummary:
        agent = view.agent
        return cls(
            id=agent.id,
            type=agent.type,
            hostname=agent.hostname,
            mode=agent.mode,
            roles=agent.roles,
            capabilities=agent.capabilities,
            max_concurrency=agent.max_concurrency,
            metadata=AgentMetadata.from_record(agent.metadata),
            status=agent.status,
            status_reason=agent.status_reason,
            draining=agent.drain_requested,
            deregistered=agent.deregistered,
            registered_at=agent.registered_at,
            status_since=agent.status_since,
            last_heartbeat_at=view.last_heartbeat_at,
            load=view.load,
            version=view.version,
            current_tasks=tuple(CurrentTask.of(t) for t in view.current_tasks),
            stats=AgentStatsSummary(
                tasks_completed=agent.stats.tasks_completed,
                errors=agent.stats.errors,
                average_duration_s=agent.stats.average_duration_s,
                tokens=agent.stats.tokens,
                cost_usd=agent.stats.cost_usd,
                estimated_cost_usd=agent.stats.estimated_cost_usd,
                uptime_percent=view.uptime_percent,
                failing_runs=agent.failing_runs,
            ),
            consecutive_failures=agent.consecutive_failures,
        )


class AgentList(Answer):
    """``GET /api/v1/agents``."""

    agents: tuple[AgentSummary, ...]


# --- tasks -----------------------------------------------------------------------------------


class TaskStatusRequest(Request):
    """``POST /api/v1/tasks/{id}/status``: ``running``, a progress note, or both."""

    lease_generation: int = Field(ge=1, description="The lease the task was assigned under.")
    state: Literal["running"] | None = Field(default=None, description="assigned → running")
    note: str = Field(default="", max_length=NOTE_MAX, description="A progress note for the log.")
    failed: bool = Field(
        default=False,
        description="The run failed; the note says why. Counts an error in the agent's stats "
        "and, after `api.drain_after_failed_runs` in a row, drains the agent.",
    )
    over_budget: bool = Field(
        default=False,
        description="With `failed`: the run was stopped because its usage passed the task's "
        "budget (the note says `over budget: spent X of Y`). The task fails at once and is not "
        "retried until its budget is raised.",
    )
    spent_usd: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="What the failed run cost (USD)."
    )
    spent_tokens: int = Field(
        default=0, ge=0, description="Tokens the failed (or waiting) run used."
    )
    session_id: str | None = Field(
        default=None,
        max_length=200,
        description="With `waiting`: the CLI session the run used, resumed when the task runs "
        "again with the answers.",
    )
    waiting: bool = Field(
        default=False,
        description="The run ended to wait for the answers to the questions it asked (the "
        "`ask`/`decide` tools): the task goes back to the queue and waits on them; not a "
        "failure. `spent_usd`/`spent_tokens` say what the run cost.",
    )


class TaskStatusAnswer(Answer):
    task: Task
    changed: bool = Field(description="False when the task already was in that state.")


class TaskDetail(Answer):
    """``GET /api/v1/tasks/{id}``: the task and its history, oldest event first."""

    task: Task
    events: tuple[TaskEvent, ...]


class TaskBrief(Answer):
    """``GET /api/v1/tasks/{id}/brief``: the task as the fleet sees it, for its own run's MCP
    server (``agent-fleet mcp``). Only text the fleet trusts: the issue's body is in the run's
    prompt, built from trusted authors' text; review feedback is from trusted reviewers."""

    task_id: TaskId
    repo: str
    issue_number: int
    title: str
    state: str
    branch: str
    lease_generation: int
    attempt: int
    review_count: int
    review_feedback: tuple[str, ...] = Field(
        description="Trusted reviewers' requested changes the run must answer."
    )
    deadline_at: datetime | None
    progress: tuple[str, ...] = Field(description="The run's progress notes so far, oldest first.")
    questions: tuple[Question, ...] = Field(
        default=(),
        description="The questions and decisions the task's runs asked, with the answers "
        "received (an answer is None while its question is open).",
    )


class ProgressRequest(Request):
    """``POST /api/v1/tasks/{id}/progress``: how far the run is, from its MCP server."""

    percent: int = Field(ge=0, le=100, description="How much of the task is done, 0-100.")
    step: str = Field(min_length=1, max_length=200, description="What the run is doing now.")


class AskRequest(Request):
    """``POST /api/v1/tasks/{id}/questions``: a question or decision, from the run's MCP server."""

    kind: QuestionKind = Field(
        default=QuestionKind.QUESTION,
        description="question (answered in words) or decision (one of `options` is chosen).",
    )
    text: str = Field(
        min_length=1, max_length=QUESTION_MAX, description="The question, for people to read."
    )
    options: tuple[Annotated[str, Field(min_length=1, max_length=OPTION_MAX)], ...] = Field(
        default=(), max_length=OPTIONS_MAX, description="A decision's options (2 or more)."
    )
    role: RoleName | None = Field(
        default=None,
        description="The role to ask (an agent of that role takes the question as a task); "
        "unset: the repository's maintainers.",
    )


class AskAnswer(Answer):
    question: Question
    instruction: str = Field(description="What the run should do now.")


class TaskQuery(Query):
    """``GET /api/v1/tasks``' filters."""

    state: tuple[TaskState, ...] = Field(
        default=(), description="Only tasks in this state; repeat for several."
    )
    repo: str | None = Field(
        default=None, description="Only tasks of this repository (owner/name)."
    )


class TaskList(Answer):
    """``GET /api/v1/tasks``: live tasks in queue order, each with why it waits or failed."""

    tasks: tuple[Task, ...]


class DequeueRequest(Request):
    """``POST /api/v1/tasks/dequeue`` (an empty body will do)."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )


class TaskHandout(Answer):
    """A task given to the calling agent, with what it needs to work on it.

    There is no prompt in it: the worker builds it from the issue with its own Forgejo token
    (the daemon's HTTP layer never calls Forgejo, and the issue is read fresh at run time).
    """

    task: Task
    lease_generation: int = Field(description="Present it with every status update and receipt.")
    attempt: int
    repo: str = Field(description="owner/name")
    issue_number: int
    issue_url: str
    branch: str = Field(description="The branch to work on and push: task/<id>-<slug>.")
    base_branch: str | None = Field(
        description="The branch to start from and open the pull request against; null: the "
        "repository's default branch (read it from Forgejo)."
    )
    clone_url: str = Field(description="git over HTTP: {forgejo.url}/{owner}/{name}.git")
    forgejo_url: str = Field(description="The Forgejo instance, for its API (…/api/v1).")
    deadline_at: datetime | None = Field(description="When the task fails if still running.")
    session_id: str | None = Field(description="The agent CLI session of an earlier attempt.")
    task_token: str | None = Field(
        default=None,
        description="The run's task token for `agent-fleet mcp` (docs/mcp.md): acts for this "
        "task under this lease only.",
    )


class ArtifactItem(Request):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://", max_length=2000)
    kind: str = Field(default="link", min_length=1, max_length=50)


class ReceiptFields(Request):
    """What a receipt says, in ``/receipts`` and ``/tasks/{id}/complete`` alike."""

    receipt_id: ReceiptIdText
    lease_generation: int = Field(ge=1, description="The lease the task was assigned under.")
    branch: str = Field(default="", max_length=255)
    commits: tuple[CommitSha, ...] = Field(default=(), max_length=1000)
    summary: str = Field(default="", max_length=SUMMARY_MAX)
    artifacts: tuple[ArtifactItem, ...] = Field(default=(), max_length=100)
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    tokens: int = Field(default=0, ge=0)
    duration_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    session_id: str | None = Field(default=None, max_length=200)


class ReceiptRequest(ReceiptFields):
    """``POST /api/v1/receipts``: what the agent did for one task, under its lease."""

    task_id: str = Field(min_length=1, max_length=100)
    pr_number: int | None = Field(
        default=None,
        ge=1,
        description="The pull request opened for the task (the task goes to review); null: "
        "a task without one (it completes, as with /tasks/{id}/complete).",
    )


class CompleteRequest(ReceiptFields):
    """``POST /api/v1/tasks/{id}/complete``: finish a task that produces no pull request."""


class ReceiptAnswer(Answer):
    """A receipt's answer; the same for every retry of the same receipt."""

    receipt_id: str
    task_id: str
    pr_number: int | None
    task_state: TaskState = Field(description="Where the receipt took the task.")
    verified: bool = Field(
        description=(
            "Whether the claims were checked against Forgejo: never at hand-in (the receipts "
            "controller checks them before the task is completed), so false."
        )
    )
    submitted_at: datetime = Field(description="When the receipt was first accepted.")


class ErrorAnswer(Answer):
    """Every error: a stable machine-readable code and a sentence for people."""

    error: str
    message: str


_REFUSED_BY_STATUS: Mapping[int, type[RefusedError]] = {
    401: UnauthenticatedError,
    403: ForbiddenError,
    409: ConflictError,
}


def refusal(status: int, raw: bytes, *, url: str) -> FleetError:
    """The error an error answer (:class:`ErrorAnswer`) stands for, with the daemon's code and
    message: 401 :class:`UnauthenticatedError`, 403 :class:`ForbiddenError`, 409
    :class:`ConflictError`, 404 :class:`NotFoundError`, other 4xx :class:`RefusedError`;
    429 and 5xx :class:`TransientError`."""
    try:
        answer = ErrorAnswer.model_validate(json.loads(raw))
        code, message = answer.error, answer.message
    except ValueError:  # not JSON, or not an error answer
        code, message = f"http_{status}", " ".join(raw.decode(errors="replace").split())[:200]
        message = message or f"HTTP {status}"
    if status == 429 or status >= 500:
        return TransientError(f"{url}: {status} {code}: {message}")
    if status == 404:
        return NotFoundError(f"{url}: {code}: {message}")
    return _REFUSED_BY_STATUS.get(status, RefusedError)(code, f"{url}: {message}")


__all__ = [
    "AGENT_ID_MAX",
    "AGENT_ID_PATTERN",
    "AgentIdText",
    "AgentList",
    "AgentMetadata",
    "AgentQuery",
    "AgentStatsSummary",
    "AgentSummary",
    "Answer",
    "ArtifactItem",
    "CompleteRequest",
    "CurrentTask",
    "DequeueRequest",
    "DeregisterAnswer",
    "DeregisterRequest",
    "DrainRequest",
    "ErrorAnswer",
    "HeartbeatAnswer",
    "HeartbeatRequest",
    "HeldTaskItem",
    "ProgressRequest",
    "Query",
    "ReceiptAnswer",
    "ReceiptFields",
    "ReceiptRequest",
    "RegisterAnswer",
    "RegisterRequest",
    "Request",
    "StopItem",
    "TaskBrief",
    "TaskDetail",
    "TaskHandout",
    "TaskList",
    "TaskQuery",
    "TaskStatusAnswer",
    "TaskStatusRequest",
    "refusal",
]
