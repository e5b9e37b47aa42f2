"""The assignment controller (key: one issue): turns a fleet issue into exactly one task.

``reconcile(("assignment", repo, number))`` observes the issue in Forgejo and the task in the
store, plans with the pure :func:`plan`, and applies the actions:

* an open issue with the trigger label (or any ``agent/<role>`` label) becomes one task —
  however often it is reconciled — whose priority, required role and capabilities, hold and
  pin come from the issue's labels and follow them when they change;
* the issue's ``status/`` label follows the task's state (``status/todo`` while it waits);
* ``fleet/retry`` on a failed task requeues it, and agent-fleet removes the label;
* closing the issue or removing its fleet labels cancels the task; reopening or relabelling
  brings it back;
* a task that may not start now is held, saying why (``fleet/holds.py``: the hold label, an
  untrusted author's missing approval, an open dependency or a cycle, its repository's daily
  budget spent): it is not placed and no attempt is spent; a closed issue queues the open
  issues that depend on it (read only while some task is held: none waits otherwise); a task
  held by the daily budget is looked at again at 00:00 UTC;
* the task's budget follows its role and budget labels (``fleet/budgets.py``); a task that
  failed over budget is requeued when its budget is raised, and only then.

Placing tasks on agents and dispatching them builds on this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from controllers.asking import QuestionFacts, observe_questions, plan_questions, question_hold
from reconciler.bounded import remember
from reconciler.engine.executor import Executor
from reconciler.engine.reconcile import (
    ActContext,
    Action,
    Actuator,
    AddLabels,
    Enqueue,
    RemoveLabels,
    Result,
    SaveTask,
    UpsertComment,
    comment_digest,
)
from reconciler.errors import ForgejoNotFound, StalledError
from reconciler.fleet.assignees import plan_assignees
from reconciler.fleet.budgets import (
    Budget,
    agent_cap_reason,
    agents_over_daily_cap,
    daily_cap_hold,
    next_day_start,
    read_spend_today,
    repo_daily_cap,
    task_budget,
)
from reconciler.fleet.holdfacts import HoldFacts, read_blocked, read_hold_facts, trust_on
from reconciler.fleet.holds import (
    Hold,
    HoldKind,
    IssueRef,
    always_needs_approval,
    approval_hold,
    dependency_hold,
    first_hold,
    label_hold,
    plan_hold,
)
from reconciler.fleet.issues import (
    new_task,
    read_labels,
    rebuilt_state,
    status_label_for,
    status_labels,
)
from reconciler.fleet.placement import (
    Placement,
    is_queue_wait,
    is_waiting,
    place,
    waiting_for,
)
from reconciler.fleet.questions import parse_marker, unanswered
from reconciler.fleet.rebuild import facts_from_status_comment
from reconciler.forgejo.gateway import ForgejoGateway, marker_tag
from reconciler.forgejo.types import Issue, IssueState
from reconciler.keys import ASSIGNMENT, Key, issue_key
from reconciler.models import (
    BUSY_STATES,
    RECONCILER_ACTOR,
    Agent,
    AgentId,
    ExecutionMode,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    assign,
    requeue,
    task_id_for,
    transition,
)
from reconciler.run.prompt import is_trusted_author
from reconciler.settings import LabelsSettings, Settings
from reconciler.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Observed:
    """Everything :func:`plan` may look at, read once per reconcile."""

    repo: str
    number: int
    issue: Issue | None  # None: the issue does not exist (deleted, or a pull request)
    task: Task | None
    agents: tuple[Agent, ...] = ()
    tasks: tuple[Task, ...] = ()  # every live task: load and queue order
    dispatched: bool = False  # this process runs the task right now
    status_comment: str | None = None
    """The bot's status comment as Forgejo holds it — read only to rebuild a lost task."""
    merged_for: float | None = None
    """Seconds since the pull request of a task in review was first seen merged (a read, or
    its signed delivery; memory only); None: not seen merged."""
    closed_by_its_pull: bool = False
    """The issue was closed by merging a pull request of the task's own branch (one that says
    ``Closes #N``) before the task had it: read only when the close would cancel the task."""
    question_facts: QuestionFacts = field(default_factory=QuestionFacts)
    """What Forgejo holds about the task's unanswered questions (``controllers/asking.py``)."""
    question_depth: int = 0
    """The issue is a question agent-fleet opened for a task at depth n - 1: n; else 0."""
    agent_written: bool = False
    """The issue is a question whose agent-written text no trusted role vouches for."""
    holds: HoldFacts = field(default_factory=HoldFacts)
    """Trust, approval and dependencies, read while the task could be placed."""
    blocked: tuple[IssueRef, ...] = ()
    """Open issues waiting for this one, read when it is closed: looked at again now."""
    spent_today_usd: float = 0.0
    """What the repository's tasks spent this UTC day, read while the task could be placed
    and the repository has a daily cap."""
    capped_agents: frozenset[str] = frozenset()
    """Agents whose day's spend reached ``budgets.agent_daily_usd``: given no new task."""


