"""The live tasks and agents as typed objects, parsed once, with the indexes reads need.

Used only by :class:`reconciler.store.store.Store`, under its lock. The store validates every
live document when it opens and keeps the objects here; each write replaces the object it
changed, parsed from the very document it wrote (so memory holds what a reopen would read).
Reads then cost what they return, not a validation of the whole store:

* tasks by id, by state, by agent and by repository (case-insensitively); issue lookups are by
  id already (the task id is derived from repository and number);
* the waiting tasks (``created``) in queue order — high priority first, then the oldest, then
  by id, as ``reconciler.fleet.placement.queue_order`` sorts them — kept sorted as they change,
  so a dequeue walks them without sorting;
* the held tasks (``Task.is_held``: on hold and not finished), so "is any task waiting for a
  blocker?" costs nothing;
* agents by id.

Every list comes back in the order the task was first stored, as TinyDB's table lists them:
callers that show or choose tasks see the same order as before the indexes existed.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Iterable
from datetime import datetime

from reconciler.models import Agent, AgentStatus, Task, TaskState


def _queue_key(task: Task) -> tuple[int, datetime, str]:
    return (task.priority.rank, task.created_at, task.id)


class LiveTasks:
    """Live tasks by id with secondary indexes by state, agent and repository."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._order: dict[str, int] = {}
        self._counter = itertools.count()
        self._by_state: dict[TaskState, dict[str, Task]] = {state: {} for state in TaskState}
        self._by_agent: dict[str, dict[str, Task]] = {}
        self._by_repo: dict[str, dict[str, Task]] = {}
        # The created tasks' queue keys, sorted; the tasks themselves are in _by_state.
        self._queue: list[tuple[int, datetime, str]] = []
        self._held: set[str] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def put(self, task: Task) -> None:
        old = self._tasks.get(task.id)
        if old is not None:
            self._unindex(old)
        else:
            self._order[task.id] = next(self._counter)
        self._tasks[task.id] = task
        self._by_state[task.state][task.id] = task
        if task.agent_id is not None:
            self._by_agent.setdefault(task.agent_id, {})[task.id] = task
        self._by_repo.setdefault(task.repo.casefold(), {})[task.id] = task
        if task.state is TaskState.CREATED:
            bisect.insort(self._queue, _queue_key(task))
        if task.is_held:
            self._held.add(task.id)

    def remove(self, task_id: str) -> None:
        old = self._tasks.pop(task_id, None)
        if old is not None:
            self._unindex(old)
            del self._order[task_id]

    def _unindex(self, task: Task) -> None:
        del self._by_state[task.state][task.id]
        self._held.discard(task.id)
        if task.state is TaskState.CREATED:
            key = _queue_key(task)
            index = bisect.bisect_left(self._queue, key)
            assert self._queue[index] == key  # every created task is in the queue
            del self._queue[index]
        if task.agent_id is not None:
            mine = self._by_agent[task.agent_id]
            del mine[task.id]
            if not mine:
                del self._by_agent[task.agent_id]
        repo = self._by_repo[task.repo.casefold()]
        del repo[task.id]
        if not repo:
            del self._by_repo[task.repo.casefold()]

    def select(
        self,
        *,
        states: Collection[TaskState] | None = None,
        repo: str | None = None,
        agent_id: str | None = None,
    ) -> list[Task]:
        """The tasks matching every filter given, in the order first stored. Reads the
        smallest index that applies, then filters that."""
        if states is None and repo is None and agent_id is None:
            return list(self._tasks.values())
        indexes: list[tuple[int, Iterable[Task]]] = []
        if agent_id is not None:
            mine = self._by_agent.get(agent_id, {})
            indexes.append((len(mine), mine.values()))
        if repo is not None:
            of_repo = self._by_repo.get(repo.casefold(), {})
            indexes.append((len(of_repo), of_repo.values()))
        if states is not None:
            buckets = [self._by_state[state] for state in set(states)]
            indexes.append(
                (
                    sum(len(bucket) for bucket in buckets),
                    itertools.chain.from_iterable(bucket.values() for bucket in buckets),
                )
            )
        _, smallest = min(indexes, key=lambda index: index[0])
        wanted_repo = repo.casefold() if repo is not None else None
        found = [
            task
            for task in smallest
            if (states is None or task.state in states)
            and (wanted_repo is None or task.repo.casefold() == wanted_repo)
            and (agent_id is None or task.agent_id == agent_id)
        ]
        found.sort(key=lambda task: self._order[task.id])
        return found

    def held_count(self) -> int:
        """How many tasks are held (``Task.is_held``)."""
        return len(self._held)

    def waiting_in_queue_order(self) -> list[Task]:
        """The created tasks, high priority first, then the oldest, then by id."""
        created = self._by_state[TaskState.CREATED]
        return [created[key[2]] for key in self._queue]


class LiveAgents:
    """Registered agents by id."""

    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def put(self, agent: Agent) -> None:
        self._agents[agent.id] = agent

    def remove(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def select(self, *, status: AgentStatus | None = None) -> list[Agent]:
        if status is None:
            return list(self._agents.values())
        return [agent for agent in self._agents.values() if agent.status is status]


__all__ = ["LiveAgents", "LiveTasks"]
