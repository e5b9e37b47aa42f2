"""How agents look from outside: the agent API's JSON shapes, and the ``agent-fleet agents`` table.

The agent API (``webhook/agents_api.py``) answers with these models, the OpenAPI document
(``webhook/openapi.py``) is generated from them, and the CLI reads them back from the daemon
with :func:`fetch_agents` and prints :func:`agents_table`. One definition, so the three cannot
drift apart.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RefusedError,
    TransientError,
    UnauthenticatedError,
)
from reconciler.fleet.agents import AgentView
from reconciler.models import BUSY_STATES, AgentStatus, ExecutionMode, Task, TaskState
from reconciler.settings import WebhookSettings

SKILL = r"[A-Za-z0-9][A-Za-z0-9_.:+-]*"
SkillName = Annotated[str, Field(pattern=f"^{SKILL}$", max_length=64)]
_SKILLS_SEPARATOR = ","
_METADATA_KEYS = ("version", "workdir", "llm_provider", "llm_model")


class _Shape(BaseModel):
    # Answers ignore fields they do not know, so an older CLI reads a newer daemon.
    model_config = ConfigDict(frozen=True, extra="ignore")


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


class CurrentTask(_Shape):
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


class AgentStatsSummary(_Shape):
    tasks_completed: int
    errors: int
    average_duration_s: float | None
    tokens: int
    cost_usd: float
    uptime_percent: float = Field(
        description="Share of the time since registration spent online or draining."
    )


class AgentSummary(_Shape):
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
    last_heartbeat_at: datetime | None
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
                uptime_percent=view.uptime_percent,
            ),
            consecutive_failures=agent.consecutive_failures,
        )


class AgentList(_Shape):
    """``GET /api/v1/agents``."""

    agents: tuple[AgentSummary, ...]


# --- the table -------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h10m``, ``3d04h``: short, and exact enough for people."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


_HEADER = ("ID", "STATUS", "MODE", "TYPE", "HOST", "ROLES", "CAPABILITIES", "TASKS", "HEARD", "UPTIME", "WHY")  # fmt: skip


def agents_table(agents: Sequence[AgentSummary], *, now: datetime) -> str:
    """The agents as a text table, one line each, with why an agent is offline or draining."""
    if not agents:
        return "no agents registered"
    rows = [_HEADER]
    for agent in agents:
        heard = (
            f"{format_duration((now - agent.last_heartbeat_at).total_seconds())} ago"
            if agent.last_heartbeat_at is not None
            else "never"
        )
        rows.append(
            (
                agent.id,
                agent.status.value,
                agent.mode.value,
                agent.type,
                agent.hostname or "-",
                ",".join(agent.roles) or "-",
                ",".join(agent.capabilities) or "-",
                # Slots in use: tasks in review hold a lease but wait for people, not the agent.
                f"{sum(t.state in BUSY_STATES for t in agent.current_tasks)}/{agent.max_concurrency}",
                heard,
                f"{agent.stats.uptime_percent:.1f}%",
                agent.status_reason or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
        for row in rows
    )


# --- reading them from the daemon ------------------------------------------------------------


def daemon_url(webhook: WebhookSettings) -> str:
    """Where a local CLI reaches the daemon configured with ``webhook``; a wildcard bind
    address is reached on loopback. Raises ValueError for port 0 (a port picked at start)."""
    if webhook.port == 0:
        raise ValueError(
            "webhook.port is 0, so the daemon picked its port at start (see its log); "
            "give the daemon's URL"
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(webhook.bind, webhook.bind)
    return f"http://{f'[{host}]' if ':' in host else host}:{webhook.port}"


def agents_json(agents: Sequence[AgentSummary]) -> str:
    """The agents as ``agent-fleet agents --json`` prints them: the API's own JSON."""
    return AgentList(agents=tuple(agents)).model_dump_json(indent=2)


_BY_STATUS: Mapping[int, type[RefusedError]] = {
    401: UnauthenticatedError,
    403: ForbiddenError,
    409: ConflictError,
}


