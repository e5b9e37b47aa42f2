"""The executor port: what the engine's dispatch and stop actions need from whatever runs tasks
on ssh hosts. The engine owns this interface; `reconciler.run.ssh` implements it.

The controller only decides; an :class:`Executor` carries a dispatch out on its own threads
(a run lasts minutes, a reconcile milliseconds) and reports back through the store and the
work queue like any agent would, presenting the task's lease.
"""

from __future__ import annotations

from typing import Protocol

from reconciler.models import AgentId, TaskId


class Executor(Protocol):
    def dispatch(self, task_id: TaskId, agent_id: AgentId, *, lease_generation: int) -> None:
        """Start running the task on the agent's host; returns at once."""
        ...

    def stop(self, task_id: TaskId, *, reason: str) -> bool:
        """Stop the task's run (its process on the host too); False if none was running."""
        ...

    def is_running(self, task_id: TaskId) -> bool:
        """Whether this process has a run of the task in progress."""
        ...
