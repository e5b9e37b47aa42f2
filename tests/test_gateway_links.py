"""The gateway's dependency and timeline reads against the in-memory Forgejo."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from reconciler.errors import ForgejoError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import IssueState
from reconciler.sandbox import ForgejoSandbox

REPO = "fleet-admin/demo"
OTHER = "fleet-admin/lib"
BASE_URL = "http://localhost:3000"


@pytest.fixture
def sandbox() -> Iterator[ForgejoSandbox]:
    forge = ForgejoSandbox(clock=lambda: datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    forge.create_repo(REPO)
    forge.create_repo(OTHER)
    yield forge
    forge.stop()


@pytest.fixture
def gateway(sandbox: ForgejoSandbox) -> Iterator[ForgejoGateway]:
    with ForgejoGateway(
        BASE_URL, sandbox.admin_token, transport=httpx.WSGITransport(app=sandbox.app)
    ) as gw:
        yield gw


def test_dependencies_and_blocks_are_read_both_ways_across_repositories(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """An issue lists what it depends on (any repo); the blocker lists what it blocks."""
    first = sandbox.create_issue(REPO, "first")
    second = sandbox.create_issue(REPO, "second")
    lib = sandbox.create_issue(OTHER, "library change")
    gateway.add_dependency(REPO, second, on=first)
    gateway.add_dependency(REPO, second, on=lib, on_repo=OTHER)
    deps = gateway.list_dependencies(REPO, second)
    assert [(d.repo, d.number, d.state) for d in deps] == [
        (REPO, first, IssueState.OPEN),
        (OTHER, lib, IssueState.OPEN),
    ]
    assert [(b.repo, b.number) for b in gateway.list_blocks(OTHER, lib)] == [(REPO, second)]
    gateway.remove_dependency(REPO, second, on=first)
    assert [d.number for d in gateway.list_dependencies(REPO, second)] == [lib]
    assert gateway.list_blocks(REPO, first) == ()


def test_more_than_one_page_of_dependencies_is_read_whole(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """The dependency list has no paging headers; every page is still read."""
    target = sandbox.create_issue(REPO, "target")
    for n in range(55):
        sandbox.add_dependency(REPO, target, on=sandbox.create_issue(REPO, f"dep {n}"))
    assert len(gateway.list_dependencies(REPO, target)) == 55


def test_a_two_issue_cycle_is_refused_as_forgejo_refuses_it(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Forgejo refuses a dependency whose reverse exists (longer cycles it does not check)."""
    one = sandbox.create_issue(REPO, "one")
    two = sandbox.create_issue(REPO, "two")
    gateway.add_dependency(REPO, one, on=two)
    with pytest.raises(ForgejoError):
        gateway.add_dependency(REPO, two, on=one)


def test_label_events_say_who_added_and_removed_each_label(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """The timeline's label entries carry the acting user and whether the label came or went."""
    sandbox.create_user("bob")
    sandbox.create_label(REPO, "fleet/task")
    sandbox.create_label(REPO, "fleet/approved")
    number = sandbox.create_issue(REPO, "work", labels=["fleet/task"])
    sandbox.comment(REPO, number, "a comment is in the timeline too", author="bob")
    sandbox.add_labels(REPO, number, ["fleet/approved"])
    gateway.remove_label(REPO, number, "fleet/approved")
    events = gateway.label_events(REPO, number)
    assert [(e.label, e.added, e.actor) for e in events] == [
        ("fleet/task", True, "fleet-admin"),
        ("fleet/approved", True, "fleet-admin"),
        ("fleet/approved", False, "fleet-admin"),
    ]


def test_an_issue_with_an_open_dependency_cannot_be_closed_and_the_close_action_lets_it_be(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Forgejo answers 412 to closing an issue whose dependency is open; the close action of a
    completed task logs that and leaves the issue open instead of failing its reconcile."""
    from typing import cast

    from reconciler.engine.reconcile import ActContext, CloseIssue
    from reconciler.store import Store

    ctx = ActContext(gateway=gateway, store=cast(Store, None))  # closing reads no state

    blocker = sandbox.create_issue(REPO, "blocker")
    waiting = sandbox.create_issue(REPO, "waiting")
    gateway.add_dependency(REPO, waiting, on=blocker)
    with pytest.raises(ForgejoError) as refused:
        gateway.edit_issue(REPO, waiting, state="closed")
    assert refused.value.status == 412
    CloseIssue(REPO, waiting).apply(ctx)
    assert gateway.get_issue(REPO, waiting).state is IssueState.OPEN
    gateway.edit_issue(REPO, blocker, state="closed")
    CloseIssue(REPO, waiting).apply(ctx)
    assert gateway.get_issue(REPO, waiting).state is IssueState.CLOSED