def fetch_agents(
    server: str,
    *,
    token: str,
    capabilities: Sequence[str] = (),
    status: AgentStatus | None = None,
    role: str | None = None,
    timeout: float = 10.0,
) -> list[AgentSummary]:
    """``GET /api/v1/agents`` from a running daemon with the operator token.

    Raises :class:`RefusedError` (401/403…) or :class:`NotFoundError` with the daemon's own
    message, and :class:`TransientError` when the daemon cannot be reached.
    """
    query = [("capability", c) for c in capabilities]
    if status is not None:
        query.append(("status", status.value))
    if role is not None:
        query.append(("role", role))
    url, body = get_json(server, "/api/v1/agents", query, token=token, timeout=timeout)
    try:
        return list(AgentList.model_validate_json(body).agents)
    except ValidationError as exc:
        raise TransientError(f"{url} answered something that is not an agent list: {exc}") from None


class TaskList(_Shape):
    tasks: tuple[Task, ...]


def fetch_tasks(
    server: str,
    *,
    token: str,
    states: Sequence[TaskState] = (),
    repo: str | None = None,
    timeout: float = 10.0,
) -> list[Task]:
    """``GET /api/v1/tasks`` from a running daemon with the operator token."""
    query = [("state", s.value) for s in states]
    if repo is not None:
        query.append(("repo", repo))
    url, body = get_json(server, "/api/v1/tasks", query, token=token, timeout=timeout)
    try:
        return list(TaskList.model_validate_json(body).tasks)
    except ValidationError as exc:
        raise TransientError(f"{url} answered something that is not a task list: {exc}") from None


def task_why(task: Task) -> str:
    """What a live task is doing, or why it waits, or why it failed: the WHY column of
    ``agent-fleet status`` and of the fleet page."""
    if task.state is TaskState.FAILED:
        return task.failure_reason
    if task.state is TaskState.CREATED:
        return task.wait_reason or "waiting to be placed"
    if task.pr_number is not None:
        return f"PR #{task.pr_number} on {task.branch}"
    return f"attempt {task.attempt} on {task.branch}"


def status_report(tasks: Sequence[Task], *, now: datetime) -> str:
    """``agent-fleet status``: how many tasks are in each state, then each live task with
    its agent, or why it waits, or why it failed."""
    if not tasks:
        return "no live tasks"
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    lines = ["  ".join(f"{state}: {n}" for state, n in sorted(counts.items())), ""]
    rows = [("TASK", "ISSUE", "PRIORITY", "STATE", "AGENT", "AGE", "WHY / WHAT")]
    for task in tasks:
        rows.append(
            (
                task.id,
                f"{task.repo}#{task.issue_number}",
                task.priority.value,
                task.state.value,
                task.agent_id or "-",
                format_duration((now - task.created_at).total_seconds()),
                task_why(task),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def get_json(
    server: str, path: str, query: list[tuple[str, str]], *, token: str, timeout: float
) -> tuple[str, bytes]:
    """GET one API path of a running daemon with the operator token; the URL and the raw body.

    Raises :class:`RefusedError` (401/403…) or :class:`NotFoundError` with the daemon's own
    message, and :class:`TransientError` when the daemon cannot be reached.
    """
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"the daemon's address must be an http(s) URL, not {server!r}")
    url = f"{server.rstrip('/')}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        code, message = _error_of(exc.read(), fallback=f"HTTP {exc.code}")
        if exc.code == 404:
            raise NotFoundError(f"{url}: {message}") from None
        raise _BY_STATUS.get(exc.code, RefusedError)(code, f"{url}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"cannot reach the agent-fleet daemon at {server}: {reason}") from None
    return url, body


def _error_of(body: bytes, *, fallback: str) -> tuple[str, str]:
    try:
        data: Any = json.loads(body)
        return str(data["error"]), str(data.get("message", ""))
    except (ValueError, KeyError, TypeError):
        text = re.sub(r"\s+", " ", body.decode(errors="replace")).strip()[:200]
        return "http_error", text or fallback


__all__ = [
    "AgentList",
    "AgentMetadata",
    "AgentStatsSummary",
    "AgentSummary",
    "CurrentTask",
    "agents_json",
    "agents_table",
    "daemon_url",
    "fetch_agents",
    "fetch_tasks",
    "format_duration",
    "get_json",
    "status_report",
    "task_why",
]