@dataclass(frozen=True)
class Dispatch(Action):
    """Start the task's run on an ssh agent's host (after the assignment is saved)."""

    task_id: TaskId
    agent_id: AgentId
    lease_generation: int

    def describe(self) -> str:
        return f"task {self.task_id}: dispatch to {self.agent_id} (lease {self.lease_generation})"

    def apply(self, ctx: ActContext) -> None:
        if ctx.executor is None:
            raise StalledError("this process has no executor for ssh hosts; cannot dispatch")
        ctx.executor.dispatch(self.task_id, self.agent_id, lease_generation=self.lease_generation)


@dataclass(frozen=True)
class StopRun(Action):
    """Stop the task's run, its process on the host included."""

    task_id: TaskId
    reason: str

    def describe(self) -> str:
        return f"task {self.task_id}: stop its run ({self.reason})"

    def apply(self, ctx: ActContext) -> None:
        if ctx.executor is not None:
            ctx.executor.stop(self.task_id, reason=self.reason)


def plan(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    """Decide what must change for one issue. Pure: no I/O, no clock.

    The issues waiting for a closed one are woken first (``observed.blocked``, one action
    each): the controller remembers the close as looked at once these went through, even if a
    later write of the same plan meets a newer record."""
    wake = tuple(Enqueue(issue_key(ref.repo, ref.number)) for ref in observed.blocked)
    return (
        wake
        + _plan_issue(observed, now=now, settings=settings)
        + _plan_cap_reached(observed, now=now, settings=settings)
    )


def _plan_cap_reached(
    observed: Observed, *, now: datetime, settings: Settings
) -> tuple[Action, ...]:
    """Once the repository's daily budget is spent, its other waiting tasks are looked at
    now, so they are held (and a pull agent's dequeue skips them) without waiting a resync."""
    if daily_cap_hold(observed.repo, spent_today=observed.spent_today_usd,
                      budgets=settings.budgets) is None:  # fmt: skip
        return ()
    mine = task_id_for(observed.repo, observed.number)
    return tuple(
        Enqueue(issue_key(t.repo, t.issue_number))
        for t in observed.tasks
        if t.repo == observed.repo and t.id != mine and is_waiting(t, now=now)
    )


AGENT_WRITTEN = "its text is an agent's question, which a maintainer approves first"


def current_hold(
    observed: Observed, labels: tuple[str, ...], *, settings: Settings, task: Task | None = None
) -> Hold | None:
    """Why the issue's task (``task``, or the observed one) may not be placed now, if anything
    holds it (``fleet/holds.py``; questions: ``controllers/asking.py``)."""
    facts, issue = observed.holds, observed.issue
    task = task if task is not None else observed.task
    spec = read_labels(labels, settings.labels)
    always = always_needs_approval(spec.role, labels, settings.approval)
    return first_hold(
        label_hold(labels, settings.labels),
        approval_hold(
            author=issue.author if issue is not None else "",
            author_trusted=facts.author_trusted,
            approved_by=facts.approved_by,
            vocabulary=settings.labels,
            always=always or (AGENT_WRITTEN if observed.agent_written else None),
        ),
        question_hold(task) if task is not None else None,
        dependency_hold(observed.repo, facts.open_dependencies, facts.cycle),
        daily_cap_hold(
            observed.repo, spent_today=observed.spent_today_usd, budgets=settings.budgets
        ),
    )


def _plan_issue(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    vocabulary = settings.labels
    issue, task = observed.issue, observed.task
    spec = read_labels(issue.labels, vocabulary) if issue is not None else None
    # An issue closed by merging the task's own pull request is still the task's to finish:
    # its next attempt hands the merged work in (the review and receipts controllers complete
    # it), rather than the close cancelling work that is done.
    open_and_wanted = (
        issue is not None
        and (issue.state is IssueState.OPEN or observed.closed_by_its_pull)
        and spec is not None
        and spec.wanted
    )

    if not open_and_wanted:
        if task is None:
            return ()
        closed = issue is not None and issue.state is not IssueState.OPEN
        # Merging a pull request that says "Closes #N" closes the issue: the task's fate is
        # its PR's (the review and receipts controllers complete or fail it), not a cancel.
        # Its status label still follows the task, written here as everywhere else.
        # Its status label and status comment still follow the task, written here as
        # everywhere else (a task completed after its merge closed the issue says done).
        if task.is_terminal or (
            closed
            and task.pr_number is not None
            and task.state in (TaskState.REVIEW_PENDING, TaskState.FAILED)
        ):
            if not closed or issue is None:
                return ()
            followed: list[Action] = []
            # None while held back: the receipt check's outcome follows (see below).
            status = status_label_now(observed, task, now=now, vocabulary=vocabulary)
            if status is not None and status not in issue.labels:
                followed.append(
                    AddLabels(observed.repo, issue.number, (status,), for_task=observed.task)
                )
            commented, upsert = _plan_status_comment(
                observed, issue, task, settings=settings, now=now
            )
            if upsert is not None:
                followed += [upsert, SaveTask(commented, (), expected=task)]
            return tuple(followed)
        if issue is None:
            why = "the issue no longer exists"
        elif issue.state is not IssueState.OPEN:
            why = "the issue was closed"
        else:
            why = "the issue lost its fleet labels"
        actions: list[Action] = []
        cancelled, event = transition(
            task, TaskState.CANCELLED, now=now, actor=RECONCILER_ACTOR, reason=why, wait_reason=""
        )
        if issue is not None:
            clear = plan_assignees(observed.repo, issue.number, issue.assignees, cancelled,
                                   observed.agents)  # fmt: skip
            actions += [clear] if clear is not None else []
        actions.append(SaveTask(cancelled, (event,), expected=task))
        if observed.dispatched:
            actions.append(StopRun(task.id, reason=why))
        return tuple(actions)

    assert issue is not None and spec is not None
    before = task
    events: list[TaskEvent] = []
    if task is None:
        state, why = rebuilt_state(issue.labels, vocabulary)
        task = new_task(observed.repo, issue, spec, now=now, state=state)
        if observed.question_depth:
            task = task.changed(now=now, question_depth=observed.question_depth)
        if observed.status_comment is not None:
            task = _with_rebuilt_facts(task, observed.status_comment, now=now)
        events.append(
            TaskEvent(
                task_id=task.id,
                at=now,
                actor=RECONCILER_ACTOR,
                to_state=state,
                reason=why or f"issue {observed.repo}#{issue.number} asks for the fleet",
            )
        )
    elif task.state is TaskState.CANCELLED:
        task, event = requeue(
            task, now=now, actor=RECONCILER_ACTOR, reason="the issue asks for the fleet again"
        )
        events.append(event)

    budget = task_budget(spec.role, issue.labels, settings.budgets, vocabulary)
    budget_before = Budget(usd=task.budget_usd, tokens=task.budget_tokens)
    follow = {
        "title": issue.title,
        "priority": spec.priority,
        "required_role": spec.role,
        "required_capabilities": spec.capabilities,
        "pinned_agent": spec.pinned,
        "budget_usd": budget.usd,
        "budget_tokens": budget.tokens,
    }
    if any(getattr(task, field) != value for field, value in follow.items()):
        task = task.changed(now=now, **follow)
        if not events:
            events.append(
                TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=RECONCILER_ACTOR,
                    kind="updated",
                    reason="the issue's labels changed what the task needs",
                )
            )

    if task.state is TaskState.FAILED and task.over_budget and budget.raised_from(budget_before):
        task, event = requeue(
            task,
            now=now,
            actor=RECONCILER_ACTOR,
            reason=f"budget raised to {budget.describe()} (was {budget_before.describe()})",
        )
        task = task.changed(
            now=now, failure_reason="", failure_retryable=False, not_before=None, over_budget=False
        )
        events.append(event)

    labels_to_remove: list[str] = []
    if spec.retry:
        if task.state is TaskState.FAILED and task.over_budget:
            # Another run would pass the same budget: only raising it requeues the task.
            events.append(
                TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=RECONCILER_ACTOR,
                    kind="refused",
                    reason=f"{vocabulary.retry} ignored: the task failed over budget; raise its "
                    f"budget ({vocabulary.budget_prefix}<amount>) to run it again",
                )
            )
        elif task.state is TaskState.FAILED:
            task, event = requeue(
                task,
                now=now,
                actor=RECONCILER_ACTOR,
                reason=f"{vocabulary.retry} asked for a retry",
            )
            task = task.changed(
                now=now, failure_reason="", failure_retryable=False, not_before=None
            )
            events.append(event)
        labels_to_remove.append(vocabulary.retry)

    task, question_actions, question_events = plan_questions(
        task, observed.question_facts, now=now, settings=settings
    )
    events += question_events

    stop: StopRun | None = None
    task, lifecycle_events, stop = plan_lifecycle(observed, task, now=now, settings=settings)
    events += lifecycle_events

    hold = current_hold(observed, issue.labels, settings=settings, task=task)
    task, hold_events = plan_hold(task, hold, now=now)
    events += hold_events

    dispatch: Dispatch | None = None
    if task.state is TaskState.CREATED and not task.on_hold:
        task, placement_events, dispatch = plan_placement(
            observed, task, now=now, settings=settings
        )
        events += placement_events

    actions = [*question_actions]
    # None while the label is held back (see label_settle_left): a state the task leaves
    # within the hold never reaches the issue.
    desired = status_label_now(observed, task, now=now, vocabulary=vocabulary)
    if desired is not None and desired not in issue.labels:
        # status/ is an exclusive scope: Forgejo drops the previous status label itself.
        actions.append(AddLabels(observed.repo, issue.number, (desired,), for_task=observed.task))
    elif desired is not None:
        # Only reachable when the scope is not exclusive in this repo (labels made by hand).
        stray = tuple(n for n in status_labels(vocabulary) if n in issue.labels and n != desired)
        labels_to_remove.extend(stray)
    if labels_to_remove:
        actions.append(RemoveLabels(observed.repo, issue.number, tuple(labels_to_remove)))
    assignees = plan_assignees(observed.repo, issue.number, issue.assignees, task, observed.agents)
    if assignees is not None:
        actions.append(assignees)

    if before is None and task.state in TERMINAL_REBUILT:
        # A task rebuilt after state loss that had already ended: the comment Forgejo holds
        # is the record of how it ended, and this process knows no more than it does.
        body = status_comment(task, agents=observed.agents, settings=settings, now=now)
        task = task.changed(now=task.updated_at, comment_digest=comment_digest(body))
    else:
        task, upsert = _plan_status_comment(observed, issue, task, settings=settings, now=now)
        actions += [upsert] if upsert is not None else []

    if stop is not None:
        actions.append(stop)
    if events or task != before:
        # Local state last: after the Forgejo writes it records, before the run it starts.
        actions.append(SaveTask(task, tuple(events), expected=before))
    if dispatch is not None:
        actions.append(dispatch)
    actions += plan_freed_slot(observed, task, now=now)
    return tuple(actions)


