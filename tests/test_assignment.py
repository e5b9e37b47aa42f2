"""The assignment controller: the plan table, a reconcile against the in-memory Forgejo, the
no-op second pass, and the error paths."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.assignment import (
    MERGE_SETTLE,
    STATUS_SETTLE,
    AssignmentController,
    Dispatch,
    Observed,
    StopRun,
    comment_digest,
    label_settle_left,
    merge_settle_left,
    next_check,
    plan,
    status_comment,
)
from controllers.setup import label_specs
from reconciler.engine.reconcile import (
    ActContext,
    Actuator,
    AddLabels,
    RemoveLabels,
    SaveTask,
    UpsertComment,
)
from reconciler.errors import StaleStateError
from reconciler.fleet.issues import read_labels
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue, IssueState
from reconciler.keys import Key, issue_key
from reconciler.models import (
    Agent,
    AgentId,
    ExecutionMode,
    Priority,
    Question,
    Task,
    TaskState,
    assign,
    task_id_for,
)
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings
from reconciler.store import Store
from reconciler.text import format_duration
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = "acme/web"
SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url="https://forgejo.example.org", token=SecretStr("t"), repos=(REPO,), bot_login="fleet"
    )
)


def issue(*labels: str, state: IssueState = IssueState.OPEN, title: str = "Fix login") -> Issue:
    return Issue(
        id=1,
        number=12,
        title=title,
        body="",
        state=state,
        labels=labels,
        author="alice",
        assignees=(),
        created_at=NOW,
        updated_at=NOW,
        closed_at=None,
        is_pull=False,
        html_url="",
    )


def task(state: TaskState = TaskState.CREATED, **changes: object) -> Task:
    base: dict[str, object] = {
        "id": task_id_for(REPO, 12),
        "repo": REPO,
        "issue_number": 12,
        "title": "Fix login",
        "state": state,
        "branch": f"task/{task_id_for(REPO, 12)}-fix-login",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Task.model_validate({**base, **changes})


def planned(
    obs_issue: Issue | None,
    obs_task: Task | None,
    *,
    agents: tuple[Agent, ...] = (),
    dispatched: bool = False,
    now: datetime = NOW,
) -> tuple[object, ...]:
    tasks = (obs_task,) if obs_task is not None else ()
    observed = Observed(
        REPO, 12, obs_issue, obs_task, agents=agents, tasks=tasks, dispatched=dispatched
    )
    return plan(observed, now=now, settings=SETTINGS)


def kinds(actions: tuple[object, ...]) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, SaveTask):
            moves = ",".join(
                f"{e.from_state}->{e.to_state}" if e.to_state else e.kind for e in action.events
            )
            out.append(f"save:{action.task.state}" + (f":{moves}" if moves else ""))
        elif isinstance(action, AddLabels):
            out.append("add:" + ",".join(action.names))
        elif isinstance(action, RemoveLabels):
            out.append("remove:" + ",".join(action.names))
        elif isinstance(action, UpsertComment):
            out.append("comment")
        elif isinstance(action, Dispatch):
            out.append(f"dispatch:{action.agent_id}")
        elif isinstance(action, StopRun):
            out.append("stop")
        else:
            out.append(type(action).__name__)
    return out


def waiting(**changes: object) -> Task:
    """A task already waiting, its reason and comment written (the settled state)."""
    reason = "no agent is registered"
    base = task(wait_reason=reason, **changes)
    body = status_comment(base, agents=(), settings=SETTINGS, now=NOW)
    return task(wait_reason=reason, comment_digest=comment_digest(body), **changes)


SSH_AGENT = Agent(
    id=AgentId("box-1"),
    type="claude-code",
    roles=("developer",),
    capabilities=("code:python",),
    mode=ExecutionMode.SSH,
    registered_at=NOW,
)


@pytest.mark.parametrize(
    ("name", "observed_issue", "observed_task", "expected"),
    [
        (
            "new fleet issue waits, says why",
            issue("fleet/task"),
            None,
            ["add:status/todo", "comment", "save:created:None->created,waiting"],
        ),
        (
            "agent/ label alone is a trigger",
            issue("agent/developer"),
            None,
            ["add:status/todo", "comment", "save:created:None->created,waiting"],
        ),
        ("plain issue", issue("bug"), None, []),
        ("already in desired state", issue("fleet/task", "status/todo"), waiting(), []),
        (
            "closed issue cancels",
            issue("fleet/task", state=IssueState.CLOSED),
            task(),
            ["save:cancelled:created->cancelled"],
        ),
        (
            "lost its labels cancels",
            issue("bug", "status/todo"),
            task(),
            ["save:cancelled:created->cancelled"],
        ),
        ("deleted issue cancels", None, task(), ["save:cancelled:created->cancelled"]),
        (
            "cancelled stays cancelled when closed",
            issue("fleet/task", state=IssueState.CLOSED),
            task(TaskState.CANCELLED),
            [],
        ),
        (
            "reopened issue requeues",
            issue("fleet/task"),
            waiting(state=TaskState.CANCELLED),
            ["add:status/todo", "comment", "save:created:cancelled->created"],
        ),
        (
            "retry on failed requeues and removes the label",
            issue("fleet/task", "fleet/retry", "status/failed"),
            waiting(state=TaskState.FAILED),
            ["add:status/todo", "remove:fleet/retry", "comment", "save:created:failed->created"],
        ),
        (
            "retry on a task that did not fail only removes the label",
            issue("fleet/task", "fleet/retry", "status/todo"),
            waiting(),
            ["remove:fleet/retry"],
        ),
        (
            "stray second status label is removed",
            issue("fleet/task", "status/todo", "status/done"),
            waiting(),
            ["remove:status/done"],
        ),
        (
            "lost store, done on the issue",
            issue("fleet/task", "status/done"),
            None,
            ["save:completed:None->completed"],
        ),
        (
            "lost store, in review on the issue",
            issue("fleet/task", "status/review"),
            None,
            ["comment", "save:review_pending:None->review_pending"],
        ),
        (
            "lost store, doing on the issue is requeued",
            issue("fleet/task", "status/doing"),
            None,
            ["add:status/todo", "comment", "save:created:None->created,waiting"],
        ),
    ],
)
def test_plan(
    name: str, observed_issue: Issue | None, observed_task: Task | None, expected: list[str]
) -> None:
    """What the controller decides for each kind of issue and task (pure: no I/O)."""
    assert kinds(planned(observed_issue, observed_task)) == expected


def test_a_waiting_task_is_given_to_a_free_ssh_agent_and_dispatched() -> None:
    """Placement: assigned with a new lease and a deadline, comment, then dispatch; its
    status/doing follows once it has lasted STATUS_SETTLE (see the settle test below)."""
    actions = planned(
        issue("fleet/task", "agent/developer", "needs/code:python", "status/todo"),
        waiting(required_role="developer", required_capabilities=("code:python",)),
        agents=(SSH_AGENT,),
    )
    assert kinds(actions) == [
        "comment",
        "save:assigned:created->assigned",
        "dispatch:box-1",
    ]
    saved = next(a for a in actions if isinstance(a, SaveTask))
    assert saved.task.lease_generation == 1 and saved.task.attempt == 1
    assert saved.task.deadline_at == NOW + timedelta(seconds=SETTINGS.timeouts.task_default)
    comment = next(a for a in actions if isinstance(a, UpsertComment))
    assert (
        "box-1" in comment.body
        and saved.task.branch in comment.body
        and "attempt 1" in comment.body
    )


def test_closing_the_issue_mid_run_cancels_and_stops_the_run() -> None:
    """Cancel saves first, then stops the process on the host."""
    running = task(TaskState.RUNNING, agent_id="box-1", lease_generation=1, attempt=1)
    actions = planned(
        issue("fleet/task", state=IssueState.CLOSED), running, agents=(SSH_AGENT,), dispatched=True
    )
    assert kinds(actions) == ["save:cancelled:running->cancelled", "stop"]


def test_a_run_past_its_deadline_fails_and_is_retried_after_a_backoff() -> None:
    """Timeout → failed (retryable) → requeued with not_before = now + backoff, run stopped."""
    running = task(
        TaskState.RUNNING,
        agent_id="box-1",
        lease_generation=1,
        attempt=1,
        deadline_at=NOW - timedelta(seconds=1),
    )
    actions = planned(
        issue("fleet/task", "status/doing"), running, agents=(SSH_AGENT,), dispatched=True
    )
    saved = next(a for a in actions if isinstance(a, SaveTask))
    assert [(e.from_state, e.to_state) for e in saved.events if e.to_state] == [
        (TaskState.RUNNING, TaskState.FAILED),
        (TaskState.FAILED, TaskState.CREATED),
    ]
    assert saved.task.not_before == NOW + timedelta(seconds=SETTINGS.retries.backoff_initial)
    assert "timed out" in saved.task.failure_reason
    assert "stop" in kinds(actions)
    assert saved.task.wait_reason == (
        f"backing off after attempt 1: next try in {format_duration(SETTINGS.retries.backoff_initial)}"
    )


def test_after_the_last_retry_the_task_stays_failed_with_its_reason() -> None:
    """attempt > max_retries: no requeue; the reason stays on the task and the issue."""
    last = SETTINGS.retries.max_retries + 1
    failed = task(
        TaskState.FAILED,
        agent_id="box-1",
        lease_generation=last,
        attempt=last,
        failure_reason="timed out",
        failure_retryable=True,
    )
    actions = planned(issue("fleet/task", "status/doing"), failed, agents=(SSH_AGENT,))
    saved = next(a for a in actions if isinstance(a, SaveTask))
    assert saved.task.state is TaskState.FAILED and not saved.task.failure_retryable
    assert [e.kind for e in saved.events] == ["gave_up"]
    assert "add:status/failed" in kinds(actions)
    comment = next(a for a in actions if isinstance(a, UpsertComment))
    assert "timed out" in comment.body


def test_a_run_this_process_lost_is_requeued() -> None:
    """An ssh task assigned but not running here (e.g. after a restart) goes back to the queue."""
    orphan = task(
        TaskState.RUNNING,
        agent_id="box-1",
        lease_generation=1,
        attempt=1,
        deadline_at=NOW + timedelta(hours=1),
    )
    actions = planned(
        issue("fleet/task", "status/doing"), orphan, agents=(SSH_AGENT,), dispatched=False
    )
    saved = next(a for a in actions if isinstance(a, SaveTask))
    states = [e.to_state for e in saved.events if e.to_state]
    assert states[:2] == [TaskState.AGENT_LOST, TaskState.CREATED]
    # The agent is free again, so the task is placed again at once, under a new lease.
    assert saved.task.state is TaskState.ASSIGNED and saved.task.lease_generation == 2


def test_a_new_wait_reason_is_written_once() -> None:
    """The comment changes when the reason changes, not on every pass."""
    first = planned(issue("fleet/task", "status/todo"), waiting())
    assert first == ()
    offline = SSH_AGENT.model_copy(update={"status": "offline"})
    changed = planned(
        issue("fleet/task", "agent/developer", "status/todo"),
        waiting(required_role="developer"),
        agents=(offline,),
    )
    assert kinds(changed) == ["comment", "save:created:waiting"]


def test_labels_set_priority_role_capabilities_hold_and_pin() -> None:
    """The label vocabulary is read into what the task needs."""
    spec = read_labels(
        (
            "fleet/task",
            "agent/developer",
            "needs/code:python",
            "needs/test",
            "priority/high",
            "fleet/hold",
            "fleet/assign:box-1",
        ),
        SETTINGS.labels,
    )
    assert spec.wanted and spec.hold
    assert (spec.priority, spec.role, spec.capabilities, spec.pinned) == (
        Priority.HIGH,
        "developer",
        ("code:python", "test"),
        AgentId("box-1"),
    )


def test_label_changes_follow_the_task_with_an_update_event() -> None:
    """A new needs/ label on a waiting task updates what it needs, recorded as an event."""
    actions = planned(issue("fleet/task", "status/todo", "needs/code:rust", "priority/low"), task())
    [save] = [a for a in actions if isinstance(a, SaveTask)]
    assert save.task.required_capabilities == ("code:rust",)
    assert save.task.priority is Priority.LOW
    assert next(e.kind for e in save.events) == "updated"


def test_an_illegal_move_is_not_planned_for_a_completed_task() -> None:
    """A completed task whose issue is closed later stays completed (terminal); its status
    label and status comment are all that is written, and only while they are not current."""
    closed = IssueState.CLOSED
    done = task(TaskState.COMPLETED)
    assert kinds(planned(issue("fleet/task", state=closed), done)) == [
        "add:status/done",
        "comment",
        "save:completed",
    ]
    said = done.model_copy(update={"comment_digest": comment_digest(
        status_comment(done, agents=(), settings=SETTINGS, now=NOW))})  # fmt: skip
    assert planned(issue("fleet/task", "status/done", state=closed), said) == ()


@pytest.mark.parametrize(
    ("state", "label"),
    [
        (TaskState.COMPLETED, "status/done"),
        (TaskState.FAILED, "status/failed"),
        (TaskState.REVIEW_PENDING, "status/review"),
    ],
)
def test_the_status_label_of_an_issue_closed_by_its_merge_follows_the_task(
    state: TaskState, label: str
) -> None:
    """The assignment controller is the one writer of status labels and the status comment,
    closed issues included: a task whose merged PR closed its issue gets the label of its
    state and its status comment (who took it; why it failed), and nothing else."""
    closed = issue("fleet/task", "status/review" if label != "status/review" else "status/doing",
                   state=IssueState.CLOSED)  # fmt: skip
    settled = NOW - timedelta(seconds=STATUS_SETTLE)
    actions = planned(
        closed, task(state, pr_number=7, failure_reason="tests failed", state_since=settled)
    )
    assert kinds(actions) == [f"add:{label}", "comment", f"save:{state}"]
    (comment,) = [a for a in actions if isinstance(a, UpsertComment)]
    said = {TaskState.COMPLETED: "🤖 Taken", TaskState.FAILED: "❌ Failed",
            TaskState.REVIEW_PENDING: "🤖 Taken"}[state]  # fmt: skip
    assert comment.body.startswith(said)


def test_a_stale_review_pass_never_writes_a_status_label_over_done() -> None:
    """Whatever order the controllers run in, no status label is written once the task is
    terminal except its own: a completed task's issue is only ever given status/done."""
    for labels in [
        ("fleet/task",),
        ("fleet/task", "status/review"),
        ("fleet/task", "status/doing"),
    ]:
        for state in (IssueState.OPEN, IssueState.CLOSED):
            actions = planned(issue(*labels, state=state), task(TaskState.COMPLETED, pr_number=7))
            added = [n for a in actions if isinstance(a, AddLabels) for n in a.names]
            assert set(added) <= {"status/done"}, (labels, state, added)


