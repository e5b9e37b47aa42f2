"""The ssh/localhost executor: a dispatched task runs in a worktree, is pushed, gets a PR and a
receipt; failures, cancellation and lost leases report correctly. Against the in-memory
Forgejo served over loopback with real git behind it, and a real sshd for the ssh variant."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from reconciler.fleet.agents import Fleet
from reconciler.fleet.queue import PullQueue
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key
from reconciler.models import AgentId, RepoName, Task, TaskState, branch_for, task_id_for
from reconciler.run.ssh import HostExecutor
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ForgejoSettings,
    HostSettings,
    Settings,
    TimeoutsSettings,
)
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, ManualClock

DEMO_AGENT = AdapterSettings(
    command=(sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"), parser="claude-json"
)
FAILING = AdapterSettings(
    command=("sh", "-c", "echo 'no credentials' >&2; exit 1"), parser="claude-json"
)
SLEEPING = AdapterSettings(command=("sh", "-c", "sleep 60"), parser="raw")


@dataclass
class Rig:
    forge: ForgejoSandbox
    store: Store
    gateway: ForgejoGateway
    executor: HostExecutor
    clock: ManualClock
    enqueued: list[Key] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def task(self, number: int, *, agent: str, title: str = "Add a --version flag") -> Task:
        tid = task_id_for(DEMO_REPO, number)
        task = Task(
            id=tid,
            repo=RepoName(DEMO_REPO),
            issue_number=number,
            title=title,
            state=TaskState.ASSIGNED,
            agent_id=AgentId(agent),
            lease_generation=1,
            attempt=1,
            branch=branch_for(tid, title),
            created_at=self.clock(),
            updated_at=self.clock(),
            deadline_at=self.clock() + timedelta(minutes=10),
        )
        self.store.put_task(task)
        return task

    def run(self, task: Task) -> Task:
        assert task.agent_id is not None
        self.executor.dispatch(task.id, task.agent_id, lease_generation=task.lease_generation)
        self.executor.wait(task.id, timeout=60)
        return self.store.get_task(task.id)


def make_rig(
    forge: ForgejoSandbox,
    clock: ManualClock,
    tmp_path: Path,
    host: HostSettings,
    adapter: AdapterSettings,
) -> Rig:
    settings = Settings(
        forgejo=ForgejoSettings(
            url=forge.url,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
        ),
        hosts=(host,),
        adapters={host.adapter: adapter},
        timeouts=TimeoutsSettings(dispatch=60),
    )
    store = Store.open(tmp_path / "state")
    gateway = ForgejoGateway(forge.url, forge.admin_token)
    rig_holder: list[Rig] = []
    enqueue = lambda key: rig_holder[0].enqueued.append(key)
    fleet = Fleet(store, settings=lambda: settings, clock=clock, enqueue=enqueue)
    reports = PullQueue(store, fleet=fleet, settings=lambda: settings, clock=clock, enqueue=enqueue)
    executor = HostExecutor(
        store=store,
        reports=reports,
        gateway=gateway,
        settings=lambda: settings,
        clock=clock,
        enqueue=enqueue,
        log_dir=tmp_path / "logs",
        prompt_for=lambda task: f"Task #{task.issue_number}: {task.title}\n\n## Goal\nDo it well.",
    )
    rig = Rig(forge=forge, store=store, gateway=gateway, executor=executor, clock=clock)
    rig_holder.append(rig)
    return rig


def local_host(tmp_path: Path, adapter: str = "demo-agent") -> HostSettings:
    return HostSettings(
        name="local",
        address="localhost",
        adapter=adapter,
        workdir=str(tmp_path / "work"),
        roles=("developer",),
    )


@pytest.fixture
def rig(served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(served_forge, forge_clock, tmp_path, local_host(tmp_path), DEMO_AGENT)
    yield made
    made.executor.shutdown(timeout=10)
    made.gateway.close()
    made.store.close()


def test_a_dispatched_task_runs_pushes_opens_a_pull_request_and_leaves_a_receipt(rig: Rig) -> None:
    """localhost: worktree, the agent's edit committed and pushed, PR opened, task in review."""
    number = rig.forge.create_issue(DEMO_REPO, "Add a --version flag")
    task = rig.task(number, agent="local")
    done = rig.run(task)
    assert done.state is TaskState.REVIEW_PENDING, rig.store.events_for(task.id)[-1].reason
    assert done.pr_number is not None and done.session_id
    [receipt] = rig.store.receipts_for(task.id)
    assert receipt.pr_number == done.pr_number and receipt.branch == task.branch
    assert len(receipt.commits) == 1 and receipt.summary.startswith("Wrote fleet-notes/")
    pull = rig.gateway.get_pull(DEMO_REPO, done.pr_number)
    assert pull.head_branch == task.branch and f"Closes #{number}" in pull.body
    files = rig.gateway.list_pull_files(DEMO_REPO, done.pr_number)
    assert [f.filename for f in files] == ["fleet-notes/add-a-version-flag.md"]
    commits = rig.gateway.list_pull_commits(DEMO_REPO, done.pr_number)
    assert [c.sha for c in commits] == list(receipt.commits)
    assert not rig.executor.is_running(task.id)
    assert [e.to_state for e in rig.store.events_for(task.id) if e.to_state] == [
        TaskState.RUNNING,
        TaskState.REVIEW_PENDING,
    ]


