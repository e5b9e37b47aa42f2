"""Placing tasks on agents: matching, load, queue order, pins, and the reasons a task waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.fleet.placement import next_task_for, place
from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Priority,
    RepoName,
    Task,
    TaskState,
    task_id_for,
)

NOW = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)


def agent(
    name: str,
    *,
    caps: tuple[str, ...] = ("code:python",),
    roles: tuple[str, ...] = ("developer",),
    slots: int = 1,
    status: AgentStatus = AgentStatus.ONLINE,
    mode: ExecutionMode = ExecutionMode.SSH,
) -> Agent:
    return Agent(
        id=AgentId(name),
        type="claude-code",
        roles=roles,
        capabilities=caps,
        max_concurrency=slots,
        status=status,
        mode=mode,
        registered_at=NOW,
    )


def task(
    number: int, *, caps: tuple[str, ...] = ("code:python",), age: int = 0, **changes: object
) -> Task:
    base: dict[str, object] = {
        "id": task_id_for("acme/web", number),
        "repo": RepoName("acme/web"),
        "issue_number": number,
        "title": f"task {number}",
        "required_role": "developer",
        "required_capabilities": caps,
        "created_at": NOW - timedelta(minutes=age),
        "updated_at": NOW,
    }
    return Task.model_validate({**base, **changes})


def running_on(number: int, agent_id: str) -> Task:
    return task(number, state=TaskState.RUNNING, agent_id=agent_id, lease_generation=1)


def test_least_loaded_matching_agent_wins() -> None:
    """Of two matching agents, the one with the smaller share of slots in use gets the task."""
    a, b = agent("a", slots=2), agent("b", slots=2)
    result = place(task(1), agents=[a, b], tasks=[task(1), running_on(2, "a")], now=NOW)
    assert result.agent == b


@pytest.mark.parametrize(
    ("the_task", "agents", "others", "reason"),
    [
        (
            task(1, caps=("code:rust",)),
            [agent("a")],
            [],
            "no agent has role developer and code:rust",
        ),
        (
            task(1),
            [agent("a", status=AgentStatus.OFFLINE)],
            [],
            "no online agent has role developer and code:python",
        ),
        (
            task(1),
            [agent("a", status=AgentStatus.DRAINING)],
            [],
            "no online agent has role developer and code:python (1 draining)",
        ),
        (
            task(1),
            [agent("a"), agent("b")],
            [running_on(2, "a"), running_on(3, "b")],
            "all 2 matching agents at capacity",
        ),
        (task(1), [agent("a")], [running_on(2, "a")], "the matching agent at capacity"),
        (task(1, on_hold=True), [agent("a")], [], "on hold (fleet/hold)"),
        (
            task(1, not_before=NOW + timedelta(minutes=5), attempt=2),
            [agent("a")],
            [],
            "backing off after attempt 2: next try in 5 min",
        ),
        (
            task(1, not_before=NOW + timedelta(hours=2), attempt=3),
            [agent("a")],
            [],
            "backing off after attempt 3: next try at 16:00 UTC",
        ),
        (
            task(1, pinned_agent="zz"),
            [agent("a")],
            [],
            "pinned to zz, which is not a registered agent",
        ),
        (
            task(1, pinned_agent="a", caps=("code:go",)),
            [agent("a")],
            [],
            "pinned to a, which does not have role developer and code:go",
        ),
        (
            task(1),
            [agent("a", mode=ExecutionMode.PULL)],
            [],
            "waiting for a pull agent to take it (1 matching online with a free slot)",
        ),
    ],
)
def test_why_a_task_waits(
    the_task: Task, agents: list[Agent], others: list[Task], reason: str
) -> None:
    """Each way a task can fail to be placed has its own words (seen as the assignment
    controller sees it: it places on ssh agents; pull agents take tasks themselves)."""
    result = place(
        the_task,
        agents=agents,
        tasks=[the_task, *others],
        now=NOW,
        modes=frozenset({ExecutionMode.SSH}),
    )
    assert not result.placed
    assert result.reason == reason


def test_a_pinned_task_goes_only_to_its_agent() -> None:
    """fleet/assign:<agent> wins over load."""
    busy, idle = agent("busy", slots=3), agent("idle", slots=3)
    pinned = task(1, pinned_agent="busy")
    result = place(pinned, agents=[busy, idle], tasks=[pinned, running_on(2, "busy")], now=NOW)
    assert result.agent == busy


def test_a_lower_priority_task_does_not_take_the_last_slot_from_a_higher_one() -> None:
    """With one free slot, the high-priority task gets it even if the low one is reconciled first."""
    low = task(1, priority=Priority.LOW, age=60)
    high = task(2, priority=Priority.HIGH)
    only = agent("a")
    assert (
        place(low, agents=[only], tasks=[low, high], now=NOW).reason
        == "the matching agent at capacity"
    )
    assert place(high, agents=[only], tasks=[low, high], now=NOW).agent == only


def test_older_tasks_of_the_same_priority_go_first() -> None:
    """Same priority: the older task is ahead in the queue."""
    old, new = task(1, age=30), task(2, age=1)
    only = agent("a")
    assert place(new, agents=[only], tasks=[old, new], now=NOW).placed is False
    assert place(old, agents=[only], tasks=[old, new], now=NOW).agent == only


def test_a_task_ahead_that_fits_elsewhere_does_not_block() -> None:
    """A task ahead only takes slots it fits; a rust task ahead leaves the python slot free."""
    rust_ahead = task(1, caps=("code:rust",), priority=Priority.HIGH)
    python = task(2)
    only = agent("a")
    assert place(python, agents=[only], tasks=[rust_ahead, python], now=NOW).agent == only


def test_a_pull_agent_takes_the_first_waiting_task_that_fits_it() -> None:
    """Dequeue order is queue order, skipping what the agent cannot do, held and backing-off tasks."""
    puller = agent("p", caps=("code:python",), mode=ExecutionMode.PULL, slots=2)
    tasks = [
        task(1, caps=("code:rust",), priority=Priority.HIGH),
        task(2, on_hold=True, priority=Priority.HIGH),
        task(3, not_before=NOW + timedelta(minutes=1), priority=Priority.HIGH),
        task(4, age=5),
        task(5, age=50, priority=Priority.LOW),
    ]
    chosen = next_task_for(puller, tasks=tasks, now=NOW)
    assert chosen is not None and chosen.issue_number == 4


def test_a_full_or_offline_pull_agent_gets_nothing() -> None:
    """No free slot, or not online: dequeue answers nothing."""
    full = agent("p", mode=ExecutionMode.PULL)
    assert next_task_for(full, tasks=[task(1), running_on(2, "p")], now=NOW) is None
    gone = agent("q", mode=ExecutionMode.PULL, status=AgentStatus.DRAINING)
    assert next_task_for(gone, tasks=[task(1)], now=NOW) is None
