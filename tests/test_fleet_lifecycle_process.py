"""The seed's fleet scenarios with the daemon as a process (``python -m webhook run``), as an
operator runs it, against the in-memory Forgejo served on loopback:

* an agent registers a new role and capability (their labels appear in the repository) with
  its Forgejo login (the issue is assigned to it while it holds the task, cleared when lost),
  then goes silent → 3 missed heartbeats → ``agent_lost`` → requeued to another agent (a
  real worker with the demo agent CLI) → its pull request merged → ``completed``, once;
* a dequeue answer lost on its way (the agent heartbeats on, never listing the task) → the
  task requeued once ``api.handout_grace`` has passed;
* a worker process stopped with SIGTERM mid-run → its task requeued within the one registry
  reconcile its deregistration causes (the heartbeat interval is an hour, so nothing else
  could requeue it in time).

Nothing here reaches into the daemon: tasks are read over its HTTP API with the operator
token. Time is real, so the heartbeat interval is short in the first test; every wait polls
against a generous deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.agent.client import AgentApi
from reconciler.agent.worker import Worker
from reconciler.errors import ConflictError
from reconciler.fleet.api import RegisterRequest
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import TaskState
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import AdapterSettings
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_daemon import DaemonProcess, start_daemon
from tests.test_fleet_lifecycle import HALF_DONE
from tests.test_worker import (
    ENROLMENT,
    OPERATOR,
    file_issue,
    receipt_for,
    start_worker_process,
    wait_until,
    worker_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_git")]

CONFIG = """\
[forgejo]
url = "{url}"
token = "{token}"
repos = ["{repo}"]
bot_login = "fleet-admin"

[webhook]
bind = "127.0.0.1"
port = 0

[loop]
workers = 2
resync_interval = 1
full_resync_interval = 2
shutdown_grace = 10

[api]
operator_token = "{operator}"
enrolment_secret = "{enrolment}"
heartbeat_interval = {interval}
missed_heartbeats = 3
handout_grace = {grace}

[store]
path = "{store}"
"""

WAIT_S = 90.0


def start(
    forge: ForgejoSandbox, tmp_path: Path, *, interval: float, grace: float = 60
) -> tuple[DaemonProcess, str]:
    config = tmp_path / "fleet.toml"
    config.write_text(
        CONFIG.format(
            url=forge.url,
            token=forge.admin_token,
            repo=DEMO_REPO,
            operator=OPERATOR,
            enrolment=ENROLMENT,
            interval=interval,
            grace=grace,
            store=tmp_path / "state",
        )
    )
    daemon = start_daemon(config)
    started = daemon.wait_for("daemon.started", timeout=WAIT_S)
    return daemon, str(started["url"])


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
            try:
                daemon.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=10)


@pytest.fixture
def people() -> Iterator[list[ForgejoGateway]]:
    """Gateways a test opened as a person, closed after it."""
    opened: list[ForgejoGateway] = []
    yield opened
    for gateway in opened:
        gateway.close()


def label_names(gateway: ForgejoGateway) -> set[str]:
    return {label.name for label in gateway.list_labels(DEMO_REPO)}


def read_task(url: str, task_id: str) -> dict[str, object]:
    """The task and its events, as the daemon's API gives them to an operator."""
    answer = httpx.get(
        f"{url}/api/v1/tasks/{task_id}",
        headers={"Authorization": f"Bearer {OPERATOR}"},
        timeout=10,
    )
    if answer.status_code == 404:
        return {}
    answer.raise_for_status()
    detail: dict[str, object] = answer.json()
    return detail


def state_of(url: str, task_id: str) -> str | None:
    detail = read_task(url, task_id)
    task = detail.get("task")
    return str(task["state"]) if isinstance(task, dict) else None


def moves(url: str, task_id: str) -> list[tuple[str | None, str]]:
    events = read_task(url, task_id).get("events")
    assert isinstance(events, list)
    return [(e["from_state"], e["to_state"]) for e in events if e.get("to_state")]


