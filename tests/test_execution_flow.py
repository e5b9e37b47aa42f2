"""The assignment controller and the host executor together, against the in-memory Forgejo:
closing the issue mid-run cancels the task and kills its process; a run that times out is
failed, retried with backoff, and failed for good after retries.max_retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import issue_key
from reconciler.models import QuestionKind, TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ForgejoSettings,
    HostSettings,
    LoopSettings,
    RetriesSettings,
    Settings,
    StoreSettings,
    TimeoutsSettings,
)
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from webhook.daemon import Assembly, build, prepare_repos

# Writes its pid where the test can see it, then sleeps: a run that only ends when stopped.
SLEEPER = AdapterSettings(
    command=("sh", "-c", 'echo $$ > "$PIDS/$(basename "$PWD").pid"; exec sleep 300'),
    parser="raw",
)


@dataclass
class World:
    forge: ForgejoSandbox
    assembly: Assembly
    clock: ManualClock
    pids: Path

    @property
    def store(self) -> Store:
        return self.assembly.store

    def reconcile(self, number: int) -> None:
        self.assembly.queue.add(issue_key(DEMO_REPO, number))
        self.assembly.loop.drain()

    def task(self, number: int):  # type: ignore[no-untyped-def]
        return self.store.get_task(task_id_for(DEMO_REPO, number))


def make_world(
    forge: ForgejoSandbox,
    clock: ManualClock,
    tmp_path: Path,
    adapter: AdapterSettings,
    **settings_kw: object,
) -> World:
    pids = tmp_path / "pids"
    pids.mkdir()
    host = HostSettings(
        name="local",
        address="localhost",
        adapter="test-cli",
        workdir=str(tmp_path / "work"),
        roles=("developer",),
        min_free_disk_mb=0,
    )
    settings = Settings(
        forgejo=ForgejoSettings(
            url=forge.url,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
        ),
        hosts=(host,),
        adapters={"test-cli": adapter.model_copy(update={"env": {"PIDS": str(pids)}})},
        loop=LoopSettings(workers=1),
        store=StoreSettings(path=tmp_path / "state"),
        **settings_kw,  # type: ignore[arg-type]
    )
    store = Store.open(tmp_path / "state")
    assembly = build(settings, store=store, clock=clock)
    prepare_repos(assembly)
    # The host's first health check (made here, as the probes' thread makes it) and the
    # registry's pass that reads it bring the local host online.
    assembly.probes.run_due()
    assembly.queue.add(issue_key("x/y", 0)._replace(controller="registry", repo="", id="local"))
    assembly.loop.drain()
    assert store.get_agent("local").status == "online"
    return World(forge=forge, assembly=assembly, clock=clock, pids=pids)


@pytest.fixture
def world_factory(
    served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> Iterator[object]:
    made: list[World] = []

    def make(adapter: AdapterSettings, **kw: object) -> World:
        world = make_world(served_forge, forge_clock, tmp_path, adapter, **kw)
        made.append(world)
        return world

    yield make
    for world in made:
        for close in world.assembly.closers:
            close()
        world.store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_closing_the_issue_mid_run_cancels_the_task_and_kills_its_process(world_factory) -> None:  # type: ignore[no-untyped-def]
    """Running → the person closes the issue → cancelled, and the CLI process is gone."""
    world: World = world_factory(SLEEPER)
    number = world.forge.create_issue(
        DEMO_REPO, "Long job", labels=["fleet/task", "agent/developer"]
    )
    world.reconcile(number)
    task = world.task(number)
    executor = world.assembly.executor
    assert executor is not None and executor.wait_started(task.id, timeout=30)
    pid_file = world.pids / f"{task.id}.pid"
    for _ in range(100):  # the CLI writes its pid as it starts
        if pid_file.exists() and pid_file.read_text().strip():
            break
        executor.wait(task.id, timeout=0.05)
    pid = int(pid_file.read_text())
    assert _alive(pid)

    with ForgejoGateway(world.forge.url, world.forge.admin_token) as person:
        person.edit_issue(DEMO_REPO, number, state="closed")
    world.reconcile(number)

    assert world.task(number).state is TaskState.CANCELLED
    assert executor.wait(task.id, timeout=30)
    assert not _alive(pid), "the CLI process outlived the cancelled task"


def test_a_timed_out_run_is_retried_with_backoff_then_fails_for_good(world_factory) -> None:  # type: ignore[no-untyped-def]
    """Deadline passes → failed (retryable) → requeued after a growing delay → ... → after
    max_retries the task stays failed with the reason on the issue."""
    world: World = world_factory(
        SLEEPER,
        timeouts=TimeoutsSettings(task_default=600),
        retries=RetriesSettings(max_retries=2, backoff_initial=30, backoff_max=600),
    )
    number = world.forge.create_issue(
        DEMO_REPO, "Never ends", labels=["fleet/task", "agent/developer"]
    )
    executor = world.assembly.executor
    assert executor is not None
    delays = []
    for attempt in (1, 2, 3):
        world.reconcile(number)
        task = world.task(number)
        assert task.state is TaskState.RUNNING or task.state is TaskState.ASSIGNED, task
        assert task.attempt == attempt and task.lease_generation == attempt
        assert executor.wait_started(task.id, timeout=30)
        world.clock.advance(601)  # past the deadline
        world.reconcile(number)
        assert executor.wait(task.id, timeout=30), "the timed-out run was not stopped"
        after = world.task(number)
        if attempt < 3:
            assert after.state is TaskState.CREATED and after.not_before is not None
            delays.append((after.not_before - world.clock()).total_seconds())
            world.clock.advance(delays[-1])
        else:
            assert after.state is TaskState.FAILED and not after.failure_retryable
            assert "timed out" in after.failure_reason
    assert delays == [30.0, 60.0]
    with ForgejoGateway(world.forge.url, world.forge.admin_token) as person:
        labels = person.get_issue(DEMO_REPO, number).labels
        comments = person.list_comments(DEMO_REPO, number)
    assert "status/failed" in labels
    assert any("Failed after 3 attempt(s)" in c.body and "timed out" in c.body for c in comments)


# Sleeps like SLEEPER on the first attempt; once the test has made "$PIDS/rerun", it writes the
# same note the first attempt's commit holds, and ends.
RERUN_WRITES_THE_NOTE = AdapterSettings(
    command=(
        "sh",
        "-c",
        (
            'if [ -e "$PIDS/rerun" ]; then printf "# A note\\n" > note.md; echo wrote note.md; '
            'else echo $$ > "$PIDS/$(basename "$PWD").pid"; exec sleep 300; fi'
        ),
    ),
    parser="raw",
)


@pytest.mark.parametrize("delete_branch", [False, True])
def test_a_rerun_whose_earlier_work_was_merged_meanwhile_hands_that_work_in(  # type: ignore[no-untyped-def]
    world_factory, delete_branch: bool
) -> None:
    """ssh path: an attempt pushed its commit and PR and died before its receipt; the person
    merged the PR. The rerun changes nothing, yet hands in the merged PR: the task completes."""
    world: World = world_factory(
        RERUN_WRITES_THE_NOTE,
        timeouts=TimeoutsSettings(task_default=600),
        retries=RetriesSettings(max_retries=2, backoff_initial=30, backoff_max=600),
    )
    number = world.forge.create_issue(
        DEMO_REPO, "Add a note", labels=["fleet/task", "agent/developer"]
    )
    executor = world.assembly.executor
    assert executor is not None
    world.reconcile(number)
    task = world.task(number)
    assert executor.wait_started(task.id, timeout=30)
    # What the first attempt left before it died: its commit on the branch and its PR, which
    # the person merged.
    world.forge.push(
        DEMO_REPO,
        task.branch,
        files={"note.md": "# A note\n"},
        message=f"Add a note\n\nTask {task.id}, attempt 1.",
    )
    pull = world.forge.open_pull(
        DEMO_REPO, task.branch, title="Add a note", body=f"Closes #{number}"
    )
    with ForgejoGateway(world.forge.url, world.forge.admin_token) as person:
        person.merge_pull(DEMO_REPO, pull, delete_branch=delete_branch)
    (world.pids / "rerun").touch()
    world.clock.advance(601)  # the first attempt is past its deadline: stopped, requeued
    world.reconcile(number)
    assert executor.wait(task.id, timeout=30)
    waiting = world.task(number)
    if waiting.state is TaskState.CREATED and waiting.not_before is not None:
        world.clock.advance((waiting.not_before - world.clock()).total_seconds())
        world.reconcile(number)
        assert executor.wait(task.id, timeout=30)
        world.reconcile(number)
    done = world.task(number)
    assert done.state is TaskState.COMPLETED, (done.state, done.failure_reason)
    assert done.pr_number == pull
    receipts = world.store.receipts_for(task.id)
    assert receipts and {r.pr_number for r in receipts} == {pull}
    with ForgejoGateway(world.forge.url, world.forge.admin_token) as person:
        task_pulls = [
            p for p in person.list_pulls(DEMO_REPO, state="all") if p.head_branch == task.branch
        ]
    assert [p.number for p in task_pulls] == [pull]


# Writes its pid, waits for the test's go-ahead, then leaves work in the worktree.
WAITER = AdapterSettings(
    command=("sh", "-c", ('echo $$ > "$PIDS/$(basename "$PWD").pid"; '
             'while [ ! -f "$PIDS/go" ]; do sleep 0.05; done; echo draft > notes.txt; '
             "echo 'asked, waiting'")),
    parser="raw",
)  # fmt: skip


def test_an_ssh_run_that_asked_a_question_keeps_its_work_and_waits(world_factory) -> None:  # type: ignore[no-untyped-def]
    """A question asked during a run on a host (as its fleet tools record it): when the run
    ends, its work is pushed to the branch, no pull request is opened, and the task waits on
    the question's issue instead of going to review."""
    world: World = world_factory(WAITER)
    number = world.forge.create_issue(
        DEMO_REPO, "Needs a choice", labels=["fleet/task", "agent/developer"]
    )
    world.reconcile(number)
    task = world.task(number)
    executor = world.assembly.executor
    assert executor is not None and executor.wait_started(task.id, timeout=30)
    running = world.task(number)
    world.assembly.fleet.ask(
        running.agent_id, task.id, lease_generation=running.lease_generation,
        kind=QuestionKind.QUESTION, text="Which port?",
    )  # fmt: skip
    (world.pids / "go").write_text("")
    assert executor.wait(task.id, timeout=60)
    world.reconcile(number)
    world.reconcile(number)
    waiting = world.task(number)
    assert waiting.state is TaskState.CREATED and waiting.on_hold, waiting.wait_reason
    question_issue = waiting.questions[0].issue_number
    assert question_issue is not None
    assert waiting.wait_reason == f"waiting for the answer to #{question_issue}"
    with ForgejoGateway(world.forge.url, world.forge.admin_token) as gateway:
        assert gateway.find_pull_by_head(DEMO_REPO, task.branch) is None
        branch = gateway.get_branch(DEMO_REPO, task.branch)
        assert branch is not None and branch.commit_message.startswith("Work in progress")
