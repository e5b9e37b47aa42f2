"""One task a pull worker holds, and the means to stop its run from any thread.

The :class:`~reconciler.agent.worker.Worker` makes a :class:`TaskRun` per dequeued task: its
run thread checks it between steps and attaches the agent CLI to it, and the heartbeat thread
cancels it on a stop order or when the worker fences itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from reconciler.errors import FleetError
from reconciler.fleet.api import HeldTaskItem, TaskHandout
from reconciler.models import TaskId
from reconciler.run.adapters import LocalRun

log = structlog.get_logger(__name__)


class StepFailed(FleetError):
    """A step of a task's run failed; the reason goes to the daemon as a progress note."""


class OverBudget(StepFailed):
    """The run was stopped because its usage passed the task's budget; says what it spent."""

    def __init__(self, reason: str, *, cost_usd: float, tokens: int) -> None:
        self.cost_usd = cost_usd
        self.tokens = tokens
        super().__init__(reason)


class RunStopped(FleetError):
    """The run was cancelled (a stop order, fencing, the worker stopping)."""


@dataclass
class TaskRun:
    """A task this worker holds, and the means to stop its run from any thread."""

    assignment: TaskHandout
    cancelled: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""
    thread: threading.Thread | None = None
    _local: LocalRun | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task_id(self) -> TaskId:
        return self.assignment.task.id

    @property
    def held(self) -> HeldTaskItem:
        return HeldTaskItem(task_id=self.task_id, lease_generation=self.assignment.lease_generation)

    def attach(self, local: LocalRun) -> None:
        """The CLI started; a cancel from now on kills it."""
        with self._lock:
            self._local = local
        if self.cancelled.is_set():
            local.cancel()

    def cancel(self, reason: str) -> None:
        """Stop the run; its CLI's processes are killed on a thread of their own, so the
        caller (the heartbeat thread) is never held up."""
        with self._lock:
            if self.cancelled.is_set():
                return
            self.stop_reason = reason
            self.cancelled.set()
            local = self._local
        log.warning("task.stopping", task=self.task_id, reason=reason)
        if local is not None:
            threading.Thread(target=local.cancel, name=f"stop-{self.task_id}", daemon=True).start()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RunStopped(self.stop_reason or "stopped")


Execute = Callable[[TaskRun], None]


__all__ = ["Execute", "OverBudget", "RunStopped", "StepFailed", "TaskRun"]
