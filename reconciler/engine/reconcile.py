"""The reconcile contract shared by every controller and the loop.

A controller is an object with a ``name`` and ``reconcile(key) -> Result``. Inside it observes
(reads Forgejo and the store into a frozen snapshot), plans (a pure function returning a tuple
of :class:`Action`), and hands the actions to an :class:`Actuator`, which applies them — or,
in a dry run, only describes them. ``Result`` carries nothing but ``requeue_after``; errors are
raised (see :mod:`reconciler.errors`) and the loop decides what to do with them.

The actions every controller needs (labels, marker comments, closing an issue, assignees, saving a task
with its event, saving an agent, enqueueing another key) live here; a controller defines its
own actions by subclassing ``Action``.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from reconciler.errors import ForgejoError, ForgejoNotFound, StaleStateError
from reconciler.keys import Key, setup_key
from reconciler.models import Agent, Task, TaskEvent

if TYPE_CHECKING:
    from reconciler.engine.executor import Executor
    from reconciler.forgejo.gateway import ForgejoGateway
    from reconciler.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Result:
    """What a successful reconcile asks of the loop: nothing, or to look again later."""

    requeue_after: float | None = None


class Controller(Protocol):
    name: str

    def reconcile(self, key: Key) -> Result: ...


@dataclass(frozen=True)
class ActContext:
    """What actions act on. Built once by whoever wires the daemon."""

    gateway: ForgejoGateway
    store: Store
    executor: Executor | None = None
    enqueue: Callable[[Key], None] | None = None
    """Hands a key to the work queue (None where no queue runs, e.g. a one-off plan)."""


class Action(abc.ABC):
    """One change to make. ``describe`` is what a dry run prints; ``apply`` makes the change."""

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    def apply(self, ctx: ActContext) -> None: ...


@dataclass(frozen=True)
class AddLabels(Action):
    """Add labels to an issue.

    ``for_task``: the labels follow task ``for_task.id`` as the plan saw it (a status label).
    If the stored task has since finished in another state (the receipts controller completed
    it while this plan was made from its state in review), nothing is written and
    :class:`StaleStateError` makes the loop observe afresh: a status label is never written
    for a state the task already left for good.
    """

    repo: str
    number: int
    names: tuple[str, ...]
    for_task: Task | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: add label(s) {', '.join(self.names)}"

    def apply(self, ctx: ActContext) -> None:
        if self.for_task is not None:
            current = ctx.store.find_task(self.for_task.id)
            if (
                current is not None
                and current.is_terminal
                and current.state is not self.for_task.state
            ):
                raise StaleStateError(
                    f"task {current.id} became {current.state} while its "
                    f"{self.for_task.state} label was planned"
                )
        try:
            # echo: its webhook needs no reconcile (a Matrix command's label, written through
            # the gateway directly, is not one: its delivery is reconciled).
            labels = ctx.gateway.add_labels(self.repo, self.number, self.names, echo=True)
        except ForgejoNotFound as exc:
            if exc.status == 0 and ctx.enqueue is not None:
                # A label the fleet writes is not in the repo (deleted by hand, or the set-up
                # has not got through yet): the repository's set-up makes it again.
                ctx.enqueue(setup_key(self.repo))
            raise
        # What this write left is what its webhook will show: that delivery is an echo.
        ctx.gateway.seen.note_labels(self.repo, self.number, labels)


@dataclass(frozen=True)
class RemoveLabels(Action):
    repo: str
    number: int
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: remove label(s) {', '.join(self.names)}"

    def apply(self, ctx: ActContext) -> None:
        for name in self.names:
            ctx.gateway.remove_label(self.repo, self.number, name)
        ctx.gateway.seen.drop_labels(self.repo, self.number, self.names)


def comment_digest(body: str) -> str:
    """A short fingerprint of a bot comment's text: a task records it to know what it last wrote."""
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UpsertComment(Action):
    """Create or edit the one bot comment for ``marker`` on an issue (found by hidden marker)."""

    repo: str
    number: int
    marker: str
    body: str
    no_comments_yet: bool = False
    """The issue had no comments when observed: nothing to find, so no listing is needed."""

    def describe(self) -> str:
        first = self.body.strip().splitlines()[0] if self.body.strip() else ""
        return f"{self.repo}#{self.number}: write the {self.marker} comment: {first[:80]}"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.upsert_marker_comment(
            self.repo,
            self.number,
            marker=self.marker,
            body=self.body,
            comments=() if self.no_comments_yet else None,
        )


@dataclass(frozen=True)
class CloseIssue(Action):
    """Close a completed task's issue (``review.close_issue``)."""

    repo: str
    number: int

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: close the issue"

    def apply(self, ctx: ActContext) -> None:
        try:
            ctx.gateway.edit_issue(self.repo, self.number, state="closed")
        except ForgejoError as exc:
            if exc.status != 412:
                raise
            # Forgejo will not close an issue that still has open dependencies: a person's
            # call to make, so it is left open (and not retried) rather than failing the task.
            log.warning("issue.close_refused", repo=self.repo, issue=self.number, error=str(exc))


_UNCHECKED = object()