# --- what the status comment says, and when --------------------------------------------

PULL_AGENT = SSH_AGENT.model_copy(update={"id": AgentId("puller"), "mode": ExecutionMode.PULL})


def test_a_short_wait_for_a_free_slot_posts_no_comment() -> None:
    """A task that waits only for a slot (a pull agent yet to ask, every agent busy) gets its
    status label at once, and a status comment only once the wait has lasted
    ``timeouts.queue_notice`` seconds; the reconcile asks to look again then."""
    notice = SETTINGS.timeouts.queue_notice
    first = planned(issue("fleet/task"), None, agents=(PULL_AGENT,))
    assert kinds(first) == ["add:status/todo", "save:created:None->created,waiting"]
    (saved,) = [a.task for a in first if isinstance(a, SaveTask)]
    assert saved.wait_reason.startswith("waiting for a pull agent")
    assert next_check(saved, now=NOW, settings=SETTINGS) == pytest.approx(notice + 0.5)
    still = planned(issue("fleet/task", "status/todo"), saved, agents=(PULL_AGENT,),
                    now=NOW + timedelta(seconds=notice - 1))  # fmt: skip
    assert still == ()
    later = NOW + timedelta(seconds=notice)
    said = planned(issue("fleet/task", "status/todo"), saved, agents=(PULL_AGENT,), now=later)
    (comment,) = [a for a in said if isinstance(a, UpsertComment)]
    assert comment.body.startswith("⏳ Waiting for an agent: waiting for a pull agent")