def _plan_status_comment(
    observed: Observed, issue: Issue, task: Task, *, settings: Settings, now: datetime
) -> tuple[Task, UpsertComment | None]:
    """The status comment's write when what it says changed, and the task recording it."""
    body = status_comment(task, agents=observed.agents, settings=settings, now=now)
    digest = comment_digest(body)
    if not body or digest == task.comment_digest:
        return task, None
    upsert = UpsertComment(
        observed.repo,
        issue.number,
        marker=COMMENT_MARKER,
        body=body,
        no_comments_yet=issue.comments == 0,
    )
    return task.changed(now=task.updated_at, comment_digest=digest), upsert


MERGE_SETTLE = 10.0
"""Seconds after its pull request was seen merged that a task in review waits for its receipt
check before `status/review` is written: a check settling sooner writes done (or failed)
straight away, and the review label, out of date as it would land, is never written."""


def merge_settle_left(observed: Observed, task: Task) -> float:
    """Seconds the review label of ``task`` is held back for its merged pull request; 0: none."""
    if task.state is not TaskState.REVIEW_PENDING or observed.merged_for is None:
        return 0.0
    return max(MERGE_SETTLE - observed.merged_for, 0.0)


STATUS_SETTLE = 2.0
"""Seconds a task is in a passing state (taken, in review) before its status label replaces the
one the issue shows. A state the task leaves sooner — an agent that opens its pull request a
second after taking the task, a pull request merged as it is opened — never reaches the issue:
its timeline, and everyone watching it, get the states that lasted, and Forgejo one label write
less each. An issue that shows no status label yet gets its first one at once."""

