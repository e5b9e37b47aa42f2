"""The pull queue: pull agents take tasks, finish them and hand in receipts. No HTTP here.

The agent API's task endpoints (``webhook/tasks_api.py``) call one :class:`PullQueue`, built by
the daemon's HTTP assembly beside the :class:`~reconciler.fleet.agents.Fleet` it builds on:

* :meth:`PullQueue.dequeue` gives the calling agent the first waiting task that fits it
  (``placement.next_task_for``: queue order, role, capabilities, pin, a free slot) under a new
  lease, with a deadline from ``timeouts``. Dequeues arriving together are *group committed*
  (:class:`~reconciler.store.group_commit.GroupCommit`): one caller at a time chooses for
  every dequeue waiting, in arrival order, each seeing the tasks the ones before it took, and
  writes all their assignments with one durable write (``Store.commit``), a compare-and-swap
  against the tasks as they were chosen. So a hundred agents asking at once never get the same
  task, share a handful of writes instead of queueing behind a hundred, and a reconcile
  writing a chosen task meanwhile makes the batch choose again. Nobody gets an answer before
  the batch is on disk; a batch that cannot be written fails every dequeue in it.
* :meth:`PullQueue.accept_receipt` records what an agent says it did, under its lease: a
  receipt with a pull request moves the task ``running → review_pending``; one without (the
  ``complete`` endpoint) leaves it running and queues its receipts key. Receipts are
  idempotent by their client-chosen id: the same receipt sent again gets the first answer,
  whatever happened to the task since; a different receipt under a used id is refused.

**What is checked here, and what later.** Here: the caller is the agent holding the task's
current lease, the task is running, and the receipt is well-formed. Not here: any claim about
Forgejo (that the pull request exists, is on the task's branch, holds the claimed commits,
changes files, has green statuses; without a PR, that the commits are on the claimed branch).
The webhook layer never calls Forgejo; that check is the review and receipts controllers',
before a task is completed, so every answer here says ``verified: false``.

Nothing is written for a refused request: every check runs before the first write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from reconciler.errors import ConflictError, IllegalTransitionError, StaleStateError, StoreError
from reconciler.fleet.agents import Fleet
from reconciler.fleet.budgets import agents_over_daily_cap, read_spend_today, spend_data, with_spend
from reconciler.fleet.placement import next_task_for
from reconciler.fleet.records import actor_for
from reconciler.keys import Key, agent_key, issue_key, pull_key, task_key
from reconciler.models import (
    BUSY_STATES,
    Agent,
    AgentId,
    AgentStatus,
    Artifact,
    ExecutionMode,
    Priority,
    Receipt,
    ReceiptId,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    assign,
    transition,
)
from reconciler.settings import LabelsSettings, Settings
from reconciler.store import Store
from reconciler.store.group_commit import GroupCommit
from reconciler.store.store import TaskWrite

log = structlog.get_logger(__name__)

# A dequeue that loses its chosen task to a concurrent writer chooses again, this many times.
DEQUEUE_ATTEMPTS = 5


@dataclass(frozen=True)
class DequeueAsk:
    """One agent's dequeue, checked and waiting for its batch: the agent as read under its
    lock, and the clock and settings of the moment it asked."""

    agent: Agent
    now: datetime
    settings: Settings


@dataclass(frozen=True)
class Assignment:
    """A task chosen for one ask: the task as read, as assigned, and the event saying so."""

    chosen: Task
    assigned: Task
    event: TaskEvent


@dataclass(frozen=True)
class Handout:
    """A task given to a pull agent, with what it needs to fetch the work and push it back.

    The prompt is not in it: the worker builds it from the issue with its own Forgejo token
    (``reconciler.run.prompt.build_prompt``), since the daemon's HTTP layer never calls Forgejo.
    ``base_branch`` None means the repository's default branch, which the worker reads from
    Forgejo for the same reason.
    """

    task: Task
    clone_url: str
    forgejo_url: str
    issue_url: str
    base_branch: str | None = None


@dataclass(frozen=True)
class ReceiptClaim:
    """What an agent submits about one task; the store keeps it as a :class:`Receipt`."""

    receipt_id: ReceiptId
    task_id: TaskId
    lease_generation: int
    pr_number: int | None = None
    branch: str = ""
    commits: tuple[str, ...] = ()
    summary: str = ""
    artifacts: tuple[Artifact, ...] = ()
    cost_usd: float = 0.0
    tokens: int = 0
    duration_s: float = 0.0
    session_id: str | None = None


@dataclass(frozen=True)
class Acceptance:
    """A receipt's answer: the receipt as stored and the state it moved its task to.

    A function of the stored receipt alone, so a retried submission gets the same answer.
    """

    receipt: Receipt
    task_state: TaskState
    verified: bool = False


def forgejo_base(settings: Settings) -> str:
    return settings.forgejo.url.rstrip("/")


def clone_url_for(settings: Settings, repo: str) -> str:
    """The repository's git URL over HTTP: ``{forgejo.url}/{owner}/{name}.git``."""
    return f"{forgejo_base(settings)}/{repo}.git"


