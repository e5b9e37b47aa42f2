"""Dependencies and approval gates end to end: the in-memory Forgejo, signed webhooks or the
resync, the loop, the assignment controller, and a pull agent's view of the queue.

A task "starts" here when a pull agent asking for work is given it (``next_task_for``, what
``POST /api/v1/tasks/dequeue`` hands out); a held task is never handed out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.keys import issue_key
from reconciler.models import Agent, AgentId, AgentStatus, ExecutionMode
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    ApprovalSettings,
)
from tests.daemon_rig import FlowWorld, hooked_daemon
from tests.sandbox_fixtures import DEMO_REPO, ManualClock

SECRET = "governance-secret"
pytest_plugins = ("tests.sandbox_fixtures",)


class World(FlowWorld):
    def grant(self, login: str, permission: str) -> None:
        """Give ``login`` this access to the repository, as its owner would."""
        with self.forge.state.lock:
            admin = self.forge.state.user_named("fleet-admin")
            repo = self.forge.state.repo(DEMO_REPO, admin)
            self.forge.state.add_collaborator(repo, admin, login, permission=permission)


@pytest.fixture
def world(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[World]:
    store, assembly, server = hooked_daemon(forge, forge_clock, tmp_path / "state", secret=SECRET)
    assembly.loop.drain()
    store.put_agent(
        Agent(
            id=AgentId("puller"),
            type="claude-code",
            max_concurrency=1,
            status=AgentStatus.ONLINE,
            mode=ExecutionMode.PULL,
            registered_at=forge_clock(),
            last_heartbeat_at=forge_clock(),
        )
    )
    forge.create_user("bob")  # no access to the repository: not trusted
    forge.create_user("maintainer")
    made = World(forge=forge, assembly=assembly, clock=forge_clock)
    made.grant("maintainer", "write")
    yield made
    forge.flush_webhooks()
    server.stop()
    assembly.gateway.close()
    store.close()


def test_a_task_waits_for_its_open_dependency_and_starts_when_the_webhook_says_it_closed(
    world: World,
) -> None:
    """Blocked → held with "waiting for #1: open"; the blocker's close webhook requeues it."""
    blocker = world.forge.create_issue(DEMO_REPO, "Design the schema")
    number = world.forge.create_issue(DEMO_REPO, "Build on the schema")
    world.forge.add_dependency(DEMO_REPO, number, on=blocker)
    world.forge.add_labels(DEMO_REPO, number, ["fleet/task"])
    world.settle()
    task = world.task(number)
    assert task.on_hold and task.wait_reason == f"waiting for #{blocker}: open"
    assert world.handed_out() is None
    assert f"waiting for #{blocker}: open" in world.status_comment(number)

    world.forge.set_issue_state(DEMO_REPO, blocker, "closed")
    world.forge.flush_webhooks()
    outcomes = world.assembly.loop.drain()
    # The blocker's own key, then the blocked issue's key it enqueued — one reconcile each.
    assert [o.key for o in outcomes][:2] == [
        issue_key(DEMO_REPO, blocker),
        issue_key(DEMO_REPO, number),
    ]
    task = world.task(number)
    assert not task.on_hold and task.attempt == 0
    handed = world.handed_out()
    assert handed is not None and handed.issue_number == number


def test_without_webhooks_the_next_resync_starts_the_blocked_task(world: World) -> None:
    """No webhook arrives for the blocker's close; the next incremental resync looks again."""
    blocker = world.forge.create_issue(DEMO_REPO, "Design the schema")
    number = world.forge.create_issue(DEMO_REPO, "Build on the schema")
    world.forge.add_dependency(DEMO_REPO, number, on=blocker)
    world.forge.add_labels(DEMO_REPO, number, ["fleet/task"])
    world.settle()
    assert world.task(number).on_hold

    world.clock.advance(120)
    world.assembly.resync.incremental()  # the blocked issue's own changes are behind us now
    world.assembly.loop.drain()
    world.forge.webhooks_enabled = False
    world.clock.advance(120)
    world.forge.set_issue_state(DEMO_REPO, blocker, "closed")
    world.clock.advance(120)
    world.assembly.resync.incremental()
    world.assembly.loop.drain()
    assert not world.task(number).on_hold
    handed = world.handed_out()
    assert handed is not None and handed.issue_number == number


