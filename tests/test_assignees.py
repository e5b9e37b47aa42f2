"""Assignees (issue 14, point 4): the issue of a task is assigned to the Forgejo login of the
agent that holds it, moved when the task goes to another agent, cleared when it is cancelled;
people's own assignees stay. The plan table, the in-memory Forgejo answering bad assignees as
Forgejo does, and the real daemon with pull agents registering their logins.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import structlog.testing

from reconciler.agent.client import AgentApi
from reconciler.engine.reconcile import ActContext, SetAssignees
from reconciler.fleet.api import RegisterRequest
from reconciler.fleet.assignees import wanted_assignees
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import Agent, AgentId, Task, TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL
from tests.test_worker import ENROLMENT, daemon, queue_issues
from webhook.daemon import Daemon

__all__ = ["daemon"]  # the daemon fixture, used by the test below

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
A = Agent(id=AgentId("a1"), type="codex", forgejo_login="bot-a", registered_at=NOW)
B = Agent(id=AgentId("b1"), type="codex", forgejo_login="bot-b", registered_at=NOW)
ANON = Agent(id=AgentId("c1"), type="codex", registered_at=NOW)


def task(state: TaskState, agent: str | None = None) -> Task:
    tid = task_id_for(DEMO_REPO, 12)
    return Task.model_validate(
        {"id": tid, "repo": DEMO_REPO, "issue_number": 12, "title": "t", "state": state,
         "branch": f"task/{tid}-t", "created_at": NOW, "updated_at": NOW, "agent_id": agent}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "current", "state", "holder", "expected"),
    [
        ("assigned: the holder's login", (), TaskState.ASSIGNED, "a1", ("bot-a",)),
        ("running, already so", ("bot-a",), TaskState.RUNNING, "a1", ("bot-a",)),
        ("a person's assignee stays", ("alice",), TaskState.RUNNING, "a1", ("alice", "bot-a")),
        ("moved to another agent", ("bot-a",), TaskState.ASSIGNED, "b1", ("bot-b",)),
        ("in review: still the holder", ("bot-a",), TaskState.REVIEW_PENDING, "a1", ("bot-a",)),
        ("requeued: cleared", ("alice", "bot-a"), TaskState.CREATED, None, ("alice",)),
        ("lost: cleared", ("bot-a",), TaskState.AGENT_LOST, None, ()),
        ("cancelled: cleared", ("BOT-A",), TaskState.CANCELLED, "a1", ()),
        ("an agent without a login", ("bot-a",), TaskState.RUNNING, "c1", ()),
        ("completed: left alone", ("bot-a",), TaskState.COMPLETED, "a1", None),
        ("failed: left alone", ("bot-b",), TaskState.FAILED, "a1", None),
    ],
)
def test_wanted_assignees(
    name: str,
    current: tuple[str, ...],
    state: TaskState,
    holder: str | None,
    expected: tuple[str, ...] | None,
) -> None:
    """What the issue's assignees should be for each task state (pure)."""
    assert wanted_assignees(current, task(state, holder), (A, B, ANON)) == expected


def test_assignees_are_written_and_a_refused_login_is_logged_not_raised(
    forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The gateway's PATCH sets the whole set (``[]`` clears it); a login that does not exist
    or has no write access gets Forgejo's 500 and changes nothing: the action logs it and the
    reconcile goes on."""
    forge.create_user("bot-a")
    forge.create_user("outsider")
    gateway = ForgejoGateway(
        IN_PROCESS_URL,
        forge.admin_token,
        read_retries=0,
        transport=httpx.WSGITransport(app=forge.app),
    )
    gateway.add_collaborator(DEMO_REPO, "bot-a")
    number = forge.create_issue(DEMO_REPO, "Assign me")
    with Store.open(tmp_path / "state") as store:
        ctx = ActContext(gateway=gateway, store=store)
        fleet = frozenset({"bot-a", "nobody-here", "outsider"})
        SetAssignees(DEMO_REPO, number, ("bot-a",), fleet_logins=fleet, holder="bot-a").apply(ctx)
        assert gateway.get_issue(DEMO_REPO, number).assignees == ("bot-a",)
        for login in ("nobody-here", "outsider"):
            with structlog.testing.capture_logs() as logs:
                SetAssignees(DEMO_REPO, number, (login,), fleet_logins=fleet,
                             holder=login).apply(ctx)  # fmt: skip
            [refused] = [e for e in logs if e["event"] == "issue.assignees_refused"]
            assert refused["logins"] == [login]
            assert gateway.get_issue(DEMO_REPO, number).assignees == ("bot-a",)
        # A person's assignee added after the plan looked is read before the write, and kept.
        forge.create_user("alice")
        gateway.add_collaborator(DEMO_REPO, "alice")
        gateway.edit_issue(DEMO_REPO, number, assignees=("alice", "bot-a"))
        SetAssignees(DEMO_REPO, number, (), fleet_logins=fleet).apply(ctx)
        assert gateway.get_issue(DEMO_REPO, number).assignees == ("alice",)
    gateway.close()


def wait_for_assignees(gateway: ForgejoGateway, number: int, expected: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 30
    while (seen := gateway.get_issue(DEMO_REPO, number).assignees) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"assignees {seen}, expected {expected}")
        time.sleep(0.05)


def test_the_daemon_assigns_moves_and_clears_the_issues_assignee(
    daemon: Daemon, served_forge: ForgejoSandbox
) -> None:
    """Two pull agents with their logins: taken by the first → its login; the first leaves
    (its task requeued) → cleared, taken by the second → the second's login; the issue closed
    → cancelled and cleared. A person's assignee stays throughout."""
    for login in ("bot-a", "bot-b", "alice"):
        served_forge.create_user(login)
    gateway = ForgejoGateway(served_forge.url, served_forge.admin_token)
    try:
        for login in ("bot-a", "bot-b", "alice"):
            gateway.add_collaborator(DEMO_REPO, login)
        [queued] = queue_issues(daemon, served_forge, ["Assign me"])
        gateway.edit_issue(DEMO_REPO, queued.issue_number, assignees=("alice",))
        agents = {}
        for agent_id, login in (("a1", "bot-a"), ("b1", "bot-b")):
            api = AgentApi(daemon.url, timeout=10)
            api.register(
                RegisterRequest(agent_id=agent_id, type="codex", forgejo_login=login),
                credential=ENROLMENT,
            )
            agents[agent_id] = api
        handout = agents["a1"].dequeue()
        assert handout is not None and handout.task.id == queued.id
        wait_for_assignees(gateway, queued.issue_number, ("alice", "bot-a"))
        agents["a1"].deregister()
        wait_for_assignees(gateway, queued.issue_number, ("alice",))
        assert daemon.assembly.store.get_task(queued.id).state is TaskState.CREATED
        assert agents["b1"].dequeue() is not None
        wait_for_assignees(gateway, queued.issue_number, ("alice", "bot-b"))
        gateway.edit_issue(DEMO_REPO, queued.issue_number, state="closed")
        daemon.assembly.resync.full()
        wait_for_assignees(gateway, queued.issue_number, ("alice",))
        # The assignee is cleared by the same pass that cancels, just before the task is saved.
        deadline = time.monotonic() + 30
        while daemon.assembly.store.get_task(queued.id).state is not TaskState.CANCELLED:
            assert time.monotonic() < deadline, "the task was not cancelled"
            time.sleep(0.05)
    finally:
        gateway.close()
