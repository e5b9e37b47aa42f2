"""The resync: incremental since the last look, full listing, tracked tasks, archive, dry runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.setup import label_specs
from reconciler.engine.reconcile import ActContext, AddLabels
from reconciler.engine.resync import Resync, ResyncTimer
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key, issue_key, pull_key
from reconciler.models import RepoName, Task, TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings, StoreSettings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock

SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url=IN_PROCESS_URL, token=SecretStr("t"), repos=(DEMO_REPO,), bot_login="fleet-admin"
    ),
    store=StoreSettings(archive_after=3600),
)


class Harness:
    def __init__(
        self, forge: ForgejoSandbox, clock: ManualClock, store: Store, *, record: bool = True
    ) -> None:
        self.forge = forge
        self.clock = clock
        self.store = store
        self.keys: list[Key] = []
        self.gateway = ForgejoGateway(
            IN_PROCESS_URL, forge.admin_token, transport=httpx.WSGITransport(app=forge.app)
        )
        self.gateway.ensure_labels(DEMO_REPO, label_specs(SETTINGS))
        self.resync = Resync(
            self.gateway,
            store,
            self.keys.append,
            settings=lambda: SETTINGS,
            clock=clock,
            record=record,
        )

    def calls(self, action: object) -> int:
        before = self.gateway.calls
        action()  # type: ignore[operator]
        return self.gateway.calls - before


@pytest.fixture
def harness(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[Harness]:
    with Store.open(tmp_path / "state") as store:
        h = Harness(forge, forge_clock, store)
        yield h
        h.gateway.close()


def test_first_resync_is_full_and_later_ones_are_incremental(harness: Harness) -> None:
    """Without a remembered time the resync lists everything; then one call per repo."""
    first = harness.forge.create_issue(DEMO_REPO, "one", labels=["fleet/task"])
    harness.clock.advance(120)
    harness.resync.incremental()
    assert harness.keys == [issue_key(DEMO_REPO, first)]
    harness.keys.clear()
    harness.clock.advance(120)
    assert harness.calls(harness.resync.incremental) == 1
    assert harness.keys == []


def test_incremental_resync_sees_changes_since_the_last_one(harness: Harness) -> None:
    """An issue labelled after the last resync is found; plain issues and old ones are not."""
    harness.resync.full()
    harness.clock.advance(300)
    harness.forge.create_issue(DEMO_REPO, "plain", labels=[])
    harness.forge.create_label(DEMO_REPO, "agent/developer")
    wanted = harness.forge.create_issue(DEMO_REPO, "fleet", labels=["agent/developer"])
    harness.forge.push(DEMO_REPO, "task/x", files={"f": "1"}, message="m")
    pr = harness.forge.open_pull(DEMO_REPO, "task/x", title="PR")
    harness.clock.advance(60)
    harness.keys.clear()
    harness.resync.incremental()
    assert sorted(harness.keys) == sorted([issue_key(DEMO_REPO, wanted), pull_key(DEMO_REPO, pr)])


def test_full_resync_includes_tasks_whose_issue_was_closed(harness: Harness) -> None:
    """A tracked task's issue is enqueued even when it is no longer open, so it gets cancelled."""
    number = harness.forge.create_issue(DEMO_REPO, "closed later", labels=["fleet/task"])
    harness.store.put_task(
        Task(
            id=task_id_for(DEMO_REPO, number),
            repo=RepoName(DEMO_REPO),
            issue_number=number,
            title="closed later",
            created_at=harness.clock(),
            updated_at=harness.clock(),
        )
    )
    harness.gateway.edit_issue(DEMO_REPO, number, state="closed")
    harness.resync.full()
    assert issue_key(DEMO_REPO, number) in harness.keys


def _task(harness: Harness, number: int, state: TaskState = TaskState.CREATED) -> None:
    harness.store.put_task(
        Task(
            id=task_id_for(DEMO_REPO, number),
            repo=RepoName(DEMO_REPO),
            issue_number=number,
            title="t",
            state=state,
            created_at=harness.clock(),
            updated_at=harness.clock(),
        )
    )


