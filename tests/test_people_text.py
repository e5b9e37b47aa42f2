"""What people read is written for people: rounded durations, retry times as ``in 5 s``, and no
Python class names in the comments a full flow and a failing flow leave on Forgejo."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.console.history import task_report
from reconciler.console.views import agents_table, status_report, task_why
from reconciler.errors import FleetError, StalledError
from reconciler.fleet.api import AgentSummary, TaskDetail
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import ExecutionMode, Task, TaskState, task_id_for
from reconciler.run.ssh import HostExecutor
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import RetriesSettings
from reconciler.text import describe_error, format_duration, format_wait
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from tests.test_execution_flow import SLEEPER, World, make_world
from webhook.demo import DemoFleet, run_demo

# A Python class name as it would leak from an exception: CamelCase ending in Error/Exception.
CLASS_NAME = re.compile(r"\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b")
NOW = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)
MakeWorld = Callable[..., World]


@pytest.fixture
def hosts(
    served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> Iterator[MakeWorld]:
    """A daemon with one local ssh host, as tests/test_execution_flow.py builds it."""
    made: list[World] = []

    def make(**kw: object) -> World:
        world = make_world(served_forge, forge_clock, tmp_path, SLEEPER, **kw)
        made.append(world)
        return world

    yield make
    for world in made:
        for close in world.assembly.closers:
            close()
        world.store.close()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.44, "0.4 s"),
        (5, "5 s"),
        (7.46705, "7.5 s"),
        (9.96, "10 s"),
        (45.4, "45 s"),
        (59.6, "1 min"),
        (185, "3 min 5 s"),
        (3600, "1 h"),
        (7800, "2 h 10 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
        (-3, "0 s"),
    ],
)
def test_durations_are_rounded_for_people(seconds: float, text: str) -> None:
    """One decimal under ten seconds, whole seconds above, then the two largest units."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("wait", "text"),
    [
        (timedelta(seconds=4.6), "in 4.6 s"),
        (timedelta(seconds=5), "in 5 s"),
        (timedelta(minutes=59), "in 59 min"),
        (timedelta(hours=2, minutes=23), "at 09:23 UTC"),
        (timedelta(seconds=-1), "now"),
    ],
)
def test_a_short_wait_reads_in_seconds_and_a_long_one_as_a_clock_time(
    wait: timedelta, text: str
) -> None:
    """`in 5 s` rather than `until 07:00 UTC` for a short wait; a clock time past an hour."""
    assert format_wait(NOW + wait, now=NOW) == text


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (StalledError("the repository is archived"), "the repository is archived"),
        (TimeoutError(), "timed out"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
        (KeyError("branch"), "missing 'branch'"),
        (BrokenPipeError(), "broken pipe failure"),
        (RuntimeError(), "runtime failure"),
        (httpx.ReadTimeout(""), "timed out"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "[Errno 111] Connection refused"),
    ],
)
def test_errors_are_described_without_class_names(error: BaseException, text: str) -> None:
    """An exception reads as its message, or a plain phrase; never as `StalledError: …`."""
    assert describe_error(error) == text
    assert not CLASS_NAME.search(describe_error(error))


def _class_names_in_comments(person: ForgejoGateway, repo: str) -> list[str]:
    found = []
    for issue in person.list_issues(repo, state="all"):
        for comment in person.list_comments(repo, issue.number):
            found += [f"#{issue.number}: {m}" for m in CLASS_NAME.findall(comment.body)]
    return found


def test_a_full_flow_leaves_no_class_names_in_its_comments() -> None:
    """The demo's tasks (done, sent back by a review, and one that waits) comment in words."""
    seen: list[list[str]] = []
    comments: list[int] = []

    def scan(fleet: DemoFleet) -> None:
        seen.append(_class_names_in_comments(fleet.person, fleet.repo))
        comments.append(
            sum(
                len(fleet.person.list_comments(fleet.repo, issue.number))
                for issue in fleet.person.list_issues(fleet.repo, state="all")
            )
        )

    lines: list[str] = []
    assert run_demo(out=lines.append, keep=scan) == 0, "\n".join(lines)
    assert comments and comments[0] > 0, "the flow wrote no comments to scan"
    assert seen == [[]]


