"""End to end through the engine: Forgejo event → webhook or resync → queue → controller → Forgejo.

The in-memory Forgejo delivers real signed webhooks over loopback to the daemon's real HTTP
server; the loop is drained in the test's thread so every assertion sees a settled world.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reconciler.keys import issue_key
from reconciler.models import TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from tests.daemon_rig import hooked_daemon
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from webhook.daemon import Assembly
from webhook.server import HttpServer

SECRET = "flow-test-secret"


@dataclass
class Fleet:
    forge: ForgejoSandbox
    assembly: Assembly
    server: HttpServer
    clock: ManualClock

    @property
    def writes(self) -> int:
        return self.assembly.gateway.writes

    def labels(self, number: int) -> set[str]:
        return set(self.assembly.gateway.get_issue(DEMO_REPO, number).labels)

    def post_again(self, deliveries: list[object]) -> list[int]:
        """Deliver recorded webhook requests again, byte for byte, with their headers."""
        statuses = []
        with httpx.Client() as client:
            for d in deliveries:
                response = client.post(
                    f"{self.server.url}/webhooks/forgejo",
                    content=d.payload,  # type: ignore[attr-defined]
                    headers=dict(d.headers),  # type: ignore[attr-defined]
                )
                statuses.append(response.status_code)
        return statuses


@pytest.fixture
def fleet(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[Fleet]:
    store, assembly, server = hooked_daemon(forge, forge_clock, tmp_path / "state", secret=SECRET)
    # Only the repository's set-up key, which finds it set up already: no action.
    assert [(o.key.controller, o.actions) for o in assembly.loop.drain()] == [("setup", ())]
    yield Fleet(forge=forge, assembly=assembly, server=server, clock=forge_clock)
    forge.flush_webhooks()  # nothing may be on its way to a server that is stopping
    server.stop()
    assembly.gateway.close()
    store.close()


def test_a_labelled_issue_reaches_its_controller_through_the_webhook(fleet: Fleet) -> None:
    """Issue opened → signed webhook → assignment key → task created and status/todo written."""
    number = fleet.forge.create_issue(DEMO_REPO, "Add a --version flag", labels=["fleet/task"])
    fleet.forge.flush_webhooks()
    assert fleet.forge.deliveries and all(d.status_code == 202 for d in fleet.forge.deliveries)
    outcomes = fleet.assembly.loop.drain()
    # Later outcomes, if any, are the echo of our own writes (label, comment) for the same key.
    assert {o.key for o in outcomes} == {issue_key(DEMO_REPO, number)}
    assert outcomes[0].outcome == "ok" and outcomes[0].actions
    assert "status/todo" in fleet.labels(number)
    task = fleet.assembly.store.find_task(task_id_for(DEMO_REPO, number))
    assert task is not None and task.state is TaskState.CREATED


def test_with_webhooks_lost_the_resync_finds_the_issue(fleet: Fleet) -> None:
    """No webhook arrives; the next incremental resync enqueues the issue all the same."""
    fleet.forge.webhooks_enabled = False
    fleet.clock.advance(60)
    number = fleet.forge.create_issue(DEMO_REPO, "Document the config", labels=["fleet/task"])
    assert fleet.assembly.loop.drain() == [], "nothing should be queued without the webhook"
    fleet.clock.advance(60)
    assert fleet.assembly.resync.incremental() >= 1
    outcomes = fleet.assembly.loop.drain()
    assert issue_key(DEMO_REPO, number) in [o.key for o in outcomes]
    assert "status/todo" in fleet.labels(number)


def test_an_unlabelled_issue_is_not_enqueued_by_the_resync(fleet: Fleet) -> None:
    """Issues that do not ask for the fleet cost nothing beyond the listing."""
    fleet.forge.webhooks_enabled = False
    fleet.clock.advance(60)
    fleet.forge.create_issue(DEMO_REPO, "A question for people", labels=[])
    fleet.clock.advance(60)
    assert fleet.assembly.resync.incremental() == 0
    assert fleet.assembly.loop.drain() == []


def test_duplicate_and_reordered_deliveries_cause_one_reconciles_worth_of_writes(
    fleet: Fleet,
) -> None:
    """Opened, relabelled, then every delivery again in reverse, twice: one label write."""
    number = fleet.forge.create_issue(DEMO_REPO, "Port the parser", labels=["fleet/task"])
    fleet.assembly.gateway.add_labels(DEMO_REPO, number, ["priority/high"])  # as a person would
    fleet.forge.flush_webhooks()
    recorded = list(fleet.forge.deliveries)
    assert len(recorded) >= 2
    before = fleet.writes
    assert fleet.post_again(recorded[::-1] + recorded[::-1]) == [202] * (2 * len(recorded))
    outcomes = fleet.assembly.loop.drain()
    # The queue held one key however often it was delivered; a second reconcile can only come
    # from the echo of our own label write, and it must find nothing to do.
    assert [o.key for o in outcomes if o.actions] == [issue_key(DEMO_REPO, number)]
    assert fleet.writes - before == 2  # status/todo and the comment saying why it waits, once
    assert fleet.assembly.store.find_task(task_id_for(DEMO_REPO, number)).priority == "high"  # type: ignore[union-attr]
    # The label write itself fires a label_updated webhook; reconciling it changes nothing.
    fleet.forge.flush_webhooks()
    fleet.post_again(recorded)
    fleet.assembly.loop.drain()
    assert fleet.writes - before == 2
    events = fleet.assembly.store.events_for(task_id_for(DEMO_REPO, number))
    assert [e.kind for e in events] == ["transition", "waiting"], [e.reason for e in events]


def test_a_burst_of_issues_reads_each_fact_once(fleet: Fleet) -> None:
    """Three labelled issues by one author, settled with their webhooks: each issue is read
    once, the author's permission once for all three, the echoes of our own label and comment
    writes read nothing, a status comment is edited without listing the comments, and a
    follow-up with nothing new since reads nothing."""
    operations: list[str] = []
    counted = fleet.assembly.gateway._on_call

    def on_call(operation: str, status: int) -> None:
        operations.append(operation)
        if counted is not None:
            counted(operation, status)

    fleet.assembly.gateway._on_call = on_call
    numbers = [
        fleet.forge.create_issue(DEMO_REPO, f"Port part {n}", labels=["fleet/task"])
        for n in range(3)
    ]
    for _ in range(5):
        fleet.forge.flush_webhooks()
        fleet.assembly.loop.drain()
    assert operations.count("get_issue") == 3, operations
    assert operations.count("get_permission") == 1, operations
    assert operations.count("list_comments") == 0, operations
    assert operations.count("add_labels") == 3, operations
    for number in numbers:
        assert "status/todo" in fleet.labels(number)
    operations.clear()
    fleet.forge.add_labels(DEMO_REPO, numbers[0], ["fleet/hold"])  # a person holds one
    for _ in range(5):
        fleet.forge.flush_webhooks()
        fleet.assembly.loop.drain()
    assert "Not started yet" in fleet.assembly.gateway.list_comments(DEMO_REPO, numbers[0])[0].body
    assert operations.count("get_issue") == 1, operations
    assert "edit_comment" in operations
    assert operations.count("list_comments") == 1, operations  # the one just above
    # A follow-up with nothing changed since (as another controller's Enqueue): no read; a
    # person's comment since: the issue is read again.
    operations.clear()
    fleet.assembly.queue.add_urgent(issue_key(DEMO_REPO, numbers[1]))
    fleet.assembly.loop.drain()
    assert "get_issue" not in operations, operations
    fleet.forge.create_user("alice")
    fleet.forge.comment(DEMO_REPO, numbers[1], "any news?", author="alice")
    for _ in range(5):
        fleet.forge.flush_webhooks()
        fleet.assembly.loop.drain()
    assert operations.count("get_issue") == 1, operations