PASSING_STATES = (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.REVIEW_PENDING)
"""States whose label waits STATUS_SETTLE: every other state is said at once (`status/todo` of
a new or sent-back task, and the end: done, failed, cancelled)."""


def label_settle_left(
    observed: Observed, task: Task, *, now: datetime, vocabulary: LabelsSettings
) -> float:
    """Seconds the status label of ``task`` is held back (MERGE_SETTLE, STATUS_SETTLE); 0: it is
    written now."""
    merged = merge_settle_left(observed, task)
    if merged > 0 or task.state not in PASSING_STATES or observed.issue is None:
        return merged
    shown = [n for n in status_labels(vocabulary) if n in observed.issue.labels]
    if not shown or status_label_for(task.state, vocabulary) in shown:
        return 0.0
    since = task.state_since or task.updated_at
    return max(STATUS_SETTLE - (now - since).total_seconds(), 0.0)


def status_label_now(
    observed: Observed, task: Task, *, now: datetime, vocabulary: LabelsSettings
) -> str | None:
    """The status label the issue is to show now; None while it is held back."""
    if label_settle_left(observed, task, now=now, vocabulary=vocabulary) > 0:
        return None
    return status_label_for(task.state, vocabulary)


def plan_freed_slot(observed: Observed, task: Task, *, now: datetime) -> list[Action]:
    """A task that no longer occupies its ssh agent (its run ended: in review, failed, lost)
    leaves a slot: the waiting tasks that slot could take are looked at now."""
    agent = _agent(observed, task.agent_id)
    if agent is None or agent.mode is not ExecutionMode.SSH or task.state in BUSY_STATES:
        return []
    others = tuple(t for t in observed.tasks if t.id != task.id) + (task,)
    return [
        Enqueue(issue_key(t.repo, t.issue_number))
        for t in waiting_for(agent, tasks=others, now=now)
        if t.id != task.id
    ]


