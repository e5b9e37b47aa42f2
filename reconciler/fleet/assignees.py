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

from reconciler.engine.reconcile import SetAssignees
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
    fleet = {agent.forgejo_login.lower() for agent in agents if agent.forgejo_login}
    holder = next((a for a in agents if a.id == task.agent_id), None)
    login = holder.forgejo_login if holder is not None and task.state in HOLDING else ""
    kept = [name for name in current if name.lower() not in fleet or name.lower() == login.lower()]
    if login and login.lower() not in {name.lower() for name in kept}:
        kept.append(login)
    return tuple(kept)


def plan_assignees(
    repo: str, number: int, current: Sequence[str], task: Task, agents: Sequence[Agent]
) -> SetAssignees | None:
    """The write that makes the issue's assignees what the task says, or None (already so)."""
    wanted = wanted_assignees(current, task, agents)
    if wanted is None or [n.lower() for n in wanted] == [n.lower() for n in current]:
        return None
    return SetAssignees(repo, number, wanted)


__all__ = ["HOLDING", "RELEASED", "plan_assignees", "wanted_assignees"]