def test_a_wait_that_needs_a_change_is_said_at_once() -> None:
    """No agent has what the task needs: nothing will change by waiting, so it is said now."""
    actions = planned(issue("fleet/task", "needs/gpu"), None, agents=(PULL_AGENT,))
    (comment,) = [a for a in actions if isinstance(a, UpsertComment)]
    assert "no agent has" in comment.body


def test_the_line_naming_the_agent_stays_through_review_and_done() -> None:
    """Once taken, the status comment names the agent, branch and attempt; going to review
    and to done changes the label only (the result comment tells how it ended)."""
    running = task(TaskState.RUNNING, agent_id="box-1", lease_generation=1, attempt=1)
    body = status_comment(running, agents=(SSH_AGENT,), settings=SETTINGS, now=NOW)
    assert body.startswith("🤖 Taken by **box-1** · branch `task/")
    assert "· attempt 1" in body
    said = comment_digest(body)
    for state, label in [
        (TaskState.REVIEW_PENDING, "status/review"),
        (TaskState.COMPLETED, "status/done"),
    ]:
        moved = running.model_copy(
            update={
                "state": state,
                "comment_digest": said,
                "state_since": NOW - timedelta(seconds=STATUS_SETTLE),
            }
        )
        actions = planned(issue("fleet/task", "status/doing"), moved, agents=(SSH_AGENT,))
        assert f"add:{label}" in kinds(actions)
        assert not [a for a in actions if isinstance(a, UpsertComment)], state
    failed = running.model_copy(
        update={"state": TaskState.FAILED, "comment_digest": said, "failure_reason": "timed out"}
    )
    actions = planned(issue("fleet/task", "status/doing"), failed, agents=(SSH_AGENT,))
    (comment,) = [a for a in actions if isinstance(a, UpsertComment)]
    assert comment.body.startswith("❌ Failed after 1 attempt(s): timed out")