@dataclass(frozen=True)
class SetAssignees(Action):
    """Make the issue's assignees the people's own plus ``holder`` (the login of the agent
    holding its task; empty: none), dropping the fleet's other agents (``fleet_logins``).

    Forgejo replaces an issue's assignees as a whole, so the write is computed from the
    assignees Forgejo holds *now*, read just before it: a person's assignee added since the
    plan's observation (whose webhook is still on its way, or which the plan saw from a kept
    copy) is kept, never overwritten. ``logins`` is what the plan expects, for dry runs.

    Assignees are a courtesy to people, not a fact the fleet depends on: a refusal (a login
    Forgejo does not know or will not assign, answered with 4xx or 500) is logged and left for
    the next pass, never retried in a loop; the next reconcile plans it again from what it sees.
    """

    repo: str
    number: int
    logins: tuple[str, ...]
    fleet_logins: frozenset[str] = frozenset()
    holder: str = ""

    def describe(self) -> str:
        who = ", ".join(self.logins) if self.logins else "nobody"
        return f"{self.repo}#{self.number}: assign {who}"

    def apply(self, ctx: ActContext) -> None:
        wanted = self.logins
        try:
            current = ctx.gateway.get_issue(self.repo, self.number).assignees
            wanted = assignees_with(current, fleet=self.fleet_logins, holder=self.holder)
            if [n.lower() for n in wanted] == [n.lower() for n in current]:
                return
            ctx.gateway.edit_issue(self.repo, self.number, assignees=wanted)
        except ForgejoError as exc:
            log.warning(
                "issue.assignees_refused",
                repo=self.repo,
                issue=self.number,
                logins=list(wanted),
                error=str(exc),
            )


def assignees_with(
    current: Sequence[str], *, fleet: AbstractSet[str], holder: str
) -> tuple[str, ...]:
    """``current`` with the fleet's agents' logins (``fleet``, lower case) taken out but for
    ``holder``, and ``holder`` added when missing: people's own assignees stay, in order."""
    kept = [n for n in current if n.lower() not in fleet or n.lower() == holder.lower()]
    if holder and holder.lower() not in {n.lower() for n in kept}:
        kept.append(holder)
    return tuple(kept)


@dataclass(frozen=True)
class SaveTask(Action):
    """Write a task and the events that explain its change to the store (local state: last).

    With ``expected`` (the task as the plan saw it; None: it did not exist) the write only
    happens if the store still holds that version — an agent's update in between makes the
    reconcile run again instead of being overwritten.
    """

    task: Task
    events: tuple[TaskEvent, ...] = field(default=())
    expected: Task | None | object = field(default=_UNCHECKED, compare=False)

    def describe(self) -> str:
        moves = "; ".join(_describe_event(e) for e in self.events)
        return f"task {self.task.id} ({self.task.repo}#{self.task.issue_number}): {moves or 'save'}"

    def apply(self, ctx: ActContext) -> None:
        if self.expected is _UNCHECKED:
            for event in self.events:
                ctx.store.append_event(event)
            ctx.store.put_task(self.task)
            return
        expected = self.expected if isinstance(self.expected, Task) else None
        # Check first so a stale plan leaves no events behind; the store checks again under
        # its lock when it writes.
        if ctx.store.find_task(self.task.id) != expected:
            ctx.store.replace_task(self.task, expected=expected)  # raises StaleStateError
        for event in self.events:
            ctx.store.append_event(event)
        ctx.store.replace_task(self.task, expected=expected)


@dataclass(frozen=True)
class SaveAgent(Action):
    """Write an agent's record — only if the stored one is still the one observed.

    An agent's record is also written by the agent API (register, drain), so a plain overwrite
    could undo a change made since the observation. ``observed`` None means the record must not
    exist yet. A mismatch raises :class:`StaleStateError`: the loop retries, observing afresh.
    """

    agent: Agent
    observed: Agent | None
    summary: str = ""

    def describe(self) -> str:
        return f"agent {self.agent.id}: {self.summary or 'save'}"

    def apply(self, ctx: ActContext) -> None:
        if self.observed is None:
            if ctx.store.find_agent(self.agent.id) is not None:
                raise StaleStateError(f"agent {self.agent.id} was registered while reconciling")
            ctx.store.put_agent(self.agent)
            return

        def change(current: Agent) -> Agent:
            if current != self.observed:
                raise StaleStateError(f"agent {self.agent.id} changed while reconciling")
            return self.agent

        ctx.store.update_agent(self.agent.id, change)


@dataclass(frozen=True)
class Enqueue(Action):
    """Ask another controller to look at ``key`` (e.g. a requeued task's issue)."""

    key: Key

    def describe(self) -> str:
        return f"enqueue {self.key}"

    def apply(self, ctx: ActContext) -> None:
        if ctx.enqueue is None:
            raise RuntimeError(f"cannot enqueue {self.key}: this process runs no work queue")
        ctx.enqueue(self.key)


def _describe_event(event: TaskEvent) -> str:
    if event.to_state is None:
        return f"{event.kind}: {event.reason}"
    if event.from_state is None:
        return f"new task, {event.to_state} ({event.reason})"
    return f"{event.from_state} → {event.to_state} ({event.reason})"


_applied: ContextVar[list[str] | None] = ContextVar("agent_fleet_applied_actions", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[str]]:
    """Collect the descriptions of every action applied (or planned, in a dry run) inside."""
    applied: list[str] = []
    token = _applied.set(applied)
    try:
        yield applied
    finally:
        _applied.reset(token)


class Actuator:
    """Applies actions in order. With ``dry_run`` it only describes them."""

    def __init__(self, ctx: ActContext | None, *, dry_run: bool = False) -> None:
        if ctx is None and not dry_run:
            raise ValueError("an actuator that applies actions needs an ActContext")
        self._ctx = ctx
        self.dry_run = dry_run

    def apply(self, actions: Sequence[Action]) -> None:
        sink = _applied.get()
        for action in actions:
            description = action.describe()
            if not self.dry_run:
                assert self._ctx is not None
                action.apply(self._ctx)
            if sink is not None:
                sink.append(description)
