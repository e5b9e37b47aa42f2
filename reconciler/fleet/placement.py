"""Placing tasks on agents: queue order, matching, load, and why a task waits. Pure functions.

Used by the assignment controller (which places tasks on ssh agents itself) and by the agent
API's dequeue (where a pull agent takes the best task it can run). Both see the same rules:

* tasks wait in priority order, then age (``queue_order``);
* a task fits an agent that is online, not draining, has the required role and every
  required capability, and has a free slot (``max_concurrency`` minus its active tasks);
  a pinned task (``fleet/assign:<agent>``) fits only that agent;
* among fitting agents the least loaded wins (by share of slots used, then id) — except that
  a task sent back by a review goes to the agent that worked on it before (``previous_agent``)
  when that agent fits and has a free slot: it knows the branch and may resume its session;
* a task ahead in the queue takes a slot before a task behind it, so a low-priority task
  never jumps a high-priority one for the last free slot;
* when a task cannot be placed, ``Placement.reason`` says why in words a person can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.models import (
    BUSY_STATES,
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskState,
)
from reconciler.text import format_wait


@dataclass(frozen=True)
class Placement:
    """Where a task goes: an agent, or the reason it waits."""

    agent: Agent | None
    reason: str = ""

    @property
    def placed(self) -> bool:
        return self.agent is not None


def backoff_reason(task: Task, *, now: datetime) -> str:
    """Why a task backing off waits, and when it is tried next, as of ``now``."""
    when = format_wait(task.not_before, now=now) if task.not_before is not None else "now"
    return f"backing off after attempt {task.attempt}: next try {when}"


def queue_order(task: Task) -> tuple[int, datetime, str]:
    """Sort key: high priority first, then the oldest, then by id (stable)."""
    return (task.priority.rank, task.created_at, task.id)


def is_waiting(task: Task, *, now: datetime) -> bool:
    """Whether a task is in the queue and may be placed now (not held, not backing off)."""
    return (
        task.state is TaskState.CREATED
        and not task.on_hold
        and (task.not_before is None or task.not_before <= now)
    )


def active_load(tasks: Iterable[Task]) -> dict[AgentId, int]:
    """How many tasks each agent is working on right now (assigned or running)."""
    load: dict[AgentId, int] = {}
    for task in tasks:
        if task.state in BUSY_STATES and task.agent_id is not None:
            load[task.agent_id] = load.get(task.agent_id, 0) + 1
    return load


def fits(task: Task, agent: Agent) -> bool:
    """Role, capabilities and pin — everything but availability and load."""
    if task.pinned_agent is not None and agent.id != task.pinned_agent:
        return False
    return agent.covers(role=task.required_role, capabilities=task.required_capabilities)


def _requirement(task: Task) -> str:
    parts = [f"role {task.required_role}"] if task.required_role else []
    parts += list(task.required_capabilities)
    return " and ".join(parts) if parts else "no particular role or capability"


def _free_slots(agents: Sequence[Agent], load: Mapping[AgentId, int]) -> dict[AgentId, int]:
    return {a.id: max(a.max_concurrency - load.get(a.id, 0), 0) for a in agents}


def _least_loaded(agents: Sequence[Agent], load: Mapping[AgentId, int]) -> Agent:
    return min(
        agents, key=lambda a: (load.get(a.id, 0) / a.max_concurrency, load.get(a.id, 0), a.id)
    )


def _preferred(task: Task, agents: Sequence[Agent], load: Mapping[AgentId, int]) -> Agent:
    """The agent ``task`` goes to among ``agents`` (each fits it and has a free slot)."""
    previous = next((a for a in agents if a.id == task.previous_agent), None)
    return previous if previous is not None else _least_loaded(agents, load)


AT_CAPACITY = "at capacity"
PULL_PICKUP = "waiting for a pull agent to take it"


def is_queue_wait(reason: str) -> bool:
    """Whether ``reason`` (from :func:`place`) is a wait for a free slot in a busy queue:
    every fitting agent is at capacity, or a pull agent with a free slot has yet to ask. Such
    a wait ends by itself; any other reason needs a change (an agent, a label, time)."""
    return reason.endswith(AT_CAPACITY) or reason.startswith(PULL_PICKUP)


def place(
    task: Task,
    *,
    agents: Sequence[Agent],
    tasks: Sequence[Task],
    now: datetime,
    modes: frozenset[ExecutionMode] = frozenset(ExecutionMode),
) -> Placement:
    """Decide where ``task`` goes given every known agent and every task the store tracks.

    ``modes`` restricts which agents may be given the task (the assignment controller places
    on ssh agents; pull agents take tasks themselves through dequeue). A task that fits only a
    pull agent with a free slot waits for it, and the reason says so.
    """
    if task.state is not TaskState.CREATED:
        return Placement(None, f"task is {task.state}, not waiting")
    if task.on_hold:
        return Placement(None, task.wait_reason or "on hold (fleet/hold)")
    if task.not_before is not None and task.not_before > now:
        return Placement(None, backoff_reason(task, now=now))
    matching = [a for a in agents if fits(task, a)]
    if task.pinned_agent is not None and not matching:
        known = any(a.id == task.pinned_agent for a in agents)
        return Placement(
            None,
            f"pinned to {task.pinned_agent}, which "
            + ("does not have " + _requirement(task) if known else "is not a registered agent"),
        )
    demands = bool(task.required_role or task.required_capabilities)
    if not matching:
        if not agents:
            return Placement(None, "no agent is registered")
        return Placement(None, f"no agent has {_requirement(task)}")
    online = [a for a in matching if a.status is AgentStatus.ONLINE]
    if not online:
        draining = sum(a.status is AgentStatus.DRAINING for a in matching)
        extra = f" ({draining} draining)" if draining else ""
        what = f"no online agent has {_requirement(task)}" if demands else "no agent is online"
        return Placement(None, f"{what}{extra}")

    # The task's own stored version may still count against an agent (a lost run): not here.
    load = active_load(t for t in tasks if t.id != task.id)
    free = _free_slots(online, load)
    # Tasks ahead of this one in the queue take the free slots they fit first.
    ahead = sorted(
        (t for t in tasks if t.id != task.id and is_waiting(t, now=now)), key=queue_order
    )
    mine = queue_order(task)
    for other in ahead:
        if queue_order(other) >= mine:
            break
        takers = [a for a in online if free[a.id] > 0 and fits(other, a)]
        if takers:
            free[_preferred(other, takers, load).id] -= 1

    open_slots = [a for a in online if free[a.id] > 0]
    if not open_slots:
        busy = len(online)
        noun = "agent" if busy == 1 else f"{busy} matching agents"
        return Placement(
            None, f"{'the matching ' + noun if busy == 1 else 'all ' + noun} {AT_CAPACITY}"
        )
    placeable = [a for a in open_slots if a.mode in modes]
    if not placeable:
        return Placement(
            None,
            f"{PULL_PICKUP} ({len(open_slots)} matching online with a free slot)",
        )
    return Placement(_preferred(task, placeable, load))


def waiting_for(agent: Agent, *, tasks: Sequence[Task], now: datetime) -> list[Task]:
    """The waiting tasks, in queue order, that a free slot on ``agent`` could take — at most as
    many as it has free slots. When an agent comes online or a slot frees, their keys are
    queued so placement happens now rather than at the next resync."""
    if agent.status is not AgentStatus.ONLINE:
        return []
    free = agent.max_concurrency - active_load(tasks).get(agent.id, 0)
    if free <= 0:
        return []
    waiting = sorted((t for t in tasks if is_waiting(t, now=now)), key=queue_order)
    return [t for t in waiting if fits(t, agent)][:free]


def next_task_for(agent: Agent, *, tasks: Sequence[Task], now: datetime) -> Task | None:
    """The task a pull agent takes when it asks: the first waiting task, in queue order, that
    fits it — provided it is online and has a free slot."""
    if agent.status is not AgentStatus.ONLINE:
        return None
    if active_load(tasks).get(agent.id, 0) >= agent.max_concurrency:
        return None
    # The first in queue order among those that fit: one pass, no sort (queue_order is unique).
    return min(
        (t for t in tasks if is_waiting(t, now=now) and fits(t, agent)),
        key=queue_order,
        default=None,
    )
