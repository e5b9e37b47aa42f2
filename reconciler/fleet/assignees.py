"""Who an issue is assigned to: the Forgejo account of the agent that holds its task.

An agent may name its own Forgejo login (``forgejo_login`` of a ``[[hosts]]`` entry, or of a
pull agent's registration). :func:`plan_assignees` — pure, called by the assignment controller
(``controllers/assignment.py``), the one writer of an issue's assignees — decides the issue's
assignees from its task:

* assigned, running or in review: the holding agent's login (when it has one);
* waiting (``created``, ``agent_lost``) or cancelled: no agent's login — so a task requeued to
  another agent moves its assignee, and a cancelled one is cleared;
* completed or failed: left as they are (who did the work stays visible).

Only the logins of the fleet's agents are ever added or removed: an assignee a person set, who
is not one of the fleet's agents, stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.engine.reconcile import SetAssignees, assignees_with
from reconciler.models import Agent, Task, TaskState

HOLDING = frozenset({TaskState.ASSIGNED, TaskState.RUNNING, TaskState.REVIEW_PENDING})
"""Task states whose agent is the issue's assignee."""
RELEASED = frozenset({TaskState.CREATED, TaskState.AGENT_LOST, TaskState.CANCELLED})
"""Task states in which no agent is the issue's assignee."""


def wanted_assignees(
    current: Sequence[str], task: Task, agents: Sequence[Agent]
) -> tuple[str, ...] | None:
    """The issue's assignees as they should be, or None when the task's state leaves them be."""
    if task.state not in HOLDING and task.state not in RELEASED:
        return None
    fleet, login = _fleet_and_holder(task, agents)
    return assignees_with(current, fleet=fleet, holder=login)


def _fleet_and_holder(task: Task, agents: Sequence[Agent]) -> tuple[frozenset[str], str]:
    """The fleet's agents' logins (lower case), and the login the task's holder puts on it."""
    fleet = frozenset(agent.forgejo_login.lower() for agent in agents if agent.forgejo_login)
    holder = next((a for a in agents if a.id == task.agent_id), None)
    login = holder.forgejo_login if holder is not None and task.state in HOLDING else ""
    return fleet, login or ""


def plan_assignees(
    repo: str, number: int, current: Sequence[str], task: Task, agents: Sequence[Agent]
) -> SetAssignees | None:
    """The write that makes the issue's assignees what the task says, or None (already so)."""
    wanted = wanted_assignees(current, task, agents)
    if wanted is None or [n.lower() for n in wanted] == [n.lower() for n in current]:
        return None
    fleet, login = _fleet_and_holder(task, agents)
    return SetAssignees(repo, number, wanted, fleet_logins=fleet, holder=login)


__all__ = ["HOLDING", "RELEASED", "plan_assignees", "wanted_assignees"]
