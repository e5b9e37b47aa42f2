"""Domain models: Agent, Task, Receipt, Artifact, TaskEvent, and the task state machine.

Every model is a frozen pydantic model; a change produces a new value. The state machine is a
pure function, :func:`transition`, which refuses a move the machine does not allow and returns
the new task together with the :class:`TaskEvent` that records it. Callers (controllers, the
agent API) persist both through :mod:`reconciler.store`.

Task ids are derived from the issue they come from (:func:`task_id_for`), so a reconciler that
lost its local state rebuilds the same ids from Forgejo in one resync.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reconciler.errors import IllegalTransitionError

TaskId = NewType("TaskId", str)
AgentId = NewType("AgentId", str)
ReceiptId = NewType("ReceiptId", str)
RepoName = NewType("RepoName", str)
"""A repository as ``owner/name``."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return value


# --- task states ----------------------------------------------------------------------------


class TaskState(StrEnum):
    CREATED = "created"
    ASSIGNED = "assigned"
    RUNNING = "running"
    REVIEW_PENDING = "review_pending"
    COMPLETED = "completed"
    FAILED = "failed"
    AGENT_LOST = "agent_lost"
    CANCELLED = "cancelled"


ALLOWED_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    # `→ CREATED` is a requeue: the task waits for an agent again.
    TaskState.CREATED: frozenset({TaskState.ASSIGNED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.ASSIGNED: frozenset(
        {
            TaskState.RUNNING,
            TaskState.CREATED,
            TaskState.FAILED,
            TaskState.AGENT_LOST,
            TaskState.CANCELLED,
        }
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.REVIEW_PENDING,
            # A task that produces no pull request completes from `running` with a receipt.
            TaskState.COMPLETED,
            TaskState.CREATED,
            TaskState.FAILED,
            TaskState.AGENT_LOST,
            TaskState.CANCELLED,
        }
    ),
    TaskState.REVIEW_PENDING: frozenset(
        {
            TaskState.COMPLETED,
            # Changes requested: the same agent gets a new attempt with a new lease.
            TaskState.ASSIGNED,
            TaskState.CREATED,
            TaskState.FAILED,
            TaskState.AGENT_LOST,
            TaskState.CANCELLED,
        }
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset({TaskState.CREATED, TaskState.CANCELLED}),
    TaskState.AGENT_LOST: frozenset({TaskState.CREATED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.CANCELLED: frozenset({TaskState.CREATED}),
}

TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.CANCELLED})
"""States from which a task only leaves by an explicit person's action (or never)."""

ACTIVE_STATES = frozenset({TaskState.ASSIGNED, TaskState.RUNNING, TaskState.REVIEW_PENDING})
"""States in which an agent holds the task's lease."""

BUSY_STATES = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})
"""States in which a task takes one of its agent's slots; a task in review waits for people."""