def issue_url_for(settings: Settings, repo: str, number: int) -> str:
    return f"{forgejo_base(settings)}/{repo}/issues/{number}"


def labels_implied(task: Task, vocabulary: LabelsSettings) -> tuple[str, ...]:
    """The labels a task's fields say its issue carries: trigger, role, needs and priority.

    The timeout of a dequeued task is chosen from these (the daemon's HTTP layer does not read
    the issue); a ``timeouts.per_label`` entry for any other label applies to ssh dispatches
    only.
    """
    labels = [vocabulary.trigger]
    if task.required_role:
        labels.append(vocabulary.role_prefix + task.required_role)
    labels += [vocabulary.capability_prefix + c for c in task.required_capabilities]
    priority = {
        Priority.HIGH: vocabulary.priority_high,
        Priority.MEDIUM: vocabulary.priority_medium,
        Priority.LOW: vocabulary.priority_low,
    }
    labels.append(priority[task.priority])
    return tuple(labels)


def plan_assignments(asks: Sequence[DequeueAsk], tasks: Sequence[Task]) -> list[Assignment | None]:
    """What each ask gets, in turn, from ``tasks`` (the waiting and busy tasks): the task
    ``next_task_for`` picks for its agent, assigned with a new lease and a deadline — or None.

    Pure. Each ask sees the tasks as the asks before it left them, so no task is given twice
    and an agent's load counts what it took earlier in the same batch.
    """
    view = list(tasks)
    position = {task.id: index for index, task in enumerate(view)}
    planned: list[Assignment | None] = []
    for ask in asks:
        chosen = next_task_for(ask.agent, tasks=view, now=ask.now)
        if chosen is None:
            planned.append(None)
            continue
        assignment = assignment_for(chosen, ask)
        view[position[chosen.id]] = assignment.assigned
        planned.append(assignment)
    return planned


def assignment_for(chosen: Task, ask: DequeueAsk) -> Assignment:
    """``chosen`` assigned to the asking agent under a new lease, with its deadline."""
    agent, now = ask.agent, ask.now
    assigned, event = assign(
        chosen, agent.id, now=now, actor=actor_for(agent.id), reason=f"dequeued by {agent.id}"
    )
    timeout = ask.settings.timeouts.for_task(
        roles=(chosen.required_role,) if chosen.required_role else (),
        labels=labels_implied(chosen, ask.settings.labels),
    )
    assigned = Task.model_validate(
        {
            **assigned.model_dump(),
            "deadline_at": now + timedelta(seconds=timeout),
            "failure_reason": "",
            "failure_retryable": False,
        }
    )
    return Assignment(chosen=chosen, assigned=assigned, event=event)


def target_state(receipt: Receipt) -> TaskState:
    """Where a receipt takes its running task: review with a pull request; without one the
    task stays running until the receipts controller has verified the claimed commits on the
    claimed branch against Forgejo (then completed, or failed with the reasons)."""
    return TaskState.REVIEW_PENDING if receipt.pr_number is not None else TaskState.RUNNING


