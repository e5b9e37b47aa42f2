"""The reconcile contract shared by every controller and the loop.

A controller is an object with a ``name`` and ``reconcile(key) -> Result``. Inside it observes
(reads Forgejo and the store into a frozen snapshot), plans (a pure function returning a tuple
of :class:`Action`), and hands the actions to an :class:`Actuator`, which applies them — or,
in a dry run, only describes them. ``Result`` carries nothing but ``requeue_after``; errors are
raised (see :mod:`reconciler.errors`) and the loop decides what to do with them.

The actions every controller needs (labels, marker comments, closing an issue, saving a task
with its event) live here; a controller defines its own actions by subclassing ``Action``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from reconciler.keys import Key
from reconciler.models import Task, TaskEvent

if TYPE_CHECKING:
    from reconciler.forgejo import ForgejoGateway
    from reconciler.store import Store


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


class Action(abc.ABC):
    """One change to make. ``describe`` is what a dry run prints; ``apply`` makes the change."""

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    def apply(self, ctx: ActContext) -> None: ...


@dataclass(frozen=True)
class AddLabels(Action):
    repo: str
    number: int
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: add label(s) {', '.join(self.names)}"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.add_labels(self.repo, self.number, self.names)


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


@dataclass(frozen=True)
class UpsertComment(Action):
    """Create or edit the one bot comment for ``marker`` on an issue (found by hidden marker)."""

    repo: str
    number: int
    marker: str
    body: str

    def describe(self) -> str:
        first = self.body.strip().splitlines()[0] if self.body.strip() else ""
        return f"{self.repo}#{self.number}: write the {self.marker} comment: {first[:80]}"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.upsert_marker_comment(self.repo, self.number, marker=self.marker, body=self.body)


@dataclass(frozen=True)
class CloseIssue(Action):
    repo: str
    number: int

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: close the issue"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.edit_issue(self.repo, self.number, state="closed")


@dataclass(frozen=True)
class SaveTask(Action):
    """Write a task and the events that explain its change to the store (local state: last)."""

    task: Task
    events: tuple[TaskEvent, ...] = field(default=())

    def describe(self) -> str:
        moves = "; ".join(_describe_event(e) for e in self.events)
        return f"task {self.task.id} ({self.task.repo}#{self.task.issue_number}): {moves or 'save'}"

    def apply(self, ctx: ActContext) -> None:
        for event in self.events:
            ctx.store.append_event(event)
        ctx.store.put_task(self.task)


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