def test_a_merged_task_waits_for_its_check_not_for_the_review_label() -> None:
    """A task in review whose pull request was seen merged moments ago has only its receipt
    check left: `status/review` is not written (open or closed by the merge) and the
    reconcile looks again when MERGE_SETTLE ends; past it the label is written after all."""
    in_review = task(TaskState.REVIEW_PENDING, agent_id="box-1", lease_generation=1, attempt=1,
                     pr_number=7, state_since=NOW - timedelta(seconds=60))  # fmt: skip
    for state in (IssueState.OPEN, IssueState.CLOSED):
        shown = issue("fleet/task", "status/doing", state=state)
        fresh = Observed(REPO, 12, shown, in_review, tasks=(in_review,), merged_for=1.0)
        added = [n for a in plan(fresh, now=NOW, settings=SETTINGS)
                 if isinstance(a, AddLabels) for n in a.names]  # fmt: skip
        assert "status/review" not in added, state
        assert merge_settle_left(fresh, in_review) == pytest.approx(MERGE_SETTLE - 1.0)
        late = Observed(REPO, 12, shown, in_review, tasks=(in_review,),
                        merged_for=MERGE_SETTLE + 1)  # fmt: skip
        added = [n for a in plan(late, now=NOW, settings=SETTINGS)
                 if isinstance(a, AddLabels) for n in a.names]  # fmt: skip
        assert added == ["status/review"], state
    done = in_review.model_copy(update={"state": TaskState.COMPLETED})
    finished = Observed(REPO, 12, issue("fleet/task", "status/doing"), done, tasks=(done,),
                        merged_for=1.0)  # fmt: skip
    assert "add:status/done" in kinds(plan(finished, now=NOW, settings=SETTINGS))