def settle(task: Task, receipt: Receipt, *, now: datetime) -> tuple[Task, list[TaskEvent]]:
    """The task after ``receipt`` (the caller checked owner, lease and state) and the events
    that explain it: the receipt itself, then the transition.

    The one place a receipt moves a task. Nothing here is trusted: a receipt with a pull
    request moves the task to review, where the review and receipts controllers check it
    against Forgejo before it is completed; a receipt without one leaves the task running for
    the receipts controller to verify.
    """
    actor = actor_for(receipt.agent_id)
    commits = f"{len(receipt.commits)} commit(s)"
    if receipt.pr_number is not None:
        what = f"pull request #{receipt.pr_number} with {commits}"
    else:
        what = f"no pull request, {commits}"
    note = TaskEvent(
        task_id=task.id,
        at=now,
        actor=actor,
        kind="receipt",
        reason=f"receipt {receipt.id}: {what} (not verified against Forgejo)",
        data={
            "receipt_id": receipt.id,
            "pr_number": receipt.pr_number,
            "commits": list(receipt.commits),
            "verified": False,
            **spend_data(receipt.cost_usd, receipt.tokens, estimated=receipt.cost_estimated),
        },
    )
    changes: dict[str, object] = {
        "last_activity_at": now,
        **with_spend(task, receipt.cost_usd, receipt.tokens, estimated=receipt.cost_estimated),
    }
    if receipt.session_id:
        changes["session_id"] = receipt.session_id
    if receipt.pr_number is not None:
        moved, event = transition(
            task,
            TaskState.REVIEW_PENDING,
            now=now,
            actor=actor,
            reason=f"pull request #{receipt.pr_number} opened",
            pr_number=receipt.pr_number,
            **changes,
        )
    else:
        if task.state is not TaskState.RUNNING:
            raise IllegalTransitionError(
                f"task {task.id} is {task.state}: report it running before handing in its receipt"
            )
        kept = Task.model_validate({**task.model_dump(), **changes, "updated_at": now})
        return kept, [note]
    return moved, [note, event]