def is_transition_allowed(source: TaskState, target: TaskState) -> bool:
    return target in ALLOWED_TRANSITIONS[source]


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sort key: lower runs first."""
        return {"high": 0, "medium": 1, "low": 2}[self.value]


# --- agents ---------------------------------------------------------------------------------


class AgentStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


class ExecutionMode(StrEnum):
    SSH = "ssh"
    PULL = "pull"


class AgentStats(_Frozen):
    tasks_completed: int = 0
    errors: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    estimated_cost_usd: float = Field(default=0.0, ge=0)
    """The part of ``cost_usd`` estimated from tokens and ``api.token_prices`` (the CLI
    reported no cost, as Codex does)."""
    total_duration_s: float = 0.0
    online_seconds: float = Field(default=0.0, ge=0)
    """Time spent online or draining before ``Agent.status_since``: uptime is computed from
    status changes, never from heartbeats (those are not written durably)."""

    @property
    def average_duration_s(self) -> float | None:
        return self.total_duration_s / self.tasks_completed if self.tasks_completed else None


class Agent(_Frozen):
    id: AgentId
    type: str = Field(description="claude-code, codex-cli, hermes, openclaw, acp, or any string")
    hostname: str = ""
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = Field(default=1, ge=1)
    mode: ExecutionMode = ExecutionMode.PULL
    metadata: dict[str, str] = Field(default_factory=dict)
    status: AgentStatus = AgentStatus.ONLINE
    status_reason: str = ""
    token_hash: str = ""
    registered_at: datetime
    last_heartbeat_at: datetime | None = None
    stats: AgentStats = AgentStats()
    status_since: datetime | None = None
    """When ``status`` last changed (None: since registration)."""
    drain_requested: bool = False
    """The agent or an operator asked it to drain: it keeps its tasks and takes no new ones,
    and comes back draining (not online) after an outage."""
    deregistered: bool = False
    """The agent left the fleet; it must register again to come back."""
    consecutive_failures: int = Field(default=0, ge=0)
    """ssh hosts: health checks failed in a row (0 after a passing check)."""
    restarted_in_streak: bool = False
    """ssh hosts: the restart command already ran during the current failure streak."""
    forgejo_login: str = ""
    """The agent's own Forgejo account, if it has one: its tasks' issues are assigned to it."""
    failing_runs: int = Field(default=0, ge=0)
    """Runs that failed in a row (0 after a successful one); see reconciler/fleet/health.py."""
    auto_drained: bool = False
    """The drain was made by ``api.drain_after_failed_runs``; a successful run ends it."""

    _check_times = field_validator("registered_at", "last_heartbeat_at", "status_since")(_aware)

    def covers(self, *, role: str | None, capabilities: tuple[str, ...]) -> bool:
        """Whether this agent has the role (if any) and every capability required."""
        if role is not None and role not in self.roles:
            return False
        return all(c in self.capabilities for c in capabilities)


# --- tasks ----------------------------------------------------------------------------------

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")


def task_id_for(repo: str, number: int) -> TaskId:
    """The stable id of the task born from issue ``number`` of ``repo``.

    The issue number keeps it readable; a short hash of the repository keeps it unique across
    repositories and safe in URLs and branch names: ``12-3f9a1c2b``.
    """
    digest = hashlib.sha1(repo.lower().encode()).hexdigest()[:8]
    return TaskId(f"{number}-{digest}")


def slugify(text: str, *, max_length: int = 40) -> str:
    slug = _SLUG_UNSAFE.sub("-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "task"


def branch_for(task_id: TaskId, title: str) -> str:
    """The branch an agent works on: ``task/<task-id>-<slug>``."""
    return f"task/{task_id}-{slugify(title)}"


_BRANCH = re.compile(r"^task/(\d+-[0-9a-f]{8})(?:-|$)")


def task_id_from_branch(branch: str) -> TaskId | None:
    """The task id a ``task/<id>-<slug>`` branch names, or None for any other branch."""
    match = _BRANCH.match(branch)
    return TaskId(match.group(1)) if match else None


class CheckOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    PENDING = "pending"
    """Not decided yet (a required status still running): checked again later."""


class ReceiptCheck(_Frozen):
    """One claim of a receipt checked against Forgejo, and what Forgejo showed."""

    name: str = Field(
        description="pull_request, repository, branch, commits, diff, or status:<context>"
    )
    outcome: CheckOutcome
    detail: str = Field(default="", description="What was found, in words a person can act on.")

    @property
    def passed(self) -> bool:
        return self.outcome is CheckOutcome.PASSED


class QuestionKind(StrEnum):
    QUESTION = "question"
    DECISION = "decision"


class Question(_Frozen):
    """A question or decision a task's run asked through the fleet's tools (docs/mcp.md).

    Asked under a lease; opened as an issue the task depends on by the assignment controller
    (``issue_number`` once found); answered when that issue is closed (``answer``)."""

    number: int = Field(ge=1, description="1, 2, … within the task.")
    kind: QuestionKind = QuestionKind.QUESTION
    text: str = Field(min_length=1, description="The agent's question: agent-written text.")
    options: tuple[str, ...] = Field(default=(), description="A decision's options.")
    role: str | None = Field(
        default=None, description="The role asked; None: the repository's maintainers."
    )
    asked_at: datetime
    asked_by: AgentId
    lease_generation: int = Field(ge=1)
    issue_number: int | None = None
    answer: str | None = None
    """The answer once the question's issue is closed (None: not answered yet)."""
    answered_by: str = ""
    chosen: int | None = Field(default=None, description="A decision's option, counted from 1.")
    asker_trusted: bool = False
    """The asking agent holds a role of ``mcp.trusted_roles``: its text needs no approval."""

    _check_times = field_validator("asked_at")(_aware)


