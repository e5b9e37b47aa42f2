"""The assignment controller (key: one issue): turns a fleet issue into exactly one task.

``reconcile(("assignment", repo, number))`` observes the issue in Forgejo and the task in the
store, plans with the pure :func:`plan`, and applies the actions:

* an open issue with the trigger label (or any ``agent/<role>`` label) becomes one task —
  however often it is reconciled — whose priority, required role and capabilities, hold and
  pin come from the issue's labels and follow them when they change;
* the issue's ``status/`` label follows the task's state (``status/todo`` while it waits);
* ``fleet/retry`` on a failed task requeues it, and agent-fleet removes the label;
* closing the issue or removing its fleet labels cancels the task; reopening or relabelling
  brings it back.

Placing tasks on agents and dispatching them builds on this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from reconciler.errors import ForgejoNotFound
from reconciler.forgejo import ForgejoGateway
from reconciler.forgejo_types import Issue, IssueState
from reconciler.keys import ASSIGNMENT, Key
from reconciler.models import (
    AgentId,
    Priority,
    RepoName,
    Task,
    TaskEvent,
    TaskState,
    branch_for,
    requeue,
    task_id_for,
    transition,
)
from reconciler.reconcile import Action, Actuator, AddLabels, RemoveLabels, Result, SaveTask
from reconciler.settings import LabelsSettings, Settings
from reconciler.store import Store

log = structlog.get_logger(__name__)

ACTOR = "reconciler"


@dataclass(frozen=True)
class Observed:
    """Everything :func:`plan` may look at, read once per reconcile."""

    repo: str
    number: int
    issue: Issue | None  # None: the issue does not exist (deleted, or a pull request)
    task: Task | None


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


def _status_labels(vocabulary: LabelsSettings) -> tuple[str, ...]:
    return (
        vocabulary.status_todo,
        vocabulary.status_doing,
        vocabulary.status_review,
        vocabulary.status_done,
        vocabulary.status_failed,
    )


def plan(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    """Decide what must change for one issue. Pure: no I/O, no clock."""
    vocabulary = settings.labels
    issue, task = observed.issue, observed.task
    spec = read_labels(issue.labels, vocabulary) if issue is not None else None
    open_and_wanted = (
        issue is not None and issue.state is IssueState.OPEN and spec is not None and spec.wanted
    )

    if not open_and_wanted:
        if task is None or task.is_terminal:
            return ()
        if issue is None:
            why = "the issue no longer exists"
        elif issue.state is not IssueState.OPEN:
            why = "the issue was closed"
        else:
            why = "the issue lost its fleet labels"
        cancelled, event = transition(
            task, TaskState.CANCELLED, now=now, actor=ACTOR, reason=why, wait_reason=""
        )
        return (SaveTask(cancelled, (event,)),)

    assert issue is not None and spec is not None
    actions: list[Action] = []
    events: list[TaskEvent] = []
    if task is None:
        state, why = rebuilt_state(issue.labels, vocabulary)
        task = new_task(observed.repo, issue, spec, now=now, state=state)
        events.append(
            TaskEvent(
                task_id=task.id,
                at=now,
                actor=ACTOR,
                to_state=state,
                reason=why or f"issue {observed.repo}#{issue.number} asks for the fleet",
            )
        )
    elif task.state is TaskState.CANCELLED:
        task, event = requeue(task, now=now, actor=ACTOR, reason="the issue asks for the fleet again")
        events.append(event)

    follow = {
        "title": issue.title,
        "priority": spec.priority,
        "required_role": spec.role,
        "required_capabilities": spec.capabilities,
        "on_hold": spec.hold,
        "pinned_agent": spec.pinned,
    }
    if any(getattr(task, field) != value for field, value in follow.items()):
        task = Task.model_validate({**task.model_dump(), **follow, "updated_at": now})
        if not events:
            events.append(
                TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=ACTOR,
                    kind="updated",
                    reason="the issue's labels changed what the task needs",
                )
            )

    labels_to_remove: list[str] = []
    if spec.retry:
        if task.state is TaskState.FAILED:
            task, event = requeue(task, now=now, actor=ACTOR, reason=f"{vocabulary.retry} asked for a retry")
            task = Task.model_validate({**task.model_dump(), "failure_reason": "", "not_before": None})
            events.append(event)
        labels_to_remove.append(vocabulary.retry)

    if events:
        actions.append(SaveTask(task, tuple(events)))

    desired = status_label_for(task.state, vocabulary)
    if desired is not None and desired not in issue.labels:
        # status/ is an exclusive scope: Forgejo drops the previous status label itself.
        actions.append(AddLabels(observed.repo, issue.number, (desired,)))
    elif desired is not None:
        # Only reachable when the scope is not exclusive in this repo (labels made by hand).
        stray = tuple(n for n in _status_labels(vocabulary) if n in issue.labels and n != desired)
        labels_to_remove.extend(stray)
    if labels_to_remove:
        actions.append(RemoveLabels(observed.repo, issue.number, tuple(labels_to_remove)))
    return tuple(actions)


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
    )


class AssignmentController:
    name = ASSIGNMENT

    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._actuator = actuator
        self._settings = settings
        self._clock = clock

    def observe(self, key: Key) -> Observed:
        number = int(key.id)
        try:
            issue: Issue | None = self._gateway.get_issue(key.repo, number)
        except ForgejoNotFound:
            issue = None
        if issue is not None and issue.is_pull:
            issue = None
        task = self._store.find_task(task_id_for(key.repo, number))
        return Observed(repo=key.repo, number=number, issue=issue, task=task)

    def reconcile(self, key: Key) -> Result:
        observed = self.observe(key)
        actions = plan(observed, now=self._clock(), settings=self._settings())
        self._actuator.apply(actions)
        return Result()
