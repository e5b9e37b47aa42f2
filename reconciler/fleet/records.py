"""The registry's values and pure rules: what :class:`~reconciler.fleet.agents.Fleet` takes and
returns, registry tokens, status changes, uptime and the liveness grace period.

No I/O and no clock: the registry service (``reconciler/fleet/agents.py``), the registry
controller (``controllers/registry.py``), the pull queue (``reconciler/fleet/queue.py``) and the
console views import from here.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.models import Agent, AgentStatus, Task, TaskId
from reconciler.settings import ApiSettings

TOKEN_BYTES = 32


def actor_for(agent_id: str) -> str:
    """How task events name an agent: ``agent:<id>``."""
    return f"agent:{agent_id}"


def issue_token() -> str:
    """A new registry token: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What the store keeps of a token.

    SHA-256, not a slow password hash: the token is 256 random bits, so there is no dictionary
    to try and a brute force is hopeless either way; a slow hash only protects low-entropy
    secrets such as passwords, and would cost milliseconds on every request.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def canonical_agent_id(agent_id: str) -> str:
    """What an agent id is compared by: case folded, trailing dots dropped, ``_`` read as
    ``-``. Two ids with the same canonical form look alike (``build-01``, ``BUILD-01``,
    ``build_01.``), and only one of them may exist, so no agent can pass for another or for
    an ssh host in a listing, a label or a log."""
    return agent_id.casefold().rstrip(".").replace("_", "-")


def grace_period(api: ApiSettings) -> timedelta:
    """How long an agent may stay silent before it is offline."""
    return timedelta(seconds=api.missed_heartbeats * api.heartbeat_interval)


def with_status(agent: Agent, status: AgentStatus, *, reason: str, now: datetime) -> Agent:
    """``agent`` in ``status``; time spent up (online or draining) so far is added to its
    stats when it leaves an up status, which is all uptime needs."""
    if status is agent.status:
        return agent.model_copy(update={"status_reason": reason})
    since = agent.status_since or agent.registered_at
    stats = agent.stats
    if agent.status is not AgentStatus.OFFLINE:
        up = max((now - since).total_seconds(), 0.0)
        stats = stats.model_copy(update={"online_seconds": stats.online_seconds + up})
    return agent.model_copy(
        update={"status": status, "status_reason": reason, "status_since": now, "stats": stats}
    )


def uptime_percent(agent: Agent, *, now: datetime) -> float:
    """Share of the time since registration the agent was online or draining, in percent."""
    total = (now - agent.registered_at).total_seconds()
    up = agent.stats.online_seconds
    if agent.status is not AgentStatus.OFFLINE:
        up += max((now - (agent.status_since or agent.registered_at)).total_seconds(), 0.0)
    if total <= 0:
        return 0.0 if agent.status is AgentStatus.OFFLINE else 100.0
    return round(min(up / total, 1.0) * 100, 1)


# --- what goes in and out --------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What an agent declares about itself when it registers."""

    type: str
    hostname: str = ""
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = 1
    metadata: Mapping[str, str] | None = None
    forgejo_login: str = ""


@dataclass(frozen=True)
class Registration:
    """A registration's outcome. ``token`` is shown this once; the store keeps its digest."""

    agent: Agent
    token: str
    created: bool


@dataclass(frozen=True)
class HeldTask:
    """A task an agent says it is working on, under the lease generation it was given."""

    task_id: TaskId
    lease_generation: int


@dataclass(frozen=True)
class Pulse:
    """An agent's last heartbeat, kept in memory only."""

    at: datetime
    load: float | None = None
    version: str = ""
    tasks: tuple[HeldTask, ...] = ()


@dataclass(frozen=True)
class StopOrder:
    """A task a heartbeat's reply tells the agent to stop, with a stable ``code`` and why."""

    task_id: TaskId
    code: str
    reason: str


@dataclass(frozen=True)
class HeartbeatReply:
    agent: Agent
    stop: tuple[StopOrder, ...]


@dataclass(frozen=True)
class AgentView:
    """One agent as the listings show it: the record, its soft state and its current tasks."""

    agent: Agent
    last_heartbeat_at: datetime | None
    load: float | None
    version: str
    current_tasks: tuple[Task, ...]
    uptime_percent: float


@dataclass(frozen=True)
class StatusUpdate:
    """A status update's outcome: the task as it is now, and whether it changed."""

    task: Task
    changed: bool


__all__ = [
    "TOKEN_BYTES",
    "AgentView",
    "HeartbeatReply",
    "HeldTask",
    "Profile",
    "Pulse",
    "Registration",
    "StatusUpdate",
    "StopOrder",
    "actor_for",
    "grace_period",
    "issue_token",
    "token_digest",
    "uptime_percent",
    "with_status",
]
