"""A task's history as people read it: fetched from the daemon, printed as a timeline.

``agent-fleet tasks show ID`` fetches the task with ``reconciler.console.client.fetch_task``
(``GET /api/v1/tasks/{id}`` with the operator token — the daemon holds the state store, so the
store is not read directly) and prints :func:`task_report`: the task's state, its agent, PR and the checks of its receipt,
then every event oldest first — created, assigned (agent, lease), running, progress, pushes,
the pull request, reviews, receipts, each verification, completed or failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.console.views import task_why
from reconciler.fleet.api import TaskDetail
from reconciler.fleet.budgets import Budget, format_usd
from reconciler.models import CheckOutcome, TaskEvent, TaskState
from reconciler.text import one_line

CHECK_MARK = {CheckOutcome.PASSED: "✓", CheckOutcome.FAILED: "✗", CheckOutcome.PENDING: "…"}


def event_what(event: TaskEvent) -> str:
    if event.kind == "transition":
        source = event.from_state.value if event.from_state is not None else "new"
        target = event.to_state.value if event.to_state is not None else "?"
        return f"{source} → {target}"
    if event.kind == "verification":
        outcome = str(event.data.get("outcome", ""))
        known = {o.value: o for o in CheckOutcome}
        return f"verification {CHECK_MARK[known[outcome]] if outcome in known else '?'}"
    return event.kind


def event_detail(event: TaskEvent) -> str:
    """The event's reason, with the lease an assignment was made under."""
    data: dict[str, Any] = event.data
    assigned = event.kind == "transition" and event.to_state is TaskState.ASSIGNED
    if assigned and "lease_generation" in data:
        return f"{event.reason} (lease {data['lease_generation']})"
    return event.reason


def task_report(history: TaskDetail, *, now: datetime | None = None) -> str:
    """The task, then its history as one line per event; with ``now``, a backoff's next try
    is told as of then."""
    task = history.task
    lines = [f"task {task.id}  {task.repo}#{task.issue_number}  {task.title}"]
    facts = [f"state: {task.state.value}"]
    if task.agent_id:
        facts.append(f"agent: {task.agent_id} (lease {task.lease_generation})")
    elif task.previous_agent:
        facts.append(f"previous agent: {task.previous_agent}")
    facts.append(f"attempt {task.attempt}")
    if task.review_count:
        facts.append(f"{task.review_count} review round(s) asked for changes")
    if task.pr_number is not None:
        facts.append(f"PR #{task.pr_number}")
    facts.append(f"branch {task.branch}")
    lines.append(" · ".join(facts))
    budget = Budget(usd=task.budget_usd, tokens=task.budget_tokens)
    if task.spent_usd or task.spent_tokens or budget.limited:
        estimated = " (estimated)" if task.spent_estimated else ""
        lines.append(
            f"spent: {format_usd(task.spent_usd)}{estimated}, {task.spent_tokens:,} tokens"
            f" · budget: {budget.describe()}" + (" · over budget" if task.over_budget else "")
        )
    if task.state is TaskState.FAILED and task.failure_reason:
        retry = "will be retried" if task.failure_retryable else "not retried"
        lines.append(f"failed ({retry}): {task.failure_reason}")
    if task.state is TaskState.CREATED and task.wait_reason:
        lines.append(f"waiting: {task_why(task, now=now)}")
    if task.questions:
        lines.append("questions:")
        for q in task.questions:
            where = f" #{q.issue_number}" if q.issue_number is not None else " (being opened)"
            lines.append(f"  {q.number}. {q.kind.value}{where}: {one_line(q.text, limit=100)}")
            if q.answer is None:
                lines.append("     unanswered")
            else:
                chosen = f"option {q.chosen} · " if q.chosen is not None else ""
                by = f" ({q.answered_by})" if q.answered_by else ""
                lines.append(f"     answered{by}: {chosen}{one_line(q.answer, limit=100)}")
    if task.checks:
        lines.append("receipt checks:")
        lines += [f"  {CHECK_MARK[c.outcome]} {c.name}: {c.detail}" for c in task.checks]
    lines += ["", "history:"]
    lines += _timeline(history.events)
    return "\n".join(lines)


def _timeline(events: Sequence[TaskEvent]) -> list[str]:
    if not events:
        return ["  (no events)"]
    rows = [(f"{e.at:%Y-%m-%d %H:%M:%S}", event_what(e), e.actor, event_detail(e)) for e in events]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]


__all__ = ["CHECK_MARK", "event_detail", "event_what", "task_report"]