def test_a_passing_state_reaches_the_issue_once_it_has_lasted_status_settle() -> None:
    """Taken or in review: the label replaces the one the issue shows once the task has been
    in that state for STATUS_SETTLE; sooner nothing is written (the reconcile looks again when
    the hold ends), so a state left within the hold never reaches the issue. The first status
    label of an issue, `status/todo`, and the end are written at once."""
    taken = task(TaskState.RUNNING, agent_id="puller", lease_generation=1, attempt=1,
                 state_since=NOW)  # fmt: skip

    def added(shown: Issue, the_task: Task, now: datetime) -> list[str]:
        observed = Observed(REPO, 12, shown, the_task, agents=(PULL_AGENT,), tasks=(the_task,))
        return [n for a in plan(observed, now=now, settings=SETTINGS)
                if isinstance(a, AddLabels) for n in a.names]  # fmt: skip

    todo = issue("fleet/task", "status/todo")
    assert added(todo, taken, NOW) == []
    held = Observed(REPO, 12, todo, taken, agents=(PULL_AGENT,), tasks=(taken,))
    left = label_settle_left(held, taken, now=NOW, vocabulary=SETTINGS.labels)
    assert left == pytest.approx(STATUS_SETTLE)
    assert added(todo, taken, NOW + timedelta(seconds=STATUS_SETTLE)) == ["status/doing"]
    # In review a second later: that label waits in turn, and doing never reached the issue.
    in_review = taken.model_copy(update={"state": TaskState.REVIEW_PENDING, "pr_number": 7,
                                         "state_since": NOW + timedelta(seconds=1)})  # fmt: skip
    assert added(todo, in_review, NOW + timedelta(seconds=2)) == []
    assert added(todo, in_review, NOW + timedelta(seconds=1 + STATUS_SETTLE)) == ["status/review"]
    # At once: an issue with no status label yet, a task sent back to the queue, the end.
    assert added(issue("fleet/task"), taken, NOW) == ["status/doing"]
    for state, label in [
        (TaskState.COMPLETED, "status/done"),
        (TaskState.FAILED, "status/failed"),
    ]:
        ended = taken.model_copy(update={"state": state, "state_since": NOW})
        assert added(issue("fleet/task", "status/doing"), ended, NOW) == [label]