def test_full_resync_skips_a_finished_task_whose_issue_was_closed(harness: Harness) -> None:
    """A completed task's closed issue is not read again: nothing about it is left to notice."""
    number = harness.forge.create_issue(DEMO_REPO, "done and closed", labels=["fleet/task"])
    _task(harness, number, TaskState.COMPLETED)
    harness.gateway.edit_issue(DEMO_REPO, number, state="closed")
    harness.resync.full()
    assert issue_key(DEMO_REPO, number) not in harness.keys


def test_full_resync_always_looks_at_held_tasks(harness: Harness) -> None:
    """A held task is enqueued although its issue did not change: a blocker closing elsewhere
    does not move its issue's updated_at."""
    number = harness.forge.create_issue(DEMO_REPO, "held", labels=["fleet/task"])
    harness.store.put_task(
        Task(
            id=task_id_for(DEMO_REPO, number),
            repo=RepoName(DEMO_REPO),
            issue_number=number,
            title="held",
            on_hold=True,
            wait_reason="waiting for #1",
            created_at=harness.clock(),
            updated_at=harness.clock(),
        )
    )
    harness.gateway.get_issue(DEMO_REPO, number)
    harness.resync.full()
    assert issue_key(DEMO_REPO, number) in harness.keys


def test_full_resync_enqueues_only_items_whose_updated_at_moved_since_their_read(
    harness: Harness,
) -> None:
    """Issues and PRs read one by one since they last changed are not enqueued again; a
    person's label, or a push to the PR, makes them count again."""
    tracked = harness.forge.create_issue(DEMO_REPO, "tracked", labels=["fleet/task"])
    other = harness.forge.create_issue(DEMO_REPO, "other", labels=["fleet/task"])
    harness.forge.push(DEMO_REPO, "task/9-x", files={"x.py": "x = 1\n"}, message="add x")
    pull = harness.forge.open_pull(DEMO_REPO, "task/9-x", title="Add x")
    _task(harness, tracked)
    harness.resync.full()
    assert {issue_key(DEMO_REPO, tracked), issue_key(DEMO_REPO, other)} <= set(harness.keys)
    assert pull_key(DEMO_REPO, pull) in harness.keys
    # The reconciles of those keys read each item once.
    for number in (tracked, other):
        harness.gateway.get_issue(DEMO_REPO, number)
    harness.gateway.get_pull(DEMO_REPO, pull)
    harness.keys.clear()
    harness.clock.advance(120)
    assert harness.calls(harness.resync.full) == 2  # one list of issues, one of PRs
    assert [k for k in harness.keys if k.controller != "setup"] == []

    harness.clock.advance(120)
    harness.forge.add_labels(DEMO_REPO, other, ["priority/high"])
    harness.forge.push(DEMO_REPO, "task/9-x", files={"x.py": "x = 2\n"}, message="change x")
    harness.resync.full()
    assert issue_key(DEMO_REPO, other) in harness.keys
    assert pull_key(DEMO_REPO, pull) in harness.keys
    assert issue_key(DEMO_REPO, tracked) not in harness.keys


def test_full_resync_moves_old_finished_tasks_to_the_archive(harness: Harness) -> None:
    """Completed tasks older than store.archive_after leave the live store but stay readable."""
    done = Task(
        id=task_id_for(DEMO_REPO, 99),
        repo=RepoName(DEMO_REPO),
        issue_number=99,
        title="done",
        state=TaskState.COMPLETED,
        created_at=harness.clock(),
        updated_at=harness.clock(),
    )
    harness.store.put_task(done)
    harness.clock.advance(7200)
    harness.resync.full()
    assert harness.store.list_tasks() == []
    assert harness.store.find_task(done.id) == done