def retry_delay(attempt: int, *, settings: Settings) -> float:
    """Backoff before attempt ``attempt + 1``: initial × 2^(attempt-1), capped."""
    retries = settings.retries
    return float(min(retries.backoff_initial * 2 ** max(attempt - 1, 0), retries.backoff_max))


def plan_lifecycle(
    observed: Observed, task: Task, *, now: datetime, settings: Settings
) -> tuple[Task, list[TaskEvent], StopRun | None]:
    """Runs that outlived their deadline or were lost, and failures worth another attempt."""
    events: list[TaskEvent] = []
    stop: StopRun | None = None
    agent = _agent(observed, task.agent_id)
    # A run whose task moved on without it (its agent was declared lost and the task requeued,
    # or it failed): its lease is stale, so it must not keep working either.
    if observed.dispatched and task.state not in (
        TaskState.ASSIGNED,
        TaskState.RUNNING,
        TaskState.REVIEW_PENDING,
    ):
        stop = StopRun(task.id, reason=f"the task is {task.state} now")
    if task.state in (TaskState.ASSIGNED, TaskState.RUNNING):
        if task.deadline_at is not None and task.deadline_at <= now:
            why = f"timed out: still {task.state} at its deadline {task.deadline_at:%H:%M:%S} UTC"
            if observed.dispatched:
                stop = StopRun(task.id, reason=why)
            task, event = transition(
                task,
                TaskState.FAILED,
                now=now,
                actor=RECONCILER_ACTOR,
                reason=why,
                failure_reason=why,
                failure_retryable=True,
            )
            events.append(event)
        elif agent is not None and agent.mode is ExecutionMode.SSH and not observed.dispatched:
            why = f"its run on {agent.id} is gone (agent-fleet restarted, or the dispatch failed)"
            task, lost = transition(
                task, TaskState.AGENT_LOST, now=now, actor=RECONCILER_ACTOR, reason=why
            )
            task, back = requeue(
                task, now=now, actor=RECONCILER_ACTOR, reason="requeued after the lost run"
            )
            events += [lost, back]
    if task.state is TaskState.FAILED and task.failure_retryable:
        if task.attempt <= settings.retries.max_retries:
            delay = retry_delay(task.attempt, settings=settings)
            until = now + timedelta(seconds=delay)
            task, event = requeue(
                task,
                now=now,
                actor=RECONCILER_ACTOR,
                reason=f"retry {task.attempt} of {settings.retries.max_retries} "
                f"after: {task.failure_reason}",
            )
            task = task.changed(now=now, not_before=until)
            events.append(event)
        else:
            task = task.changed(now=now, failure_retryable=False)
            events.append(
                TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=RECONCILER_ACTOR,
                    kind="gave_up",
                    reason=f"failed for good after {task.attempt} attempt(s): {task.failure_reason}",
                )
            )
    return task, events, stop