def test_a_dependency_cycle_is_reported_on_the_issue_and_not_looped_on(world: World) -> None:
    """#1 → #2 → #3 → #1: each task waits, saying the cycle; settling ends (no requeue loop)."""
    one = world.forge.create_issue(DEMO_REPO, "one", labels=["fleet/task"])
    two = world.forge.create_issue(DEMO_REPO, "two")
    three = world.forge.create_issue(DEMO_REPO, "three")
    world.forge.add_dependency(DEMO_REPO, one, on=two)
    world.forge.add_dependency(DEMO_REPO, two, on=three)
    world.forge.add_dependency(DEMO_REPO, three, on=one)
    world.settle()
    task = world.task(one)
    assert task.on_hold
    assert task.wait_reason.startswith(f"dependency cycle: #{one} → #{two} → #{three} → #{one}")
    assert "dependency cycle" in world.status_comment(one)
    world.assembly.queue.add(issue_key(DEMO_REPO, one))
    outcomes = world.assembly.loop.drain()
    assert [o.actions for o in outcomes] == [()], "an unchanged cycle costs no write"


def test_an_untrusted_authors_issue_waits_for_approval_without_burning_retries(
    world: World,
) -> None:
    """bob's issue is held, says why, and is never handed out; no attempt is spent."""
    number = world.forge.create_issue(DEMO_REPO, "Please add X", author="bob")
    world.forge.add_labels(DEMO_REPO, number, ["fleet/task"])
    world.settle()
    task = world.task(number)
    assert task.on_hold and task.attempt == 0 and task.state == "created"
    assert task.wait_reason == (
        "waiting for a maintainer's approval: the issue's author bob is not trusted; "
        "a maintainer adds fleet/approved"
    )
    assert world.handed_out() is None
    assert "maintainer's approval" in world.status_comment(number)


def test_the_authors_own_approval_does_nothing_and_a_maintainers_starts_the_task(
    world: World,
) -> None:
    """The approval label counts only from a trusted user other than the author; removing it
    withdraws the approval again."""
    number = world.forge.create_issue(DEMO_REPO, "Please add X", author="bob")
    world.forge.add_labels(DEMO_REPO, number, ["fleet/task"])
    # Labelling takes write access in Forgejo: bob had it for a moment (a team allowed to
    # triage issues, say) and used it on his own issue; by the reconcile he has it no more.
    world.grant("bob", "write")
    world.forge.add_labels(DEMO_REPO, number, ["fleet/approved"], author="bob")
    world.grant("bob", "read")
    world.settle()
    task = world.task(number)
    assert task.on_hold and "maintainer's approval" in task.wait_reason
    assert world.handed_out() is None

    world.forge.remove_label(DEMO_REPO, number, "fleet/approved", author="maintainer")
    world.forge.add_labels(DEMO_REPO, number, ["fleet/approved"], author="maintainer")
    world.settle()
    assert not world.task(number).on_hold
    handed = world.handed_out()
    assert handed is not None and handed.issue_number == number

    world.forge.remove_label(DEMO_REPO, number, "fleet/approved", author="maintainer")
    world.settle()
    assert world.task(number).on_hold, "a removed approval is withdrawn"


def test_a_role_that_always_needs_approval_waits_for_someone_other_than_the_author(
    world: World,
) -> None:
    """[approval] roles: a maintainer's own devops issue waits; their own approval label does
    nothing; another trusted user's starts it."""
    current = world.assembly.settings()
    world.assembly.settings.replace(
        current.model_copy(update={"approval": ApprovalSettings(roles=("devops",))})
    )
    world.forge.create_label(DEMO_REPO, "agent/devops")
    number = world.forge.create_issue(DEMO_REPO, "Rotate the keys", author="maintainer")
    world.forge.add_labels(
        DEMO_REPO, number, ["agent/devops", "fleet/approved"], author="maintainer"
    )
    world.settle()
    task = world.task(number)
    assert task.on_hold and "tasks for role devops always need one" in task.wait_reason

    world.forge.remove_label(DEMO_REPO, number, "fleet/approved")
    world.forge.add_labels(DEMO_REPO, number, ["fleet/approved"])  # fleet-admin: trusted
    world.settle()
    assert not world.task(number).on_hold