class PullQueue:
    """Dequeue, receipts and completion for pull agents, over the store and the Fleet."""

    def __init__(
        self,
        store: Store,
        *,
        fleet: Fleet,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None] | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue
        # One batch at a time chooses among the waiting tasks (a choice is only as good as the
        # list it was made from) and writes them all at once.
        self._dequeues: GroupCommit[DequeueAsk, Task | None] = GroupCommit(self._assign_batch)

    @property
    def fleet(self) -> Fleet:
        """The registry this queue authenticates and fences agents with."""
        return self._fleet

    @property
    def dequeues(self) -> GroupCommit[DequeueAsk, Task | None]:
        """The dequeues' group commit (how many wait, how many batches were written)."""
        return self._dequeues

    def _notify(self, key: Key) -> None:
        if self._enqueue is not None:
            self._enqueue(key)

    # --- dequeue -----------------------------------------------------------------------------

    def dequeue(self, agent_id: str) -> Handout | None:
        """Give the agent the next waiting task that fits it, or None (nothing fits, or the
        agent is not online, draining, silent past its grace period, or without a free slot).

        Raises :class:`NotFoundError` for an unknown agent and :class:`ConflictError`
        ``agent_deregistered`` for one that left the fleet.
        """
        settings = self._settings()
        now = self._clock()
        # Under the agent's lock until the batch is written: the registry takes a lost agent's
        # tasks back under the same lock, so it sees this assignment or this dequeue sees the
        # agent offline.
        with self._fleet.agent_lock(agent_id):
            agent = self._store.get_agent(agent_id)
            if agent.deregistered:
                raise ConflictError(
                    "agent_deregistered",
                    f"agent {agent_id} deregistered; register again to take tasks",
                )
            if not self._may_take_work(agent, now=now):
                return None
            task = self._dequeues.submit(DequeueAsk(agent=agent, now=now, settings=settings))
        if task is None:
            return None
        log.info(
            "task.dequeued",
            task=task.id,
            agent_id=agent.id,
            lease=task.lease_generation,
            attempt=task.attempt,
        )
        # Labels and the assignment comment follow through the assignment controller; the
        # registry looks at the agent again, in case it was declared lost in the meantime.
        self._notify(issue_key(task.repo, task.issue_number))
        self._notify(agent_key(agent.id))
        return Handout(
            task=task,
            clone_url=clone_url_for(settings, task.repo),
            forgejo_url=forgejo_base(settings),
            issue_url=issue_url_for(settings, task.repo, task.issue_number),
        )

    def _may_take_work(self, agent: Agent, *, now: datetime) -> bool:
        return (
            agent.mode is ExecutionMode.PULL
            and agent.status is AgentStatus.ONLINE
            and not agent.drain_requested
            and self._fleet.is_alive(agent, now=now)
            and not self._over_daily_cap(agent, now=now)
        )

    def _dequeue_reads(self, asks: Sequence[DequeueAsk]) -> list[Task]:
        """What a batch chooses from: every waiting task, and the busy tasks of the asking
        agents only (their load is all ``plan_assignments`` counts), read from the store's
        indexes rather than every live task."""
        tasks = self._store.waiting_tasks()  # in queue order: next_task_for's sort is linear
        for agent_id in dict.fromkeys(ask.agent.id for ask in asks):
            tasks.extend(self._store.list_tasks(state=BUSY_STATES, agent_id=agent_id))
        return tasks

    def _over_daily_cap(self, agent: Agent, *, now: datetime) -> bool:
        """The agent's day's spend reached ``budgets.agent_daily_usd``: no new task today."""
        budgets = self._settings().budgets
        if budgets.agent_daily_usd is None:
            return False
        return agent.id in agents_over_daily_cap(read_spend_today(self._store, now=now), budgets)

    def _assign_batch(self, asks: Sequence[DequeueAsk]) -> list[Task | None | Exception]:
        """Choose for every ask in turn and write the assignments with one ``Store.commit``;
        the group commit's leader calls this, one batch at a time. Per ask: its assigned task,
        None, or the error it fails with (each its own: every waiter raises its own)."""
        for _ in range(DEQUEUE_ATTEMPTS):
            try:
                planned = plan_assignments(asks, self._dequeue_reads(asks))
                made = [a for a in planned if a is not None]
                self._store.commit(
                    [TaskWrite(a.assigned, expected=a.chosen) for a in made],
                    events=[a.event for a in made],
                )
            except StaleStateError:
                # A reconcile changed a chosen task since it was listed: nothing of the batch
                # was written; choose again from the new state.
                continue
            except StoreError as exc:
                return [_unwritten(ask, exc, batch=len(asks)) for ask in asks]
            return [a.assigned if a is not None else None for a in planned]
        return [
            ConflictError(
                "task_changed", "the waiting tasks kept changing while one was chosen; ask again"
            )
            for _ in asks
        ]

    # --- receipts ----------------------------------------------------------------------------

    def accept_receipt(self, agent_id: str, claim: ReceiptClaim) -> Acceptance:
        """Record the agent's receipt for its running task and move the task on (see
        :func:`settle`); or give the first answer again for a receipt already accepted.

        Refusals, with nothing stored: :class:`NotFoundError` (no such task),
        :class:`ForbiddenError` ``not_your_task``, :class:`ConflictError` ``stale_lease`` or
        ``receipt_conflict`` (another receipt under this id), and
        :class:`IllegalTransitionError` (the task is not running).
        """
        now = self._clock()
        candidate = Receipt(
            id=claim.receipt_id,
            task_id=claim.task_id,
            agent_id=AgentId(agent_id),
            lease_generation=claim.lease_generation,
            pr_number=claim.pr_number,
            branch=claim.branch,
            commits=claim.commits,
            summary=claim.summary,
            artifacts=claim.artifacts,
            cost_usd=claim.cost_usd,
            tokens=claim.tokens,
            duration_s=claim.duration_s,
            session_id=claim.session_id,
            submitted_at=now,
        )
        candidate = self._estimate_cost(candidate)
        moved: Task | None = None
        with self._fleet.agent_lock(agent_id):
            previous = self._store.find_receipt(candidate.id)
            if previous is None:
                accepted: list[Task] = []

                def change(task: Task) -> Task:
                    # Checked again under the store's lock: another agent may use the same id.
                    if self._store.find_receipt(candidate.id) is not None:
                        return task
                    self._fleet.check_lease(task, agent_id, candidate.lease_generation)
                    settled, events = settle(task, candidate, now=now)  # raises if not running
                    self._store.put_receipt(candidate)
                    for event in events:
                        self._store.append_event(event)
                    accepted.append(settled)
                    return settled

                self._store.update_task(candidate.task_id, change)
                if accepted:
                    moved = accepted[0]
                    self._fleet.count_run_success(agent_id)
                else:
                    previous = self._store.get_receipt(candidate.id)
            if previous is not None:
                _same_receipt(previous, candidate)
                moved = self._finish(previous, now=now)
                candidate = previous
        if moved is not None:
            self._after(moved, candidate)
            log.info(
                "receipt.accepted",
                receipt=candidate.id,
                task=moved.id,
                agent_id=agent_id,
                pr=candidate.pr_number,
                state=moved.state,
            )
        # A function of the stored receipt alone: a retry gets the first answer.
        return Acceptance(receipt=candidate, task_state=target_state(candidate))

    def _estimate_cost(self, receipt: Receipt) -> Receipt:
        """The receipt with its cost estimated from its tokens and ``api.token_prices`` (by
        the agent's type) when the agent reported tokens but no cost (Codex reports none)."""
        if receipt.cost_usd or not receipt.tokens:
            return receipt
        agent = self._store.find_agent(receipt.agent_id)
        price = self._settings().api.token_prices.get(agent.type) if agent else None
        if price is None:
            return receipt
        cost = round(receipt.tokens * price / 1_000_000, 6)
        return receipt.model_copy(update={"cost_usd": cost, "cost_estimated": True})

    def _finish(self, receipt: Receipt, *, now: datetime) -> Task | None:
        """For a receipt sent again: move its task on if a crash between storing the receipt
        and writing the task left that undone (call under the agent's lock). The moved task,
        or None when there was nothing to do."""
        task = self._store.find_task(receipt.task_id)
        if task is None or task.state is not TaskState.RUNNING or receipt.pr_number is None:
            # Without a pull request the task stays running by design: nothing to finish.
            return None
        finished: list[Task] = []

        def finish(current: Task) -> Task:
            if (
                current.state is not TaskState.RUNNING
                or current.agent_id != receipt.agent_id
                or current.lease_generation != receipt.lease_generation
            ):
                return current
            settled, events = settle(current, receipt, now=now)
            for event in events:
                self._store.append_event(event)
            finished.append(settled)
            return settled

        self._store.update_task(receipt.task_id, finish)
        return finished[0] if finished else None

    def _after(self, task: Task, receipt: Receipt) -> None:
        self._notify(issue_key(task.repo, task.issue_number))
        if receipt.pr_number is not None:
            self._notify(pull_key(task.repo, receipt.pr_number))
        else:
            self._notify(task_key(task.repo, task.id))


def _unwritten(ask: DequeueAsk, cause: StoreError, *, batch: int) -> StoreError:
    error = StoreError(
        f"dequeue by {ask.agent.id} failed, with every dequeue of its batch of {batch}: their "
        f"assignments could not be stored, so none was made: {cause}"
    )
    error.__cause__ = cause
    return error


def _same_receipt(stored: Receipt, candidate: Receipt) -> None:
    """Refuse a receipt that reuses a stored receipt's id with other content."""
    ignore = {"submitted_at"}
    if stored.cost_estimated:
        ignore |= {"cost_usd", "cost_estimated"}  # prices may have changed since
    if stored.model_dump(exclude=ignore) != candidate.model_dump(exclude=ignore):
        raise ConflictError(
            "receipt_conflict",
            f"receipt {stored.id} was already submitted with other content; a new receipt "
            "needs a new receipt_id",
        )


__all__ = [
    "DEQUEUE_ATTEMPTS",
    "Acceptance",
    "Assignment",
    "DequeueAsk",
    "Handout",
    "PullQueue",
    "ReceiptClaim",
    "clone_url_for",
    "issue_url_for",
    "labels_implied",
    "plan_assignments",
    "settle",
    "target_state",
]