def filed_and_looked_at(
    forge: ForgejoSandbox, reconciler: AssignmentController, store: Store
) -> tuple[int, Key, Task]:
    """A labelled issue, its first reconcile, and the task it made."""
    number = forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task"])
    key = issue_key(DEMO_REPO, number)
    reconciler.reconcile(key)
    created = store.find_task(task_id_for(DEMO_REPO, number))
    assert created is not None
    return number, key, created


def test_a_held_label_is_written_when_the_reconcile_looks_again(
    forge: ForgejoSandbox,
    forge_clock: ManualClock,
    controller: tuple[AssignmentController, ForgejoGateway, Store],
) -> None:
    """The reconcile that holds a label asks to look again when the hold ends; that look
    writes it."""
    reconciler, gateway, store = controller
    number, key, created = filed_and_looked_at(forge, reconciler, store)
    taken, _ = assign(created, AgentId("puller"), now=forge_clock(), actor="agent:puller")
    store.put_task(taken)
    result = reconciler.reconcile(key)
    assert result.requeue_after == pytest.approx(STATUS_SETTLE + 0.1)
    assert "status/todo" in gateway.get_issue(DEMO_REPO, number).labels
    forge_clock.advance(STATUS_SETTLE)
    reconciler.reconcile(key)
    assert "status/doing" in gateway.get_issue(DEMO_REPO, number).labels


# --- against the in-memory Forgejo ------------------------------------------------------


@contextlib.contextmanager
def assignment_rig(
    forge: ForgejoSandbox, clock: ManualClock, state_dir: Path, settings: Settings
) -> Iterator[tuple[AssignmentController, ForgejoGateway, Store]]:
    """An assignment controller over the in-memory Forgejo (labels made) and a store on disk."""
    gateway = ForgejoGateway(
        IN_PROCESS_URL, forge.admin_token, transport=httpx.WSGITransport(app=forge.app)
    )
    gateway.ensure_labels(DEMO_REPO, label_specs(settings))
    store = Store.open(state_dir)
    actuator = Actuator(ActContext(gateway=gateway, store=store))
    try:
        yield (
            AssignmentController(gateway, store, actuator, settings=lambda: settings, clock=clock),
            gateway,
            store,
        )
    finally:
        store.close()
        gateway.close()


