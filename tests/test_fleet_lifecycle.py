"""Agents leaving the fleet, end to end (issue 14's acceptance): the real daemon against the
in-memory Forgejo served on loopback, with pull agents over its HTTP API.

* an agent goes silent → after 3 missed heartbeats it is offline and its running task is
  ``agent_lost`` → requeued under a new lease → taken by another agent (a real worker with the
  demo agent CLI) → its pull request merged → ``completed``, once; the silent agent's late
  receipt is refused;
* a worker process stopped with SIGTERM mid-run hands its task back: the task is requeued by
  the one registry reconcile its deregistration causes, long before any heartbeat is missed.

The daemon's clock is injected, so "3 missed heartbeats" is a clock step, not a wait; every
other wait polls against a deadline.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from reconciler.agent.client import AgentApi
from reconciler.agent.worker import Worker
from reconciler.errors import ConflictError
from reconciler.fleet.api import RegisterRequest
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import agent_key
from reconciler.models import AgentStatus, TaskState
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import AdapterSettings
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from tests.test_worker import (
    ENROLMENT,
    daemon_settings,
    queue_issues,
    receipt_for,
    start_worker_process,
    wait_until,
    worker_config,
)
from webhook.daemon import Daemon, utc_now


@pytest.mark.usefixtures("isolated_git")
def test_a_silent_agents_task_is_lost_requeued_and_completed_once_by_another(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Silent for 3 intervals: offline, running → agent_lost → created (lease bumped); the
    other agent takes it under lease 2 and its PR merges: completed exactly once, one
    accepted receipt, and the silent agent can neither report nor hand in a receipt."""
    clock = ManualClock(utc_now())
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    daemon = Daemon(settings, clock=clock)
    daemon.start()
    store = daemon.assembly.store
    try:
        [task] = queue_issues(daemon, served_forge, ["Add a version flag"])
        silent = AgentApi(daemon.url, timeout=10)
        silent.register(
            RegisterRequest(agent_id="silent", type="demo-agent", roles=("developer",)),
            credential=ENROLMENT,
        )
        handout = silent.dequeue()
        assert handout is not None and handout.task.id == task.id
        silent.report(task.id, lease_generation=handout.lease_generation, running=True)
        assert store.get_task(task.id).state is TaskState.RUNNING

        clock.advance(3 * settings.api.heartbeat_interval + 1)  # three heartbeats missed
        daemon.assembly.enqueue(agent_key("silent"))  # the registry's timer, come due
        wait_until(
            "the silent agent's task to be requeued",
            lambda: store.get_task(task.id).state is TaskState.CREATED,
        )
        assert store.get_agent("silent").status is AgentStatus.OFFLINE
        moves = [(e.from_state, e.to_state) for e in store.events_for(task.id) if e.to_state]
        assert moves[-2:] == [
            (TaskState.RUNNING, TaskState.AGENT_LOST),
            (TaskState.AGENT_LOST, TaskState.CREATED),
        ]

        config = worker_config(
            tmp_path, "other", daemon.url, forgejo_token=served_forge.admin_token
        )
        assert Worker(config).run(once=True) == 0
        taken = store.get_task(task.id)
        assert taken.state is TaskState.REVIEW_PENDING and taken.agent_id == "other"
        assert taken.lease_generation == 2 and taken.pr_number is not None

        with pytest.raises(ConflictError):
            silent.report(task.id, lease_generation=1, note="I am back")
        with pytest.raises(ConflictError):
            silent.submit_receipt(receipt_for(task, lease=1))

        served_forge.merge(DEMO_REPO, taken.pr_number)
        daemon.assembly.resync.full()
        wait_until(
            "the task to be completed",
            lambda: store.get_task(task.id).state is TaskState.COMPLETED,
        )
        completions = [e for e in store.events_for(task.id) if e.to_state is TaskState.COMPLETED]
        assert len(completions) == 1
        [receipt] = store.receipts_for(task.id)
        assert receipt.agent_id == "other" and receipt.lease_generation == 2
        # The agent's stats are counted just after the task's change is saved.
        wait_until(
            "the completion to be counted",
            lambda: store.get_agent("other").stats.tasks_completed == 1,
        )
    finally:
        daemon.stop()


# An agent CLI that writes half its work, then works on until it is stopped.
HALF_DONE = (
    "import pathlib, time; pathlib.Path('half-done.md').write_text('half of it'); time.sleep(300)"
)


@pytest.mark.usefixtures("isolated_git")
def test_a_worker_stopped_with_sigterm_has_its_task_requeued_at_once(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """SIGTERM mid-run: the worker pushes the work so far to the task's branch, exits 0 after
    deregistering, and the registry's reconcile of that deregistration requeues the task (no
    heartbeat was missed: the clock never moved); the next agent takes it under a new lease."""
    clock = ManualClock(utc_now())
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    daemon = Daemon(settings, clock=clock)
    daemon.start()
    store = daemon.assembly.store
    try:
        [task] = queue_issues(daemon, served_forge, ["Add a version flag"])
        slow = AdapterSettings(
            command=(sys.executable, "-c", HALF_DONE, "{prompt}"),
            parser="raw",
        )
        config = worker_config(
            tmp_path, "w1", daemon.url, forgejo_token=served_forge.admin_token, adapter=slow
        )
        process, log_file = start_worker_process(config, tmp_path)
        try:
            partial = config.workdir / "tasks" / task.id / "half-done.md"
            wait_until("the agent CLI to have done half its work", partial.exists)
            assert store.get_task(task.id).state is TaskState.RUNNING
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        wait_until(
            "the task to be requeued",
            lambda: store.get_task(task.id).state is TaskState.CREATED,
            timeout=30,
        )
        agent = store.get_agent("w1")
        assert agent.deregistered and agent.status is AgentStatus.OFFLINE
        assert agent.status_reason == "deregistered by the agent"
        logged = log_file.read_text()
        assert "agent.handed_back" in logged and "task.partial_kept" in logged
        gateway = ForgejoGateway(served_forge.url, served_forge.admin_token)
        try:
            branch = gateway.get_branch(DEMO_REPO, task.branch)
            assert branch is not None, "the partial branch was not pushed"
            kept = gateway.get_commit(DEMO_REPO, branch.commit_sha)
            assert kept.message.startswith("Work in progress on Add a version flag")
        finally:
            gateway.close()
        other = AgentApi(daemon.url, timeout=10)
        other.register(
            RegisterRequest(agent_id="w2", type="demo-agent", roles=("developer",)),
            credential=ENROLMENT,
        )
        handout = other.dequeue()
        assert handout is not None and handout.task.id == task.id
        assert handout.lease_generation == 2
    finally:
        daemon.stop()