class Task(_Frozen):
    id: TaskId
    repo: RepoName
    issue_number: int
    title: str
    state: TaskState = TaskState.CREATED
    priority: Priority = Priority.MEDIUM
    required_role: str | None = None
    required_capabilities: tuple[str, ...] = ()
    pinned_agent: AgentId | None = None
    on_hold: bool = False
    agent_id: AgentId | None = None
    lease_generation: int = 0
    attempt: int = 0
    review_count: int = 0
    branch: str = ""
    pr_number: int | None = None
    session_id: str | None = None
    created_at: datetime
    updated_at: datetime
    state_since: datetime | None = None
    """When the task entered its state (None: recorded before this was kept; ``created_at``
    stands in for a task still waiting in its first state)."""
    last_activity_at: datetime | None = None
    deadline_at: datetime | None = None
    not_before: datetime | None = None
    wait_reason: str = ""
    failure_reason: str = ""
    failure_retryable: bool = False
    """Whether the failure is worth another attempt (a run that failed or timed out) rather
    than a verdict (review rounds exhausted, a person's decision)."""
    comment_digest: str = ""
    """Digest of the task's status comment as last written, so an unchanged comment costs no
    Forgejo call; empty means it must be checked (e.g. after local state was lost)."""
    previous_agent: AgentId | None = None
    """The agent that worked on the task before changes were requested in review: placement
    gives the next attempt back to it when it fits and has a free slot."""
    review_feedback: tuple[str, ...] = ()
    """The review comments (trusted reviewers only) the next attempt's prompt must answer."""
    reviews_seen: tuple[int, ...] = ()
    """Ids of the pull request's reviews already acted on or recorded, so each counts once."""
    branch_head: str = ""
    """The tip of the task's branch as last seen: a new tip is activity on the task."""
    sent_back_head: str = ""
    """The pull request's head commit when changes were last requested: the task goes back
    to review only with newer work on it."""
    checks: tuple[ReceiptCheck, ...] = ()
    """The verification of the receipt that completed or failed the task, one entry per claim
    (every verification, passed or not, is in the task's events, kind ``verification``)."""
    result_digest: str = ""
    """Digest of the result comment as last written (empty: not written by this store)."""
    budget_usd: float | None = Field(default=None, gt=0)
    """The task's dollar limit (``[budgets]`` role default or a budget label); None: none."""
    budget_tokens: int | None = Field(default=None, gt=0)
    """The task's token limit (``[budgets]`` role default or a budget label); None: none."""
    spent_usd: float = Field(default=0.0, ge=0)
    """What the task's runs cost so far, over every attempt (receipts and failed runs)."""
    spent_tokens: int = Field(default=0, ge=0)
    """Tokens the task's runs used so far, over every attempt."""
    spent_estimated: bool = False
    """Some of ``spent_usd`` was estimated from tokens and ``api.token_prices``."""
    over_budget: bool = False
    """The task failed because a run passed its budget: it is retried only when the budget
    is raised (a budget label allowing more)."""
    questions: tuple[Question, ...] = ()
    """Questions and decisions its runs asked (docs/mcp.md), oldest first."""
    question_depth: int = Field(default=0, ge=0)
    """0 for an issue people opened; n + 1 for a question asked by a task at depth n."""

    _check_times = field_validator(
        "created_at", "updated_at", "last_activity_at", "deadline_at", "not_before"
    )(_aware)

    def changed(self, *, now: datetime, **changes: object) -> Task:
        """A copy with ``changes`` applied and ``updated_at`` set to ``now``, validated again."""
        return Task.model_validate({**self.model_dump(), **changes, "updated_at": now})

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_held(self) -> bool:
        """On hold and not finished: an issue it depends on closing may release it
        (``fleet/holds.py``); the store keeps these in an index (``Store.has_held_tasks``)."""
        return self.on_hold and not self.is_terminal