def test_a_failing_run_comments_its_reason_without_the_exception_class(
    hosts: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails with a fleet error (here a stalled condition) and one that crashes
    outright fail the task with people's wording on the issue, then for good after retries."""
    failures = iter(
        [StalledError("the repository's default branch is gone"), FleetError(), RuntimeError()]
    )

    def broken_work(self, run, task):  # type: ignore[no-untyped-def]
        raise next(failures)

    monkeypatch.setattr(HostExecutor, "_work", broken_work)

    world = hosts(retries=RetriesSettings(max_retries=2, backoff_initial=5, backoff_max=60))
    number = world.forge.create_issue(DEMO_REPO, "Breaks", labels=["fleet/task", "agent/developer"])
    executor = world.assembly.executor
    assert executor is not None
    bodies: list[str] = []
    with ForgejoGateway(world.forge.url, world.forge.admin_token) as person:
        for _ in range(3):
            world.reconcile(number)
            assert executor.wait(world.task(number).id, timeout=30)
            world.reconcile(number)
            bodies += [c.body for c in person.list_comments(DEMO_REPO, number)]
            after = world.task(number)
            if after.not_before is not None:
                assert re.search(r": next try in (5|10) s$", after.wait_reason), after.wait_reason
                world.clock.advance((after.not_before - world.clock()).total_seconds())
        leaked = _class_names_in_comments(person, DEMO_REPO)
    assert world.task(number).state is TaskState.FAILED
    events = " ".join(e.reason for e in world.store.events_for(world.task(number).id))
    assert "the repository's default branch is gone" in events and "fleet failure" in events
    assert not CLASS_NAME.search(events), events
    assert any("the run crashed: runtime failure" in body for body in bodies), bodies
    assert any("next try in 5 s" in body for body in bodies), bodies
    assert leaked == [], leaked


def test_an_ssh_host_shows_when_it_was_last_checked_not_never(hosts: MakeWorld) -> None:
    """The agents listing (API answer and CLI table) gives an ssh host its last health
    check's time where a pull agent has its last heartbeat."""
    world = hosts()
    checked = world.assembly.probes.latest("local")
    assert checked is not None
    (view,) = world.assembly.fleet.agents()
    summary = AgentSummary.of(view)
    assert summary.mode is ExecutionMode.SSH and summary.last_heartbeat_at == checked.checked_at
    world.clock.advance(7.4)
    row = agents_table([summary], now=world.clock()).splitlines()[1]
    assert "7.4 s ago" in row and "never" not in row


def test_status_tells_a_backoff_as_of_now_not_as_of_when_it_was_written() -> None:
    """The stored reason said `in 30 s` when written; 20 s later `status` and `tasks show`
    say `in 10 s`."""
    waiting = Task.model_validate(
        {
            "id": task_id_for("acme/web", 3),
            "repo": "acme/web",
            "issue_number": 3,
            "title": "Retry me",
            "created_at": NOW,
            "updated_at": NOW,
            "attempt": 2,
            "not_before": NOW + timedelta(seconds=30),
            "wait_reason": "backing off after attempt 2: next try in 30 s",
        }
    )
    later = NOW + timedelta(seconds=20)
    assert task_why(waiting) == "backing off after attempt 2: next try in 30 s"
    assert task_why(waiting, now=later) == "backing off after attempt 2: next try in 10 s"
    assert "next try in 10 s" in status_report([waiting], now=later)
    report = task_report(TaskDetail(task=waiting, events=()), now=later)
    assert "waiting: backing off after attempt 2: next try in 10 s" in report