def plan_placement(
    observed: Observed, task: Task, *, now: datetime, settings: Settings
) -> tuple[Task, list[TaskEvent], Dispatch | None]:
    """Give a waiting task to an ssh agent, or record why it waits."""
    ssh = frozenset({ExecutionMode.SSH})
    usable = tuple(a for a in observed.agents if a.id not in observed.capped_agents)
    placement = place(task, agents=usable, tasks=observed.tasks, now=now, modes=ssh)
    if placement.agent is None and len(usable) != len(observed.agents):
        # Would an agent take it but for its daily budget? Then that is why it waits.
        uncapped = place(task, agents=observed.agents, tasks=observed.tasks, now=now, modes=ssh)
        if uncapped.agent is not None:
            placement = Placement(None, agent_cap_reason(observed.capped_agents, settings.budgets))
    if placement.agent is None:
        if placement.reason != task.wait_reason:
            task = task.changed(now=now, wait_reason=placement.reason)
            return (
                task,
                [
                    TaskEvent(
                        task_id=task.id,
                        at=now,
                        actor=RECONCILER_ACTOR,
                        kind="waiting",
                        reason=placement.reason,
                    )
                ],
                None,
            )
        return task, [], None
    agent = placement.agent
    task, event = assign(task, agent.id, now=now, actor=RECONCILER_ACTOR)
    timeout = settings.timeouts.for_task(
        roles=(task.required_role,) if task.required_role else (),
        labels=observed.issue.labels if observed.issue is not None else (),
    )
    task = task.changed(
        now=now,
        deadline_at=now + timedelta(seconds=timeout),
        failure_reason="",
        failure_retryable=False,
    )
    return task, [event], Dispatch(task.id, agent.id, lease_generation=task.lease_generation)


def _agent(observed: Observed, agent_id: AgentId | None) -> Agent | None:
    return next((a for a in observed.agents if a.id == agent_id), None)


COMMENT_MARKER = "task"

PLACEABLE_STATES = frozenset(
    {TaskState.CREATED, TaskState.FAILED, TaskState.CANCELLED, TaskState.AGENT_LOST}
)
"""States from which a task can be (re)placed in this reconcile: its holds are read then."""


def status_comment(
    task: Task, *, agents: tuple[Agent, ...], settings: Settings, now: datetime
) -> str:
    """The one comment agent-fleet keeps on a task's issue, rewritten when what it says changes.

    It says what the ``status/`` label cannot: why a task waits, who took it (on which branch,
    which attempt), why it failed. The label says the state; the line taking the task stays
    as the task goes to review and is done (the result comment says how it ended), so those
    moves cost no edit. A wait for a free slot in a busy queue (:func:`is_queue_wait`) is said
    once it has lasted ``timeouts.queue_notice`` seconds: a short wait posts nothing.
    """
    head = f"<sub>agent-fleet · task `{task.id}`</sub>"
    if task.state is TaskState.CREATED and task.on_hold and unanswered(task):
        line = f"❓ Paused until its agent's question is answered: {task.wait_reason}."
    elif task.state is TaskState.CREATED and task.on_hold and task.wait_reason:
        line = f"⏸️ Not started yet: {task.wait_reason}."
    elif task.state is TaskState.CREATED:
        if not task.wait_reason or queue_notice_left(task, now=now, settings=settings):
            return ""
        line = f"⏳ Waiting for an agent: {task.wait_reason}."
    elif task.state in TAKEN_STATES:
        who = f" by **{task.agent_id}**" if task.agent_id else ""
        line = f"🤖 Taken{who} · branch `{task.branch}` · attempt {task.attempt}"
    elif task.state is TaskState.FAILED:
        line = f"❌ Failed after {task.attempt} attempt(s): {task.failure_reason}"
    elif task.state is TaskState.AGENT_LOST:
        line = f"⚠️ Agent {task.agent_id} was lost; the task goes back to the queue."
    else:
        return ""
    return f"{line}\n\n{head}\n"


TAKEN_STATES = (
    TaskState.ASSIGNED,
    TaskState.RUNNING,
    TaskState.REVIEW_PENDING,
    TaskState.COMPLETED,
)
"""States whose status comment names the agent that took the task: the same line for all."""


def queue_notice_left(task: Task, *, now: datetime, settings: Settings) -> float:
    """Seconds until a task waiting for a free slot (:func:`is_queue_wait`) has waited long
    enough for its status comment to say so; 0 for any other task."""
    if task.state is not TaskState.CREATED or task.on_hold or not is_queue_wait(task.wait_reason):
        return 0.0
    since = task.state_since or task.created_at
    return max(settings.timeouts.queue_notice - (now - since).total_seconds(), 0.0)


TERMINAL_REBUILT = (TaskState.COMPLETED, TaskState.FAILED)