def test_a_silent_agent_is_lost_after_three_missed_heartbeats_and_another_completes_once(
    served_forge: ForgejoSandbox,
    tmp_path: Path,
    daemons: list[DaemonProcess],
    people: list[ForgejoGateway],
) -> None:
    """Heartbeats every 2 s: the silent agent's running task is agent_lost and requeued once
    6 s pass without one; a real worker takes it under lease 2 and its PR merges: completed,
    exactly once; the silent agent can neither report nor hand in a receipt afterwards."""
    daemon, url = start(served_forge, tmp_path, interval=2)
    daemons.append(daemon)
    task = file_issue(served_forge, "Add a version flag")
    wait_until("the task", lambda: state_of(url, task.id) == "created", timeout=WAIT_S)

    served_forge.create_user("bot-silent")
    person = ForgejoGateway(served_forge.url, served_forge.admin_token)
    people.append(person)
    person.add_collaborator(DEMO_REPO, "bot-silent")
    silent = AgentApi(url, timeout=10)
    silent.register(
        RegisterRequest(
            agent_id="silent",
            type="demo-agent",
            roles=("developer", "documenter"),
            capabilities=("docs",),
            forgejo_login="bot-silent",
        ),
        credential=ENROLMENT,
    )
    # The label vocabulary follows the fleet: the new role and capability get their labels.
    wait_until(
        "the agent's labels",
        lambda: {"agent/documenter", "needs/docs"} <= label_names(person),
        timeout=WAIT_S,
    )
    handout = silent.dequeue()
    assert handout is not None and handout.task.id == task.id
    silent.report(task.id, lease_generation=handout.lease_generation, running=True)
    assert state_of(url, task.id) == TaskState.RUNNING
    # The issue's assignee is the agent's Forgejo login while it holds the task.
    wait_until(
        "the assignee",
        lambda: person.get_issue(DEMO_REPO, task.issue_number).assignees == ("bot-silent",),
        timeout=WAIT_S,
    )

    # No heartbeat from here on: the daemon's own timer finds it silent.
    wait_until("the task to be requeued", lambda: state_of(url, task.id) == "created",
               timeout=WAIT_S)  # fmt: skip
    assert moves(url, task.id)[-2:] == [("running", "agent_lost"), ("agent_lost", "created")]
    wait_until(
        "the assignee to be cleared",
        lambda: person.get_issue(DEMO_REPO, task.issue_number).assignees == (),
        timeout=WAIT_S,
    )
    agents = httpx.get(
        f"{url}/api/v1/agents", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
    ).json()
    [gone] = [a for a in agents["agents"] if a["id"] == "silent"]
    assert gone["status"] == "offline"
    assert "missed intervals" in gone["status_reason"]

    config = worker_config(tmp_path, "other", url, forgejo_token=served_forge.admin_token)
    assert Worker(config).run(once=True) == 0
    taken = read_task(url, task.id)["task"]
    assert isinstance(taken, dict)
    assert (taken["state"], taken["agent_id"], taken["lease_generation"]) == (
        "review_pending", "other", 2,
    )  # fmt: skip
    with pytest.raises(ConflictError):
        silent.report(task.id, lease_generation=1, note="I am back")
    with pytest.raises(ConflictError):
        silent.submit_receipt(receipt_for(task, lease=1))

    served_forge.merge(DEMO_REPO, int(str(taken["pr_number"])))
    wait_until("the task to be completed", lambda: state_of(url, task.id) == "completed",
               timeout=WAIT_S)  # fmt: skip
    assert [m for m in moves(url, task.id) if m[1] == "completed"] == [
        ("review_pending", "completed")
    ]


def test_a_worker_stopped_with_sigterm_has_its_task_requeued_within_one_reconcile(
    served_forge: ForgejoSandbox, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Heartbeats an hour apart, so only the worker's hand-back can requeue its task: SIGTERM
    mid-run, the worker exits 0, and the task is ``created`` again (agent_lost on the way)
    as soon as the daemon reconciles the deregistration; another agent takes it at lease 2."""
    daemon, url = start(served_forge, tmp_path, interval=3600)
    daemons.append(daemon)
    task = file_issue(served_forge, "Add a version flag")
    wait_until("the task", lambda: state_of(url, task.id) == "created", timeout=WAIT_S)
    slow = AdapterSettings(command=(sys.executable, "-c", HALF_DONE, "{prompt}"), parser="raw")
    config = worker_config(
        tmp_path, "w1", url, forgejo_token=served_forge.admin_token, adapter=slow
    )
    process, log_file = start_worker_process(config, tmp_path)
    try:
        partial = config.workdir / "tasks" / task.id / "half-done.md"
        wait_until("the agent CLI to have done half its work", partial.exists, timeout=WAIT_S)
        assert state_of(url, task.id) == "running"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    wait_until("the task to be requeued", lambda: state_of(url, task.id) == "created",
               timeout=30)  # fmt: skip
    assert moves(url, task.id)[-2:] == [("running", "agent_lost"), ("agent_lost", "created")]
    events = read_task(url, task.id)["events"]
    assert isinstance(events, list)
    lost = [e for e in events if e.get("to_state") == "agent_lost"][-1]
    assert "deregistered by the agent" in str(lost["reason"])
    other = AgentApi(url, timeout=10)
    other.register(
        RegisterRequest(agent_id="w2", type="demo-agent", roles=("developer",)),
        credential=ENROLMENT,
    )
    handout = other.dequeue()
    assert handout is not None and handout.task.id == task.id
    assert handout.lease_generation == 2


def test_a_task_whose_dequeue_answer_was_lost_is_requeued_after_the_handout_grace(
    served_forge: ForgejoSandbox, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """The agent dequeues but drops the answer (as a cut connection would) and heartbeats on
    without the task: it stays ``assigned`` while the grace lasts, then the daemon requeues it
    (the agent stays online) and the next dequeue hands it out again under lease 2."""
    daemon, url = start(served_forge, tmp_path, interval=1, grace=3)
    daemons.append(daemon)
    task = file_issue(served_forge, "Add a version flag")
    wait_until("the task", lambda: state_of(url, task.id) == "created", timeout=WAIT_S)
    agent = AgentApi(url, timeout=10)
    agent.register(
        RegisterRequest(agent_id="forgetful", type="demo-agent", roles=("developer",)),
        credential=ENROLMENT,
    )
    lost = agent.dequeue()
    assert lost is not None and lost.task.id == task.id and lost.lease_generation == 1
    assert state_of(url, task.id) == "assigned"

    def beat_and_look() -> bool:
        agent.heartbeat([], load=0.0)  # alive, and holding nothing
        return state_of(url, task.id) == "created"

    wait_until("the lost handout to be requeued", beat_and_look, timeout=WAIT_S)
    events = read_task(url, task.id)["events"]
    assert isinstance(events, list)
    taken_back = [e for e in events if e.get("to_state") == "agent_lost"]
    assert len(taken_back) == 1 and "never received the task" in str(taken_back[0]["reason"])
    again = agent.dequeue()
    assert again is not None and again.task.id == task.id and again.lease_generation == 2