RECONCILER_ACTOR = "reconciler"
"""The actor of every change the controllers make (an agent is ``agent:<id>``)."""


class TaskEvent(_Frozen):
    """One line of a task's history: a state transition, or a note (progress, verification)."""

    task_id: TaskId
    at: datetime
    actor: str = Field(description="who caused it: 'reconciler', 'agent:<id>', 'forgejo:<login>'")
    kind: str = Field(default="transition", description="transition, progress, receipt, ...")
    from_state: TaskState | None = None
    to_state: TaskState | None = None
    reason: str = ""
    data: dict[str, Any] = Field(default_factory=dict)

    _check_times = field_validator("at")(_aware)


def transition(
    task: Task,
    target: TaskState,
    *,
    now: datetime,
    actor: str,
    reason: str = "",
    **changes: Any,
) -> tuple[Task, TaskEvent]:
    """Move ``task`` to ``target``; return the new task and the event recording the move.

    ``changes`` are other fields to set in the same step (``agent_id``, ``failure_reason``…).
    Raises :class:`IllegalTransitionError` when the state machine does not allow the move.
    """
    if not is_transition_allowed(task.state, target):
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[task.state])) or "nothing (final state)"
        raise IllegalTransitionError(
            f"task {task.id} cannot go from {task.state} to {target}"
            f"{f' ({reason})' if reason else ''}; from {task.state} it may go to: {allowed}"
        )
    if "state" in changes or "id" in changes:
        raise ValueError("transition() sets the state itself; the id never changes")
    # Validated (model_copy would not be), so a bad change fails here, not later in the store.
    updated = Task.model_validate(
        {**task.model_dump(), **changes, "state": target, "updated_at": now, "state_since": now}
    )
    event = TaskEvent(
        task_id=task.id,
        at=now,
        actor=actor,
        kind="transition",
        from_state=task.state,
        to_state=target,
        reason=reason,
        data={k: _jsonable(v) for k, v in changes.items()},
    )
    return updated, event


def assign(
    task: Task, agent_id: AgentId, *, now: datetime, actor: str, reason: str = ""
) -> tuple[Task, TaskEvent]:
    """Give ``task`` to ``agent_id`` under a new lease generation (a new attempt)."""
    return transition(
        task,
        TaskState.ASSIGNED,
        now=now,
        actor=actor,
        reason=reason or f"assigned to {agent_id}",
        agent_id=agent_id,
        lease_generation=task.lease_generation + 1,
        attempt=task.attempt + 1,
        wait_reason="",
        not_before=None,
    )


def requeue(task: Task, *, now: datetime, actor: str, reason: str) -> tuple[Task, TaskEvent]:
    """Send ``task`` back to the queue. Its lease generation is kept, so the next assignment
    bumps it past any lease the previous agent still holds."""
    return transition(task, TaskState.CREATED, now=now, actor=actor, reason=reason, agent_id=None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


# --- receipts -------------------------------------------------------------------------------


class Artifact(_Frozen):
    name: str
    url: str
    kind: str = "link"


class Receipt(_Frozen):
    """What an agent claims it did. Nothing here is trusted until verified against Forgejo."""

    id: ReceiptId
    task_id: TaskId
    agent_id: AgentId
    lease_generation: int = Field(ge=1)
    pr_number: int | None = None
    branch: str = ""
    commits: tuple[str, ...] = ()
    summary: str = ""
    artifacts: tuple[Artifact, ...] = ()
    cost_usd: float = Field(default=0.0, ge=0)
    tokens: int = Field(default=0, ge=0)
    duration_s: float = Field(default=0.0, ge=0)
    session_id: str | None = None
    submitted_at: datetime
    cost_estimated: bool = False
    """``cost_usd`` was computed from ``tokens`` and ``api.token_prices``: the CLI reported none."""

    _check_times = field_validator("submitted_at")(_aware)
