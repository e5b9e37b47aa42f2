"""The task state machine and the models' invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.errors import IllegalTransitionError
from reconciler.models import (
    ALLOWED_TRANSITIONS,
    Agent,
    AgentId,
    RepoName,
    Task,
    TaskState,
    assign,
    branch_for,
    requeue,
    task_id_for,
    task_id_from_branch,
    transition,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def make_task(**changes: object) -> Task:
    base: dict[str, object] = {
        "id": task_id_for("acme/web", 12),
        "repo": RepoName("acme/web"),
        "issue_number": 12,
        "title": "Fix the login form",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Task.model_validate({**base, **changes})


def test_happy_path_walks_created_to_completed_with_one_event_per_step() -> None:
    """created → assigned → running → review_pending → completed, each step recorded."""
    task = make_task()
    task, first = assign(task, AgentId("a1"), now=NOW, actor="reconciler")
    steps = [TaskState.RUNNING, TaskState.REVIEW_PENDING, TaskState.COMPLETED]
    events = [first]
    for step in steps:
        task, event = transition(task, step, now=NOW, actor="agent:a1")
        events.append(event)
    assert task.state is TaskState.COMPLETED
    assert [(e.from_state, e.to_state) for e in events] == [
        (TaskState.CREATED, TaskState.ASSIGNED),
        (TaskState.ASSIGNED, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.REVIEW_PENDING),
        (TaskState.REVIEW_PENDING, TaskState.COMPLETED),
    ]
    assert all(e.task_id == task.id and e.at == NOW for e in events)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (TaskState.CREATED, TaskState.RUNNING),
        (TaskState.CREATED, TaskState.COMPLETED),
        (TaskState.COMPLETED, TaskState.CREATED),
        (TaskState.CANCELLED, TaskState.RUNNING),
        (TaskState.FAILED, TaskState.COMPLETED),
    ],
)
def test_illegal_transition_raises_a_clear_error(source: TaskState, target: TaskState) -> None:
    """A move the state machine does not connect raises, naming both states."""
    task = make_task(state=source)
    with pytest.raises(IllegalTransitionError) as info:
        transition(task, target, now=NOW, actor="reconciler", reason="test")
    assert str(source) in str(info.value) and str(target) in str(info.value)


def test_every_state_is_in_the_transition_table() -> None:
    """No state is missing from the table (a missing one would be a KeyError at runtime)."""
    assert set(ALLOWED_TRANSITIONS) == set(TaskState)


def test_requeue_then_assign_bumps_the_lease_generation() -> None:
    """A requeued task's next assignment has a lease generation the old agent cannot hold."""
    task, _ = assign(make_task(), AgentId("a1"), now=NOW, actor="reconciler")
    old_generation = task.lease_generation
    task, _ = transition(task, TaskState.AGENT_LOST, now=NOW, actor="registry")
    task, event = requeue(task, now=NOW, actor="registry", reason="agent a1 went offline")
    assert task.state is TaskState.CREATED and task.agent_id is None
    assert event.reason == "agent a1 went offline"
    task, _ = assign(task, AgentId("a2"), now=NOW + timedelta(seconds=5), actor="reconciler")
    assert old_generation >= 1 and task.agent_id == AgentId("a2")
    assert task.lease_generation == old_generation + 1
    assert task.attempt == 2


def test_transition_validates_the_changes_it_applies() -> None:
    """A change with a wrong type fails at the transition, not later in the store."""
    with pytest.raises(ValueError):
        transition(make_task(), TaskState.FAILED, now=NOW, actor="r", attempt="many")


def test_naive_timestamps_are_refused() -> None:
    """Every timestamp carries a zone, so comparisons never mix naive and aware times."""
    with pytest.raises(ValueError):
        make_task(created_at=datetime(2026, 1, 1))


def test_task_ids_are_stable_unique_per_repo_and_round_trip_through_branches() -> None:
    """The same issue always gives the same id; the branch names it back."""
    tid = task_id_for("acme/web", 12)
    assert tid == task_id_for("Acme/Web", 12)
    assert tid != task_id_for("acme/api", 12)
    branch = branch_for(tid, "Fix: the *login* form!")
    assert branch == f"task/{tid}-fix-the-login-form"
    assert task_id_from_branch(branch) == tid
    assert task_id_from_branch(f"task/{tid}") == tid
    assert task_id_from_branch("feature/login") is None


def test_agent_covers_role_and_every_capability() -> None:
    """An agent matches only when it has the role and all required capabilities."""
    agent = Agent(
        id=AgentId("a1"),
        type="claude-code",
        roles=("developer",),
        capabilities=("code:python", "test"),
        registered_at=NOW,
    )
    assert agent.covers(role="developer", capabilities=("code:python",))
    assert agent.covers(role=None, capabilities=())
    assert not agent.covers(role="code-reviewer", capabilities=())
    assert not agent.covers(role="developer", capabilities=("code:python", "code:rust"))
