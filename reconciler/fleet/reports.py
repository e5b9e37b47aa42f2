"""What an agent reports about the tasks it holds, checked against its lease: status updates
and progress notes from the agent API, failures of runs in this process (the ssh executor),
each run's outcome counted on its agent (its failing streak and automatic drain), reading a
task and its history. :class:`~reconciler.fleet.agents.Fleet` has these operations through
:class:`TaskReports`, under the same per-agent lock as heartbeats, so a report and the
registry taking the task back never interleave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    IllegalTransitionError,
    NotFoundError,
    StaleStateError,
)
from reconciler.fleet.budgets import RunSpend, spend_data, with_spend
from reconciler.fleet.health import count_run_failure, count_run_success
from reconciler.fleet.questions import check_ask, unanswered, waiting_reason
from reconciler.fleet.records import (
    StatusUpdate,
    actor_for,
)
from reconciler.keys import Key, issue_key
from reconciler.models import (
    Agent,
    AgentId,
    Question,
    QuestionKind,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    transition,
)
from reconciler.settings import Settings
from reconciler.store import Store
from reconciler.store.store import TaskWrite
from reconciler.text import one_line, sanitize

log = structlog.get_logger(__name__)


# The states an agent itself may move its task to through the status endpoint; completion
# goes through a verified receipt, failure through the assignment controller's timeouts.
AGENT_SETTABLE_STATES = frozenset({TaskState.RUNNING})
# Tasks an agent loses when it goes offline: the ones it is (or should be) working on. A task
# in review_pending waits for people, not for the agent, and stays with it.
LOST_WITH_AGENT = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


class TaskReports:
    """The task operations of :class:`~reconciler.fleet.agents.Fleet` (see the module doc)."""

    if TYPE_CHECKING:
        # Provided by Fleet: the store, the settings, its clock, the work queue (a fresh look,
        # and a follow-up of work under way), the per-agent lock and how it asks the registry
        # controller to look at an agent.
        _store: Store
        _settings: Callable[[], Settings]
        _clock: Callable[[], datetime]
        _follow_up: Callable[[Key], None] | None

        def agent_lock(self, agent_id: str) -> AbstractContextManager[None]: ...

        def _notify(self, agent_id: str) -> None: ...

    # --- tasks -------------------------------------------------------------------------------

    def update_task_status(
        self,
        agent_id: str,
        task_id: str,
        *,
        lease_generation: int,
        state: TaskState | None = None,
        note: str = "",
        failed: bool = False,
    ) -> StatusUpdate:
        """An agent reports on its task: it started (``state=running``) or a progress note;
        ``failed``: its run failed, the note says why (an error in its stats, and a step of
        its failing streak: ``reconciler/fleet/health.py``).

        Refused with :class:`ForbiddenError` for a task the agent never held under that lease,
        :class:`ConflictError` ``stale_lease`` for a lease that was superseded, and
        :class:`IllegalTransitionError` for a move the state machine does not allow. Each
        accepted update appends one event; reporting ``running`` again changes nothing.
        """
        if state is not None and state not in AGENT_SETTABLE_STATES:
            allowed = ", ".join(sorted(AGENT_SETTABLE_STATES))
            raise ForbiddenError(
                "state_not_allowed", f"an agent may set its task to {allowed} only, not {state}"
            )
        if state is None and not note:
            raise ValueError("a status update needs a state, a note, or both")
        now = self._clock()
        actor = actor_for(agent_id)
        with self.agent_lock(agent_id):
            task = self._store.find_task(task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            self._check_lease(task, AgentId(agent_id), lease_generation)
            event: TaskEvent
            if state is not None and state is not task.state:
                updated, event = transition(
                    task,
                    state,
                    now=now,
                    actor=actor,
                    reason=note or f"the agent reports the task {state}",
                    last_activity_at=now,
                )
            elif note:
                updated = task.model_copy(update={"last_activity_at": now, "updated_at": now})
                event = TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=actor,
                    kind="run_failed" if failed else "progress",
                    reason=note,
                )
            else:
                return StatusUpdate(task=task, changed=False)
            self._write(task, updated, event)
            if failed:
                self._count_run(agent_id, failure=note, now=now)
        if updated.state is not task.state and not (
            task.state is TaskState.ASSIGNED and updated.state is TaskState.RUNNING
        ):
            # A task the agent started shows on its issue as the task it took did (the
            # `status/doing` label, the status comment's line naming the agent): the issue
            # needs a look only for a move it shows.
            self._notify_issue(updated)
        return StatusUpdate(task=updated, changed=True)

    def report_failure(
        self,
        agent_id: str,
        task_id: str,
        *,
        lease_generation: int,
        reason: str,
        retryable: bool,
        spent: RunSpend | None = None,
    ) -> StatusUpdate:
        """An agent running in this process (a run of the ssh executor) reports that its run
        failed: the task becomes ``failed`` with the reason, for the assignment controller to
        retry with backoff when ``retryable``. ``spent`` is what the run cost, added to the
        task's spend (and its day's); ``spent.over_budget`` marks a run stopped by its budget.

        Not served over HTTP: a pull agent reports a failure as a progress note and its task
        fails at its deadline. Refused as :meth:`update_task_status` refuses, and with
        :class:`IllegalTransitionError` for a task that is no longer assigned or running.
        """
        now = self._clock()
        with self.agent_lock(agent_id):
            task = self._store.find_task(task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            self._check_lease(task, AgentId(agent_id), lease_generation)
            if spent is not None:
                spent = self._priced(agent_id, spent)
            if task.state not in LOST_WITH_AGENT:
                raise IllegalTransitionError(f"task {task.id} is {task.state}, not in progress")
            updated, event = transition(
                task,
                TaskState.FAILED,
                now=now,
                actor=actor_for(agent_id),
                reason=reason,
                failure_reason=reason,
                failure_retryable=retryable,
                **_spend_changes(task, spent, over_budget=True),
            )
            self._write(task, updated, _with_spend_data(event, spent))
            self._count_run(agent_id, failure=reason, now=now)
        self._notify_issue(updated)
        return StatusUpdate(task=updated, changed=True)

    def ask(
        self,
        agent_id: str,
        task_id: str,
        *,
        lease_generation: int,
        kind: QuestionKind,
        text: str,
        options: Sequence[str] = (),
        role: str | None = None,
    ) -> Question:
        """Record a question (or decision) the agent's run asks about its task, for the
        assignment controller to open as an issue the task depends on (docs/mcp.md).

        Refused as :meth:`update_task_status` refuses, with :class:`ConflictError` for a
        task no longer in progress and for a question the guardrails do not allow
        (``questions.check_ask``), and with ``ValueError`` for a malformed one."""
        now = self._clock()
        settings = self._settings()
        with self.agent_lock(agent_id):
            task = self._store.find_task(task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            self._check_lease(task, AgentId(agent_id), lease_generation)
            if task.state not in LOST_WITH_AGENT:
                raise ConflictError(
                    "stale_lease", f"task {task.id} is {task.state}: only a run in progress asks"
                )
            roles = {r for a in self._store.list_agents() for r in a.roles}
            roles |= {r for host in settings.hosts for r in host.roles}
            if role is not None and role not in roles:
                raise ValueError(f"no agent has the role {role!r}; ask the maintainers instead")
            # What a reader would not see (control characters, hidden comments) goes first.
            text, options = sanitize(text), [sanitize(o) for o in options]
            if not text or not all(options):
                raise ValueError("the question and each option need visible text")
            check_ask(task, kind=kind, role=role, options=options, settings=settings.mcp)
            agent = self._store.find_agent(agent_id)
            trusted_roles = set(settings.mcp.trusted_roles)
            question = Question(
                number=len(task.questions) + 1,
                kind=kind,
                text=text,
                options=tuple(options),
                role=role,
                asked_at=now,
                asked_by=AgentId(agent_id),
                lease_generation=lease_generation,
                asker_trusted=agent is not None and bool(trusted_roles & set(agent.roles)),
            )
            updated = task.model_copy(
                update={
                    "questions": (*task.questions, question),
                    "updated_at": now,
                    "last_activity_at": now,
                }
            )
            who = "the maintainers" if role is None else f"role {role}"
            event = TaskEvent(
                task_id=task.id,
                at=now,
                actor=actor_for(agent_id),
                kind=str(kind),
                reason=f"asks {who}: {one_line(text, limit=200)}",
                data={"question": question.number},
            )
            self._write(task, updated, event)
        self._notify_issue(updated)
        return question

    def wait_for_answers(
        self,
        agent_id: str,
        task_id: str,
        *,
        lease_generation: int,
        spent: RunSpend | None = None,
        session_id: str | None = None,
    ) -> StatusUpdate:
        """The agent's run ended to wait for the answers to the questions it asked: the task
        goes back to the queue, where it waits on them (not a failed attempt). ``spent`` is
        what the run cost, added to the task's spend; ``session_id`` the CLI session the next
        run resumes. Refused with :class:`ConflictError`
        ``no_question`` when the task has no unanswered question."""
        now = self._clock()
        with self.agent_lock(agent_id):
            task = self._store.find_task(task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            self._check_lease(task, AgentId(agent_id), lease_generation)
            if task.state not in LOST_WITH_AGENT:
                raise IllegalTransitionError(f"task {task.id} is {task.state}, not in progress")
            if not unanswered(task):
                raise ConflictError(
                    "no_question",
                    f"task {task.id} has no unanswered question to wait for; hand in the work",
                )
            if spent is not None:
                spent = self._priced(agent_id, spent)
            updated, event = transition(
                task,
                TaskState.CREATED,
                now=now,
                actor=actor_for(agent_id),
                reason="the run ended to wait for the answer to its question",
                agent_id=None,
                wait_reason=waiting_reason(task),
                **({"session_id": session_id} if session_id else {}),
                **_spend_changes(task, spent, over_budget=False),
            )
            self._write(task, updated, _with_spend_data(event, spent))
            self._count_run(agent_id, failure=None, now=now)
        self._notify_issue(updated)
        return StatusUpdate(task=updated, changed=True)

    def _priced(self, agent_id: str, spent: RunSpend) -> RunSpend:
        """``spent`` with its cost estimated from its tokens and ``api.token_prices`` (by the
        agent's type) when the CLI reported none, marked estimated."""
        if spent.cost_usd or not spent.tokens:
            return spent
        agent = self._store.find_agent(agent_id)
        price = self._settings().api.token_prices.get(agent.type) if agent else None
        if price is None:
            return spent
        return replace(spent, cost_usd=spent.tokens * price / 1_000_000, estimated=True)

    def count_run_success(self, agent_id: str) -> None:
        """A run of the agent succeeded (its receipt was accepted): its failing streak and an
        automatic drain end. Call under the agent's lock."""
        self._count_run(agent_id, failure=None, now=self._clock())

    def _count_run(self, agent_id: str, *, failure: str | None, now: datetime) -> None:
        """Count a run's outcome on its agent (``failure``: why it failed; None: it succeeded).
        Call under the agent's lock."""
        drain_after = self._settings().api.drain_after_failed_runs

        def change(agent: Agent) -> Agent:
            if failure is None:
                return count_run_success(agent, now=now)
            return count_run_failure(agent, reason=failure, drain_after=drain_after, now=now)

        try:
            before = self._store.get_agent(agent_id)
            after = self._store.update_agent(agent_id, change)
        except NotFoundError:
            return  # an agent since forgotten: nothing to count on
        if after.auto_drained != before.auto_drained:
            log.warning(
                "agent.auto_drained" if after.auto_drained else "agent.auto_drain_ended",
                agent_id=agent_id,
                failing_runs=after.failing_runs,
                reason=after.status_reason,
            )
            self._notify(agent_id)

    def _write(self, task: Task, updated: Task, event: TaskEvent) -> None:
        """Replace ``task`` by ``updated`` with its event; call under the agent's lock."""
        # One commit checks the task and writes it with its event under the store's lock: a
        # race lost to another writer (a reconcile saving the task) leaves no stray event, so
        # the agent's retry of the same report does not record the move twice.
        try:
            self._store.commit([TaskWrite(updated, task)], events=[event])
        except StaleStateError:
            raise _changed_meanwhile(task) from None

    def _notify_issue(self, task: Task) -> None:
        """The task's state changed: its issue's labels and comment follow (a follow-up of
        work under way: the issue as last read will do)."""
        if self._follow_up is not None:
            self._follow_up(issue_key(task.repo, task.issue_number))

    def check_lease(self, task: Task, agent_id: str, lease_generation: int) -> None:
        """Refuse an agent's request about ``task`` unless it holds the task's current lease:
        :class:`ConflictError` ``stale_lease`` for a lease it held once, :class:`ForbiddenError`
        ``not_your_task`` for a task it never held under that lease. Call under its agent lock."""
        self._check_lease(task, AgentId(agent_id), lease_generation)

    def _check_lease(self, task: Task, agent_id: AgentId, lease_generation: int) -> None:
        if task.agent_id == agent_id and task.lease_generation == lease_generation:
            return
        if task.agent_id == agent_id or self._held(task.id, agent_id, lease_generation):
            raise ConflictError(
                "stale_lease",
                f"lease {lease_generation} on task {task.id} is no longer valid (the task is "
                f"{task.state} under lease {task.lease_generation}); stop working on it",
            )
        raise ForbiddenError("not_your_task", f"task {task.id} is not assigned to {agent_id}")

    def _held(self, task_id: TaskId, agent_id: AgentId, lease_generation: int) -> bool:
        """Whether the event log shows ``agent_id`` was given ``lease_generation`` of the task."""
        return any(
            event.data.get("agent_id") == agent_id
            and event.data.get("lease_generation") == lease_generation
            for event in self._store.events_for(task_id)
        )

    def find_task(self, task_id: str) -> Task:
        """A task without its history; :class:`NotFoundError` when there is none."""
        task = self._store.find_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        return task

    def history(self, task_id: str) -> list[TaskEvent]:
        """A task's events, oldest first."""
        return self._store.events_for(task_id)

    def read_task(self, task_id: str, *, agent_id: str | None) -> tuple[Task, list[TaskEvent]]:
        """A task and its history; ``agent_id`` None is an operator, else only the owner."""
        task = self._store.find_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        if agent_id is not None and task.agent_id != agent_id:
            raise ForbiddenError("not_your_task", f"task {task.id} is not assigned to {agent_id}")
        return task, self._store.events_for(task.id)


def _changed_meanwhile(task: Task) -> ConflictError:
    return ConflictError(
        "task_changed", f"task {task.id} changed while the update was applied; send it again"
    )


def _spend_changes(task: Task, spent: RunSpend | None, *, over_budget: bool) -> dict[str, object]:
    """The task's changes that add a run's ``spent`` (and, with ``over_budget``, mark whether
    the run was stopped by its budget)."""
    if spent is None:
        return {}
    changes = with_spend(task, spent.cost_usd, spent.tokens, estimated=spent.estimated)
    return {**changes, "over_budget": spent.over_budget} if over_budget else changes


def _with_spend_data(event: TaskEvent, spent: RunSpend | None) -> TaskEvent:
    """``event`` recording a run's ``spent`` in its data."""
    if spent is None:
        return event
    data = spend_data(spent.cost_usd, spent.tokens, estimated=spent.estimated)
    return event.model_copy(update={"data": {**event.data, **data}})