def test_a_dry_resync_remembers_nothing(
    forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> None:
    """With record=False the resync enqueues but writes no metadata and archives nothing."""
    with Store.open(tmp_path / "state") as store:
        harness = Harness(forge, forge_clock, store, record=False)
        harness.forge.create_issue(DEMO_REPO, "x", labels=["fleet/task"])
        harness.resync.full()
        assert harness.keys and harness.resync.last_resync() is None
        harness.gateway.close()


def test_the_timer_runs_a_full_resync_first_then_incremental_ones() -> None:
    """First tick full (the start-up enqueue), later ticks incremental until the full is due."""
    calls: list[str] = []

    class Recorder:
        def full(self) -> int:
            calls.append("full")
            return 0

        def incremental(self) -> int:
            calls.append("incremental")
            return 0

    now = [0.0]
    timer = ResyncTimer(Recorder(), interval=60, full_interval=600, monotonic=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(3):
        timer.run_once()
        now[0] += 60
    now[0] += 600
    timer.run_once()
    assert calls == ["full", "incremental", "incremental", "full"]
    assert 54 <= timer.next_delay() <= 66


def test_a_failing_resync_does_not_stop_the_timer() -> None:
    """An exception in one tick is logged; the next tick runs, and tries the full resync again
    (a failed one does not count as done)."""
    attempts: list[str] = []

    class Broken:
        def full(self) -> int:
            attempts.append("full")
            raise RuntimeError("Forgejo down")

        def incremental(self) -> int:
            attempts.append("incremental")
            return 0

    timer = ResyncTimer(Broken(), interval=60, full_interval=600, monotonic=lambda: 0.0)  # type: ignore[arg-type]
    timer.run_once()  # must not raise
    timer.run_once()
    assert attempts == ["full", "full"]


def test_since_overlaps_the_previous_listing(harness: Harness) -> None:
    """An update in the same second as the last listing is not missed (Forgejo compares >= on
    whole seconds)."""
    harness.resync.full()
    number = harness.forge.create_issue(DEMO_REPO, "same second", labels=["fleet/task"])
    harness.keys.clear()
    harness.resync.incremental()
    assert issue_key(DEMO_REPO, number) in harness.keys


def test_full_resync_looks_at_tasks_in_review_whose_pull_request_left_the_open_list(
    harness: Harness,
) -> None:
    """A PR merged or closed while no webhook arrived is looked at through its task."""
    from reconciler.keys import branch_key

    now = harness.clock()
    base = {
        "repo": RepoName(DEMO_REPO),
        "title": "t",
        "created_at": now,
        "updated_at": now,
        "state": TaskState.REVIEW_PENDING,
        "agent_id": "a",
        "lease_generation": 1,
    }
    harness.store.put_task(
        Task(id=task_id_for(DEMO_REPO, 40), issue_number=40, pr_number=41, **base)
    )
    harness.store.put_task(
        Task(id=task_id_for(DEMO_REPO, 42), issue_number=42, branch="task/42-x", **base)
    )
    harness.resync.full()
    assert pull_key(DEMO_REPO, 41) in harness.keys
    assert branch_key(DEMO_REPO, "task/42-x") in harness.keys


def test_an_issue_showing_what_our_own_label_write_left_is_not_enqueued_again(
    harness: Harness,
) -> None:
    """After a reconcile's own label write the listing shows a new updated_at but the labels
    that write left: nothing new, no key. A person's label after that counts again."""
    number = harness.forge.create_issue(DEMO_REPO, "labelled", labels=["fleet/task"])
    harness.gateway.get_issue(DEMO_REPO, number)  # the reconcile's read
    harness.clock.advance(60)
    AddLabels(DEMO_REPO, number, ("status/todo",)).apply(
        ActContext(gateway=harness.gateway, store=harness.store)
    )
    harness.clock.advance(60)
    harness.resync.full()
    assert issue_key(DEMO_REPO, number) not in harness.keys
    harness.clock.advance(60)
    harness.forge.add_labels(DEMO_REPO, number, ["priority/high"])
    harness.resync.full()
    assert issue_key(DEMO_REPO, number) in harness.keys