def _with_rebuilt_facts(task: Task, comment: str, *, now: datetime) -> Task:
    """The attempt count and failure reason the status comment still shows."""
    facts = facts_from_status_comment(comment)
    changes: dict[str, object] = {}
    if facts.attempt is not None:
        changes["attempt"] = facts.attempt
    if facts.failure_reason is not None and task.state is TaskState.FAILED:
        changes["failure_reason"] = facts.failure_reason
    return task.changed(now=now, **changes) if changes else task


WOKE_REMEMBERED = 10_000
"""Closes remembered as looked at (the oldest forgotten first: at worst read again)."""
_NEVER = object()


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
        executor: Executor | None = None,
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._actuator = actuator
        self._settings = settings
        self._clock = clock
        self._executor = executor
        self._woke: dict[tuple[str, int], datetime | None] = {}
        """Closed issues whose waiters were woken, with the close it was for: a close is
        looked at once (its dependents enqueued), not on every later reconcile of the issue."""
        self._closes_looked_at = 0
        """Closes whose waiters were looked for (counted before the store is asked whether
        any task is held): a reconcile that holds a task while this moves looks again."""
        self._woke_lock = threading.Lock()

    def observe(self, key: Key) -> Observed:
        number = int(key.id)
        task_id = task_id_for(key.repo, number)
        try:
            # The copy kept from the last read while only our own label writes followed it (a
            # change by anyone else, delivered or found by the resync, makes this a read).
            issue: Issue | None = self._gateway.get_issue(key.repo, number, kept=True)
        except ForgejoNotFound:
            issue = None
        if issue is not None and issue.is_pull:
            issue = None
        # Whether a run is in progress is read before the task: an executor writes the task's
        # new state before it stops counting as running, so this order never sees a finished
        # run's old state as a lost run.
        dispatched = self._executor is not None and self._executor.is_running(task_id)
        task = self._store.find_task(task_id)
        existing = None
        if task is None and issue is not None and issue.comments > 0:
            # A task the store lost (or never had): what its status comment still says.
            tag = marker_tag(COMMENT_MARKER)
            login = self._gateway.bot_login()
            existing = next(
                (
                    c.body
                    for c in self._gateway.list_comments(key.repo, number)
                    if c.author == login and tag in c.body
                ),
                None,
            )
        settings = self._settings()
        watched = tuple(settings.forgejo.repos)
        holds = HoldFacts()
        spent_today = 0.0
        capped: frozenset[str] = frozenset()
        blocked: tuple[IssueRef, ...] = ()
        closed_by_its_pull = False
        merged_for = (
            self._gateway.seen.merged_for(key.repo, task.pr_number)
            if task is not None
            and task.state is TaskState.REVIEW_PENDING
            and task.pr_number is not None
            else None
        )
        question_facts, question_depth, agent_written = QuestionFacts(), 0, False
        trusted = trust_on(
            self._gateway,
            key.repo,
            allow=frozenset(settings.forgejo.trusted_authors),
            judge=is_trusted_author,
        )
        if issue is not None and issue.state is IssueState.OPEN and task is not None:
            question_facts = observe_questions(
                self._gateway, self._store, task, settings=settings, trusted=trusted
            )
        if issue is not None and issue.state is IssueState.CLOSED:
            with self._woke_lock:
                woken = self._woke.get((key.repo.lower(), number), _NEVER) == issue.closed_at
                if not woken:
                    # Counted before the store is asked: a task held after this look (from
                    # dependencies read before the close) sees the count move and looks again.
                    self._closes_looked_at += 1
            # Only a held task waits for a blocker: with none, nothing this close could release
            # (``GET …/blocks`` would name issues whose tasks wait for nothing, or none at all).
            if not woken and self._store.has_held_tasks():
                blocked = read_blocked(self._gateway, key.repo, number, watched=watched)
            if task is not None and task.pr_number is None and not task.is_terminal:
                pull = self._gateway.find_pull_by_head(key.repo, task.branch)
                closed_by_its_pull = pull is not None and pull.merged
        elif (
            issue is not None
            and (spec := read_labels(issue.labels, settings.labels)).wanted
            and (task is None or task.state in PLACEABLE_STATES)
        ):
            if repo_daily_cap(key.repo, settings.budgets) is not None or (
                settings.budgets.agent_daily_usd is not None
            ):
                today = read_spend_today(self._store, now=self._clock())
                spent_today = sum(r.usd for r in today if r.kind == "repo" and r.name == key.repo)
                capped = agents_over_daily_cap(today, settings.budgets)
            always = always_needs_approval(spec.role, issue.labels, settings.approval)
            mark = parse_marker(issue, bot_login=self._gateway.bot_login())
            question_depth = mark.depth if mark is not None else 0
            agent_written = mark is not None and not mark.asker_trusted
            holds = read_hold_facts(
                self._gateway,
                key.repo,
                issue,
                vocabulary=settings.labels,
                watched=watched,
                trusted=trusted,
                always_approval=always is not None or agent_written,
                dependencies=question_facts.dependencies,
            )
        return Observed(
            repo=key.repo,
            number=number,
            issue=issue,
            task=task,
            agents=tuple(self._store.list_agents()),
            tasks=tuple(self._store.list_tasks()),
            dispatched=dispatched,
            status_comment=existing,
            holds=holds,
            blocked=blocked,
            spent_today_usd=spent_today,
            capped_agents=capped,
            closed_by_its_pull=closed_by_its_pull,
            merged_for=merged_for,
            question_facts=question_facts,
            question_depth=question_depth,
            agent_written=agent_written,
        )

    def reconcile(self, key: Key) -> Result:
        # Taken before anything is read: the hold this reconcile may save rests on reads that
        # a close counted after this point may have overtaken.
        with self._woke_lock:
            closes_before = self._closes_looked_at
        observed = self.observe(key)
        now = self._clock()
        actions = plan(observed, now=now, settings=self._settings())
        # The plan wakes the issues waiting for a close first (see plan): once those went
        # through, the close is done, whatever the rest of the plan meets (a newer record of
        # the task makes the loop reconcile again, which must not read them once more).
        woke = len(observed.blocked)
        self._actuator.apply(actions[:woke])
        issue = observed.issue
        if issue is not None and issue.state is IssueState.CLOSED:
            with self._woke_lock:
                remember(
                    self._woke, (key.repo.lower(), observed.number), issue.closed_at,
                    limit=WOKE_REMEMBERED,
                )  # fmt: skip
        self._actuator.apply(actions[woke:])
        saved = next((a.task for a in reversed(actions) if isinstance(a, SaveTask)), observed.task)
        settings = self._settings()
        after = next_check(saved, now=now, settings=settings)
        settle = (
            label_settle_left(observed, saved, now=now, vocabulary=settings.labels)
            if saved is not None
            else 0.0
        )
        if settle > 0:
            after = settle + 0.1 if after is None else min(after, settle + 0.1)
        if self._held_past_a_close(observed.task, saved, closes_before):
            return Result(requeue_after=0.0)
        if saved is not None and saved.state is TaskState.CREATED and observed.capped_agents:
            # Capped agents take tasks again at 00:00 UTC.
            lifts = (next_day_start(now) - now).total_seconds() + 0.5
            after = lifts if after is None else min(after, lifts)
        if saved is not None and saved.on_hold and observed.spent_today_usd > 0:
            hold = current_hold(observed, observed.issue.labels, settings=settings) if (
                observed.issue is not None) else None  # fmt: skip
            if hold is not None and hold.kind == HoldKind.BUDGET:
                # The day's spend resets at 00:00 UTC: look again then (+0.5 s past it).
                lifts = (next_day_start(now) - now).total_seconds() + 0.5
                after = lifts if after is None else min(after, lifts)
        return Result(requeue_after=after)

    def _held_past_a_close(self, before: Task | None, saved: Task | None, closes: int) -> bool:
        """Whether this reconcile made the task held while a close was looked at. That close
        may have found no held task in the store (and so woken nobody) while the hold rested
        on dependencies read before it: the task is looked at again at once, and its next
        reconcile reads them afresh. A task held all along was in the store for the close to
        see; nothing else makes a task held (only this controller writes ``on_hold``)."""
        if saved is None or not saved.is_held or (before is not None and before.is_held):
            return False
        with self._woke_lock:
            return self._closes_looked_at != closes


def next_check(task: Task | None, *, now: datetime, settings: Settings) -> float | None:
    """Seconds until something about the task falls due: its backoff ends, its deadline, or
    its wait for a free slot has lasted long enough to be said on the issue."""
    if task is None:
        return None
    due = [
        (t - now).total_seconds()
        for t in (
            task.not_before if task.state is TaskState.CREATED else None,
            task.deadline_at if task.state in (TaskState.ASSIGNED, TaskState.RUNNING) else None,
        )
        if t is not None
    ]
    notice = queue_notice_left(task, now=now, settings=settings)
    if notice > 0:
        due.append(notice)
    if not due:
        return None
    return max(min(due), 0.0) + 0.5
