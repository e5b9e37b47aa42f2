"""What the CLI prints about the fleet: the ``agent-fleet agents`` table and JSON, and the
``agent-fleet status`` report.

``webhook/cli.py`` fetches the answers with ``reconciler/console/client.py`` and prints them
with these functions; the answers' shapes are the wire contract's (``reconciler/fleet/api.py``).
Pure text formatting: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from reconciler.fleet.api import AgentList, AgentSummary
from reconciler.fleet.budgets import format_usd
from reconciler.fleet.placement import backoff_reason
from reconciler.models import BUSY_STATES, Task, TaskState
from reconciler.text import format_duration

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


def agents_json(agents: Sequence[AgentSummary]) -> str:
    """The agents as ``agent-fleet agents --json`` prints them: the API's own JSON."""
    return AgentList(agents=tuple(agents)).model_dump_json(indent=2)


def task_why(task: Task, *, now: datetime | None = None) -> str:
    """What a live task is doing, or why it waits, or why it failed: the WHY column of
    ``agent-fleet status`` and of the fleet page. With ``now``, a backoff's next try is
    told as of then (the stored reason says it as of when it was written)."""
    if task.state is TaskState.FAILED:
        return task.failure_reason
    if task.state is TaskState.CREATED:
        if now is not None and task.not_before is not None and task.not_before > now:
            return backoff_reason(task, now=now)
        return task.wait_reason or "waiting to be placed"
    if task.pr_number is not None:
        return f"PR #{task.pr_number} on {task.branch}"
    return f"attempt {task.attempt} on {task.branch}"


def task_spend(task: Task) -> str:
    """What the task spent over its runs, against its dollar budget: ``$0.25/$5.00``, ``-``."""
    if not task.spent_usd and not task.spent_tokens and task.budget_usd is None:
        return "-"
    spent = format_usd(task.spent_usd) + ("~" if task.spent_estimated else "")
    return spent + (f"/{format_usd(task.budget_usd)}" if task.budget_usd is not None else "")


def status_report(tasks: Sequence[Task], *, now: datetime) -> str:
    """``agent-fleet status``: how many tasks are in each state, then each live task with
    its agent, or why it waits, or why it failed."""
    if not tasks:
        return "no live tasks"
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    lines = ["  ".join(f"{state}: {n}" for state, n in sorted(counts.items())), ""]
    rows = [("TASK", "ISSUE", "PRIORITY", "STATE", "AGENT", "AGE", "SPENT", "WHY / WHAT")]
    for task in tasks:
        rows.append(
            (
                task.id,
                f"{task.repo}#{task.issue_number}",
                task.priority.value,
                task.state.value,
                task.agent_id or "-",
                format_duration((now - task.created_at).total_seconds()),
                task_spend(task),
                task_why(task, now=now),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


__all__ = ["agents_json", "agents_table", "status_report", "task_spend", "task_why"]