@pytest.fixture
def controller(
    forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> Iterator[tuple[AssignmentController, ForgejoGateway, Store]]:
    with assignment_rig(forge, forge_clock, tmp_path / "state", SETTINGS) as rig:
        yield rig


def test_reconcile_creates_the_task_and_a_second_pass_makes_no_write(
    forge: ForgejoSandbox, controller: tuple[AssignmentController, ForgejoGateway, Store]
) -> None:
    """First pass: task + status/todo. Second pass over the unchanged world: zero writes."""
    reconciler, gateway, store = controller
    number = forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task", "priority/high"])
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    assert "status/todo" in gateway.get_issue(DEMO_REPO, number).labels
    created = store.find_task(task_id_for(DEMO_REPO, number))
    assert created is not None and created.priority is Priority.HIGH
    writes, events = gateway.writes, len(store.events_for(created.id))
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    assert gateway.writes == writes
    assert len(store.events_for(created.id)) == events
    assert store.find_task(created.id) == created


def test_a_plan_made_before_the_task_completed_writes_no_status_label(
    forge: ForgejoSandbox, controller: tuple[AssignmentController, ForgejoGateway, Store]
) -> None:
    """A pass that saw the task in review, acting after the receipts controller completed it,
    writes no status/review over the finished task: the loop observes again and writes done."""
    reconciler, gateway, store = controller
    number, key, created = filed_and_looked_at(forge, reconciler, store)
    in_review = created.changed(now=created.updated_at, state=TaskState.REVIEW_PENDING,
                                lease_generation=1, pr_number=7)  # fmt: skip
    store.put_task(in_review)
    observed = reconciler.observe(key)
    later = created.updated_at + timedelta(seconds=STATUS_SETTLE)  # past the label's hold
    actions = plan(observed, now=later, settings=SETTINGS)
    assert any(isinstance(a, AddLabels) and "status/review" in a.names for a in actions)
    store.put_task(in_review.changed(now=created.updated_at, state=TaskState.COMPLETED))
    writes = gateway.writes
    with pytest.raises(StaleStateError):
        Actuator(ActContext(gateway=gateway, store=store)).apply(actions)
    assert gateway.writes == writes
    assert "status/review" not in gateway.get_issue(DEMO_REPO, number).labels
    reconciler.reconcile(key)
    labels = gateway.get_issue(DEMO_REPO, number).labels
    assert "status/done" in labels and "status/review" not in labels


def test_closing_the_issue_cancels_the_task(
    forge: ForgejoSandbox, controller: tuple[AssignmentController, ForgejoGateway, Store]
) -> None:
    """Close → cancelled, with the reason in the task's history."""
    reconciler, gateway, store = controller
    number = forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task"])
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    gateway.edit_issue(DEMO_REPO, number, state="closed")
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    cancelled = store.find_task(task_id_for(DEMO_REPO, number))
    assert cancelled is not None and cancelled.state is TaskState.CANCELLED
    assert store.events_for(cancelled.id)[-1].reason == "the issue was closed"


def test_a_close_is_looked_at_once_for_the_issues_waiting_on_it(
    forge: ForgejoSandbox,
    forge_clock: ManualClock,
    controller: tuple[AssignmentController, ForgejoGateway, Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issues that depend on a closed issue are read (and woken) when it is first seen
    closed, not on every later reconcile of it; closed again after a reopen, once more. (They
    are read only while some task is held: one is, here.)"""
    reconciler, gateway, store = controller
    asked: list[int] = []
    real = gateway.list_blocks
    monkeypatch.setattr(gateway, "list_blocks", lambda repo, n: asked.append(n) or real(repo, n))
    paused = forge.create_issue(DEMO_REPO, "Later", labels=["fleet/task", "fleet/hold"])
    reconciler.reconcile(issue_key(DEMO_REPO, paused))
    assert store.has_held_tasks()
    number = forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task"])
    key = issue_key(DEMO_REPO, number)

    def changed(state: str) -> None:
        forge.set_issue_state(DEMO_REPO, number, state)
        gateway.seen.invalidate(DEMO_REPO, number)  # as its webhook does, through the queue

    reconciler.reconcile(key)
    changed("closed")
    for _ in range(3):
        reconciler.reconcile(key)
    assert asked == [number]
    changed("open")
    reconciler.reconcile(key)
    forge_clock.advance(5)  # closed again later: another close
    changed("closed")
    reconciler.reconcile(key)
    assert asked == [number, number]


def test_a_task_waiting_on_its_question_reads_its_dependencies_once_per_reconcile(
    forge: ForgejoSandbox,
    controller: tuple[AssignmentController, ForgejoGateway, Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The question's state and the dependency hold come from one read of the issue's
    dependencies; the task waits for the answer."""
    reconciler, gateway, store = controller
    number = forge.create_issue(DEMO_REPO, "Serve the API", labels=["fleet/task"])
    asked = forge.create_issue(DEMO_REPO, "Question for #1", labels=["fleet/question"])
    forge.add_dependency(DEMO_REPO, number, on=asked)
    key = issue_key(DEMO_REPO, number)
    reconciler.reconcile(key)
    created = store.get_task(task_id_for(DEMO_REPO, number))
    question = Question(number=1, text="Which port?", asked_at=NOW, asked_by=AgentId("a1"),
                        lease_generation=1, issue_number=asked)  # fmt: skip
    store.replace_task(created.changed(now=NOW, questions=(question,)), expected=created)
    reads: list[int] = []
    real = gateway.list_dependencies
    monkeypatch.setattr(
        gateway, "list_dependencies", lambda repo, n: reads.append(n) or real(repo, n)
    )
    reconciler.reconcile(key)
    assert reads == [number]
    waiting = store.get_task(created.id)
    assert waiting.on_hold and waiting.wait_reason == f"waiting for the answer to #{asked}"


def test_a_pull_request_number_is_not_a_task(
    forge: ForgejoSandbox, controller: tuple[AssignmentController, ForgejoGateway, Store]
) -> None:
    """An assignment key naming a pull request plans nothing (pull requests are the review
    controller's)."""
    reconciler, gateway, store = controller
    forge.push(DEMO_REPO, "feature", files={"a.txt": "a"}, message="a")
    number = forge.open_pull(DEMO_REPO, "feature", title="Feature")
    before = gateway.writes
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    assert gateway.writes == before and store.list_tasks() == []


def test_forgejo_errors_propagate_for_the_loop_to_retry(tmp_path: Path) -> None:
    """A Forgejo outage is not swallowed: the loop sees the error, backs off, and nothing is
    written locally."""
    from reconciler.errors import ForgejoServerError

    down = httpx.MockTransport(lambda request: httpx.Response(503, json={"message": "down"}))
    gateway = ForgejoGateway(IN_PROCESS_URL, "token", transport=down, read_retries=0)
    with Store.open(tmp_path / "state") as store:
        reconciler = AssignmentController(
            gateway,
            store,
            Actuator(ActContext(gateway=gateway, store=store)),
            settings=lambda: SETTINGS,
            clock=lambda: NOW,
        )
        with pytest.raises(ForgejoServerError):
            reconciler.reconcile(issue_key(DEMO_REPO, 1))
        assert store.list_tasks() == []


def test_a_slot_freed_by_a_finished_run_is_offered_to_the_waiting_tasks() -> None:
    """The run of #12 ended in review: the task waiting behind it for box-1 is looked at now."""
    from reconciler.engine.reconcile import Enqueue

    in_review = task(
        TaskState.REVIEW_PENDING,
        agent_id="box-1",
        lease_generation=1,
        attempt=1,
        pr_number=7,
        comment_digest=comment_digest(
            status_comment(
                task(
                    TaskState.REVIEW_PENDING,
                    agent_id="box-1",
                    lease_generation=1,
                    attempt=1,
                    pr_number=7,
                ),
                agents=(),
                settings=SETTINGS,
                now=NOW,
            )
        ),
    )
    behind = task(
        id=task_id_for(REPO, 13),
        issue_number=13,
        required_role="developer",
        required_capabilities=("code:python",),
        wait_reason="the matching agent at capacity",
    )
    observed = Observed(
        REPO,
        12,
        issue("fleet/task", "status/review"),
        in_review,
        agents=(SSH_AGENT,),
        tasks=(in_review, behind),
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    assert [a.key for a in actions if isinstance(a, Enqueue)] == [issue_key(REPO, 13)]