def test_a_failing_cli_fails_the_task_with_its_reason(
    served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> None:
    """The CLI's error becomes the task's failure reason, marked worth a retry."""
    rig = make_rig(served_forge, forge_clock, tmp_path, local_host(tmp_path, "broken"), FAILING)
    try:
        number = rig.forge.create_issue(DEMO_REPO, "Anything")
        failed = rig.run(rig.task(number, agent="local", title="Anything"))
        assert failed.state is TaskState.FAILED and failed.failure_retryable
        assert "no credentials" in failed.failure_reason
    finally:
        rig.executor.shutdown(timeout=5)
        rig.store.close()


def test_stopping_a_run_kills_its_process_and_records_no_failure(
    served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> None:
    """Cancel mid-run: the CLI process is gone and the run writes nothing over the task."""
    rig = make_rig(served_forge, forge_clock, tmp_path, local_host(tmp_path, "sleepy"), SLEEPING)
    try:
        number = rig.forge.create_issue(DEMO_REPO, "Slow one")
        task = rig.task(number, agent="local", title="Slow one")
        rig.executor.dispatch(task.id, AgentId("local"), lease_generation=1)
        assert rig.executor.wait_started(task.id, timeout=30)
        assert rig.executor.stop(task.id, reason="the issue was closed")
        rig.executor.wait(task.id, timeout=30)
        assert not rig.executor.is_running(task.id)
        assert rig.store.get_task(task.id).state is TaskState.RUNNING  # the controller cancels it
        pid_file = Path(tmp_path / "work" / "tasks" / f"{task.id}.pid")
        assert not pid_file.exists()
    finally:
        rig.executor.shutdown(timeout=5)
        rig.store.close()


def test_a_run_whose_lease_was_superseded_writes_nothing(rig: Rig) -> None:
    """If the task was given to someone else meanwhile, the run's results are dropped."""
    number = rig.forge.create_issue(DEMO_REPO, "Reassigned")
    task = rig.task(number, agent="local", title="Reassigned")
    rig.store.put_task(
        task.model_copy(update={"lease_generation": 2, "agent_id": AgentId("other")})
    )
    after = rig.run(task)
    assert after.lease_generation == 2 and after.state is TaskState.ASSIGNED
    assert rig.store.receipts_for(task.id) == []


def test_over_ssh_the_same_run_works_against_a_real_sshd(
    served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path, sshd: object
) -> None:
    """The executor's three steps over a real ssh connection to a host with git."""
    host = sshd.host_settings(  # type: ignore[attr-defined]
        name="box-1",
        adapter="demo-agent",
        workdir=str(tmp_path / "remote"),
        known_hosts_file=sshd.known_hosts,  # type: ignore[attr-defined]
    )
    rig = make_rig(served_forge, forge_clock, tmp_path, host, DEMO_AGENT)
    try:
        number = rig.forge.create_issue(DEMO_REPO, "Over ssh")
        done = rig.run(rig.task(number, agent="box-1", title="Over ssh"))
        assert done.state is TaskState.REVIEW_PENDING, rig.store.events_for(done.id)[-1].reason
        assert (
            rig.gateway.list_pull_files(DEMO_REPO, done.pr_number or 0)[0].filename
            == "fleet-notes/over-ssh.md"
        )
    finally:
        rig.executor.shutdown(timeout=10)
        rig.store.close()


def test_a_rerun_after_its_pull_request_was_closed_unmerged_opens_a_new_one(rig: Rig) -> None:
    """ssh path: a pull request closed without merging is never reused; the next lease's run
    opens a new one from the same branch, and the closed one stays closed."""
    number = rig.forge.create_issue(DEMO_REPO, "Closed then rerun")
    task = rig.task(number, agent="local", title="Closed then rerun")
    first = rig.run(task)
    assert first.state is TaskState.REVIEW_PENDING and first.pr_number is not None
    rig.gateway.edit_issue(DEMO_REPO, first.pr_number, state="closed")
    rig.store.put_task(
        first.model_copy(
            update={"state": TaskState.ASSIGNED, "lease_generation": 2, "pr_number": None}
        )
    )
    again = rig.store.get_task(task.id)
    second = rig.run(again)
    assert second.state is TaskState.REVIEW_PENDING, rig.store.events_for(task.id)[-1].reason
    assert second.pr_number is not None and second.pr_number != first.pr_number
    assert rig.gateway.get_pull(DEMO_REPO, second.pr_number).state == "open"
    assert rig.gateway.get_pull(DEMO_REPO, first.pr_number).state == "closed"
    assert [r.pr_number for r in rig.store.receipts_for(task.id)] == [
        first.pr_number,
        second.pr_number,
    ]


def test_a_run_over_its_budget_fails_the_task_for_good_without_handing_work_in(
    rig: Rig,
) -> None:
    """Over ssh the run's output is judged when it returns: usage past the task's token budget
    fails it over budget (not retryable), with its spend recorded, and no pull request."""
    number = rig.forge.create_issue(DEMO_REPO, "Add a --version flag")
    task = rig.task(number, agent="local").model_copy(update={"budget_tokens": 1})
    rig.store.put_task(task)
    failed = rig.run(task)
    assert failed.state is TaskState.FAILED and failed.over_budget
    assert not failed.failure_retryable
    assert failed.failure_reason.startswith("over budget: spent ")
    assert failed.failure_reason.endswith(" of 1 tokens")
    assert failed.spent_tokens > 1 and failed.spent_usd > 0 and not failed.spent_estimated
    assert failed.pr_number is None and rig.store.receipts_for(task.id) == []
