"""What a fleet issue asks for, read through the configured label vocabulary (all pure): the
task its labels describe (:func:`read_labels`), the ``status/`` label each task state shows,
the state a lost task is rebuilt in from the status label Forgejo kept, and the new task for
an issue. The assignment controller (``controllers/assignment.py``) plans with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.forgejo.types import Issue
from reconciler.models import (
    AgentId,
    Priority,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.settings import LabelsSettings


@dataclass(frozen=True)
class IssueSpec:
    """What an issue's labels ask of its task."""

    wanted: bool
    priority: Priority
    role: str | None
    capabilities: tuple[str, ...]
    hold: bool
    pinned: AgentId | None
    retry: bool


def read_labels(labels: tuple[str, ...], vocabulary: LabelsSettings) -> IssueSpec:
    """Interpret an issue's labels through the configured vocabulary (pure)."""
    roles = sorted(
        name[len(vocabulary.role_prefix) :]
        for name in labels
        if name.startswith(vocabulary.role_prefix) and len(name) > len(vocabulary.role_prefix)
    )
    capabilities = tuple(
        sorted(
            name[len(vocabulary.capability_prefix) :]
            for name in labels
            if name.startswith(vocabulary.capability_prefix)
            and len(name) > len(vocabulary.capability_prefix)
        )
    )
    pins = sorted(
        name[len(vocabulary.assign_prefix) :]
        for name in labels
        if name.startswith(vocabulary.assign_prefix) and len(name) > len(vocabulary.assign_prefix)
    )
    if vocabulary.priority_high in labels:
        priority = Priority.HIGH
    elif vocabulary.priority_low in labels and vocabulary.priority_medium not in labels:
        priority = Priority.LOW
    else:
        priority = Priority.MEDIUM
    return IssueSpec(
        wanted=vocabulary.trigger in labels or bool(roles),
        priority=priority,
        # One required role: with several `agent/` labels the first in name order is taken.
        role=roles[0] if roles else None,
        capabilities=capabilities,
        hold=vocabulary.hold in labels,
        pinned=AgentId(pins[0]) if pins else None,
        retry=vocabulary.retry in labels,
    )


def status_label_for(state: TaskState, vocabulary: LabelsSettings) -> str | None:
    """The ``status/`` label an issue carries while its task is in ``state``."""
    return {
        TaskState.CREATED: vocabulary.status_todo,
        TaskState.ASSIGNED: vocabulary.status_doing,
        TaskState.RUNNING: vocabulary.status_doing,
        TaskState.AGENT_LOST: vocabulary.status_doing,
        TaskState.REVIEW_PENDING: vocabulary.status_review,
        TaskState.COMPLETED: vocabulary.status_done,
        TaskState.FAILED: vocabulary.status_failed,
        TaskState.CANCELLED: None,
    }[state]


def status_labels(vocabulary: LabelsSettings) -> tuple[str, ...]:
    """Every ``status/`` label of the vocabulary."""
    return (
        vocabulary.status_todo,
        vocabulary.status_doing,
        vocabulary.status_review,
        vocabulary.status_done,
        vocabulary.status_failed,
    )


def rebuilt_state(labels: tuple[str, ...], vocabulary: LabelsSettings) -> tuple[TaskState, str]:
    """The state of a task the store does not know, from the status label Forgejo kept.

    Task status lives on the issue, so a reconciler whose local state was lost picks up where
    it was: done stays done, failed stays failed, a PR under review stays under review. Work
    that was in progress is requeued — the agent that had it holds a lease this store never
    issued, so it cannot complete the task behind the new assignment's back.
    """
    if vocabulary.status_done in labels:
        return TaskState.COMPLETED, "rebuilt from the issue's status label: done"
    if vocabulary.status_failed in labels:
        return TaskState.FAILED, "rebuilt from the issue's status label: failed"
    if vocabulary.status_review in labels:
        return TaskState.REVIEW_PENDING, "rebuilt from the issue's status label: in review"
    if vocabulary.status_doing in labels:
        return TaskState.CREATED, "was in progress when local state was lost; requeued"
    return TaskState.CREATED, ""


def new_task(
    repo: str, issue: Issue, spec: IssueSpec, *, now: datetime, state: TaskState = TaskState.CREATED
) -> Task:
    """The task for ``issue`` as its labels describe it."""
    task_id = task_id_for(repo, issue.number)
    return Task(
        id=task_id,
        state=state,
        repo=RepoName(repo),
        issue_number=issue.number,
        title=issue.title,
        priority=spec.priority,
        required_role=spec.role,
        required_capabilities=spec.capabilities,
        on_hold=spec.hold,
        pinned_agent=spec.pinned,
        branch=branch_for(task_id, issue.title),
        created_at=now,
        updated_at=now,
        state_since=now,
    )
