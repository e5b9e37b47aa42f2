"""The pull worker: two worker processes sharing the work of a real daemon against the
in-memory Forgejo, one task with ``once``, stop orders and self-fencing, and the receipt
outbox surviving a daemon restart mid-submission and a worker restart before the ack.

Waits are bounded: the API or the store is polled against a deadline; no test sleeps for a
fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from pydantic import SecretStr

from reconciler.agent.client import AgentApi
from reconciler.agent.config import WorkerConfig
from reconciler.agent.taskrun import TaskRun
from reconciler.agent.worker import Worker, serve
from reconciler.fleet.api import ReceiptRequest
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import (
    AgentStatus,
    RepoName,
    Task,
    TaskState,
    branch_for,
    requeue,
    task_id_for,
    transition,
)
from reconciler.run.adapters import group_members, start_local
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ApiSettings,
    BudgetsSettings,
    ForgejoSettings,
    LoopSettings,
    Settings,
    StoreSettings,
    TaskBudget,
    WebhookSettings,
)
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO
from webhook.daemon import Assembly, Daemon, build, http_app, utc_now
from webhook.server import HttpServer

ENROLMENT = "worker-test-enrolment"
OPERATOR = "worker-test-operator"
DEMO_AGENT = AdapterSettings(
    command=(sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"), parser="claude-json"
)
WAIT_S = 60.0


def wait_until(what: str, check: Callable[[], bool], *, timeout: float = WAIT_S) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_while_progressing(
    what: str,
    check: Callable[[], bool],
    progress: Callable[[], object],
    *,
    stall: float = WAIT_S,
    cap: float = 15 * WAIT_S,
) -> None:
    """Poll ``check`` until it holds; fail when ``progress()`` has not changed for ``stall``
    seconds (the work stopped), or after ``cap`` seconds in all.

    For work whose amount is fixed but whose speed is the machine's: a busy box makes it
    slower, not wrong, so only a stall (or an absurd total) fails.
    """
    started = time.monotonic()
    last = progress()
    moved = started
    while not check():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, moved = current, now
        if now - moved > stall:
            raise AssertionError(f"no progress for {stall:.0f}s waiting for {what}: {last}")
        if now - started > cap:
            raise AssertionError(f"timed out after {cap:.0f}s waiting for {what}: {last}")
        time.sleep(0.05)


def worker_config(tmp_path: Path, name: str, server: str, **fields: Any) -> WorkerConfig:
    values: dict[str, Any] = {
        "server": server,
        "token": ENROLMENT,
        "agent_id": name,
        "agent_type": "demo-agent",
        "adapter": DEMO_AGENT,
        "roles": ("developer",),
        "capabilities": ("code:python",),
        "max_concurrency": 2,
        "hostname": f"{name}-box",
        "workdir": tmp_path / name / "work",
        "state_dir": tmp_path / name / "state",
        "forgejo_token": "unused",
        "poll_interval": 0.2,
        "retry_initial": 0.2,
        "retry_max": 1.0,
        "request_timeout": 10.0,
    }
    values.update(fields)
    return WorkerConfig.model_validate(values)


def config_json(config: WorkerConfig) -> str:
    """The config as JSON with its secrets in clear, for a worker process."""
    data = config.model_dump(mode="json")
    data["token"] = config.token.get_secret_value() if config.token else None
    data["forgejo_token"] = config.forgejo_token.get_secret_value()
    return json.dumps(data)


# --- the daemon stand-ins ------------------------------------------------------------------


def daemon_settings(forge_url: str, token: str, state: Path) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url=forge_url, token=SecretStr(token), repos=(DEMO_REPO,), bot_login="fleet-admin"
        ),
        webhook=WebhookSettings(bind="127.0.0.1", port=0),
        loop=LoopSettings(workers=2, resync_interval=3600, shutdown_grace=10),
        api=ApiSettings(operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)),
        store=StoreSettings(path=state),
    )


@pytest.fixture
def daemon(served_forge: ForgejoSandbox, tmp_path: Path) -> Iterator[Daemon]:
    """The real daemon (loop, resync, HTTP) on loopback against the served Forgejo, with
    the label vocabulary in place."""
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    running = Daemon(settings)
    running.start()
    yield running
    running.stop()


def file_issue(forge: ForgejoSandbox, title: str) -> Task:
    """A labelled issue, as a person files it; the task id its issue will have."""
    number = forge.create_issue(
        DEMO_REPO, title, body=f"## Goal\n{title}, please.", labels=["fleet/task"]
    )
    tid = task_id_for(DEMO_REPO, number)
    now = utc_now()
    return Task(
        id=tid, repo=RepoName(DEMO_REPO), issue_number=number, title=title,
        branch=branch_for(tid, title), created_at=now, updated_at=now,
    )  # fmt: skip


def queue_issues(daemon: Daemon, forge: ForgejoSandbox, titles: list[str]) -> list[Task]:
    """File issues and have the daemon turn them into waiting tasks (a resync, as on a timer)."""
    tasks = [file_issue(forge, title) for title in titles]
    daemon.assembly.resync.full()
    store = daemon.assembly.store
    wait_until(
        "the tasks to be created",
        lambda: all(store.find_task(t.id) is not None for t in tasks),
    )
    return tasks


class ApiServer:
    """The daemon's HTTP app and store without its loop, which a test stops and restarts on
    the same port and state directory, as an operator restarts the daemon."""

    def __init__(self, state: Path) -> None:
        self.settings = daemon_settings("http://forgejo.invalid", "unused", state)
        self.port = 0
        self.store: Store
        self.assembly: Assembly
        self.http: HttpServer
        self.wrap: Callable[[Any], Any] = lambda app: app
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store = Store.open(self.settings.store.path)
        self.assembly = build(self.settings, store=self.store)
        app = self.wrap(http_app(self.assembly, readiness=dict))
        self.http = HttpServer(app, host="127.0.0.1", port=self.port)
        self.port = self.http.port
        self.http.start()

    def stop(self) -> None:
        self.http.stop()
        for close in self.assembly.closers:
            close()
        self.store.close()

    def waiting_task(self, number: int) -> Task:
        now = utc_now()
        tid = task_id_for(DEMO_REPO, number)
        task = Task(
            id=tid, repo=RepoName(DEMO_REPO), issue_number=number, title=f"Issue {number}",
            branch=branch_for(tid, f"Issue {number}"), created_at=now, updated_at=now,
        )  # fmt: skip
        self.store.put_task(task)
        return task


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "daemon")
    yield server
    if not server.store.closed:  # a test may leave it stopped
        server.stop()


def receipt_for(task: Task, *, lease: int = 1, receipt_id: str | None = None) -> ReceiptRequest:
    return ReceiptRequest(
        receipt_id=receipt_id or f"{task.id}-l{lease}-r",
        task_id=task.id,
        lease_generation=lease,
        pr_number=3,
        branch=task.branch,
        commits=("c" * 40,),
        summary="done",
    )


def holding_worker(
    tmp_path: Path, server: ApiServer, *, monotonic: Callable[[], float] = time.monotonic
) -> tuple[Worker, list[TaskRun]]:
    """A worker registered with the server whose runs only wait to be stopped."""
    taken: list[TaskRun] = []

    def hold(run: TaskRun) -> None:
        taken.append(run)
        run.cancelled.wait(30)

    worker = Worker(worker_config(tmp_path, "w1", server.url), execute=hold, monotonic=monotonic)
    worker.open()
    return worker, taken


# --- two worker processes against the daemon -----------------------------------------------


def start_worker_process(
    config: WorkerConfig, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    config_file = tmp_path / f"{config.agent_id}.json"
    config_file.write_text(config_json(config))
    log_file = tmp_path / f"{config.agent_id}.log"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from reconciler.engine.logs import configure_logging\n"
        "from reconciler.agent.config import WorkerConfig\n"
        "from reconciler.agent.worker import serve\n"
        "configure_logging(level='info', json=True)\n"
        "sys.exit(serve(WorkerConfig.model_validate_json(Path(sys.argv[1]).read_text())))\n"
    )
    with log_file.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={k: v for k, v in os.environ.items() if not k.startswith("AGENT_FLEET_")},
        )
    return process, log_file


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@pytest.mark.usefixtures("isolated_git")
def test_pull_mode_with_two_worker_processes_against_the_daemon(
    daemon: Daemon, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Four labelled issues, two worker processes with the demo agent CLI: each task is taken
    once, by one worker, and ends in review with its PR (the agent's file in it), its receipt
    stored and status/review on the issue; nothing runs twice."""
    titles = ["Add a version flag", "Write the changelog", "Fix the typo", "Add a test"]
    tasks = queue_issues(daemon, served_forge, titles)
    store = daemon.assembly.store
    processes = []
    for name in ("w1", "w2"):
        config = worker_config(tmp_path, name, daemon.url, forgejo_token=served_forge.admin_token)
        processes.append((name, *start_worker_process(config, tmp_path)))

    def states() -> tuple[object, ...]:
        # Each task's state and event count, and what the workers logged: any of them
        # moving is progress (two processes on a busy box take a while to start and run).
        return (
            tuple(
                (t.state, len(store.events_for(t.id))) if (t := store.find_task(task.id)) else None
                for task in tasks
            ),
            tuple(log_file.stat().st_size for _, _, log_file in processes),
        )

    try:
        wait_while_progressing(
            "every task to reach review",
            lambda: all(
                (t := store.find_task(task.id)) is not None and t.state is TaskState.REVIEW_PENDING
                for task in tasks
            ),
            states,
        )
        gateway = ForgejoGateway(served_forge.url, served_forge.admin_token)
        try:
            wait_while_progressing(
                "status/review on every issue",
                lambda: all(
                    "status/review" in gateway.get_issue(DEMO_REPO, t.issue_number).labels
                    for t in tasks
                ),
                states,
            )
            for task in tasks:
                done = store.get_task(task.id)
                assert done.pr_number is not None and done.attempt == 1
                pull = gateway.get_pull(DEMO_REPO, done.pr_number)
                assert pull.head_branch == task.branch
                assert f"Closes #{task.issue_number}" in pull.body
                files = [f.filename for f in gateway.list_pull_files(DEMO_REPO, done.pr_number)]
                slug = task.branch.split("-", 2)[2]
                assert files == [f"fleet-notes/{slug}.md"]
                [receipt] = store.receipts_for(task.id)
                assert receipt.agent_id == done.agent_id and receipt.pr_number == done.pr_number
                commits = gateway.list_pull_commits(DEMO_REPO, done.pr_number)
                assert [c.sha for c in commits] == list(receipt.commits)
                moves = [e.to_state for e in store.events_for(task.id) if e.to_state]
                assert moves == [
                    TaskState.CREATED,
                    TaskState.ASSIGNED,
                    TaskState.RUNNING,
                    TaskState.REVIEW_PENDING,
                ]
        finally:
            gateway.close()
    finally:
        for _, process, _ in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for _, process, _ in processes]
    assert codes == [0, 0]
    taken: dict[str, list[str]] = {}
    for name, _, log_file in processes:
        for event in log_events(log_file):
            if event.get("event") == "task.taken":
                taken.setdefault(event["task"], []).append(name)
    assert sorted(taken) == sorted(t.id for t in tasks)
    assert all(len(names) == 1 for names in taken.values()), taken
    for task in tasks:
        assert taken[task.id] == [store.get_task(task.id).agent_id]


@pytest.mark.usefixtures("isolated_git")
def test_once_runs_one_task_and_a_restart_registers_with_the_saved_token(
    daemon: Daemon, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """``once``: one task to a delivered receipt, exit 0. Started again without the enrolment
    secret, the worker registers its id again with the token it saved."""
    [task] = queue_issues(daemon, served_forge, ["Add a version flag"])
    config = worker_config(tmp_path, "w1", daemon.url, forgejo_token=served_forge.admin_token)
    assert Worker(config).run(once=True) == 0
    done = daemon.assembly.store.get_task(task.id)
    assert done.state is TaskState.REVIEW_PENDING and done.agent_id == "w1"
    assert len(daemon.assembly.store.receipts_for(task.id)) == 1
    again = Worker(config.model_copy(update={"token": None}))
    again.open()
    try:
        assert again.agent_id == "w1"
        assert again.pending_receipts() == 0
    finally:
        again.close()


def test_a_worker_the_daemon_forgot_enrols_again_with_the_enrolment_secret(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The daemon lost its state: a worker restarted from its saved token enrols again with the
    enrolment secret and logs ``agent.reenrolled``; without the secret it exits 2 with a
    ``agent.register_refused`` line saying what to do, instead of a traceback."""
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    first = Daemon(settings)
    first.start()
    try:
        config = worker_config(tmp_path, "w1", first.url)
        worker = Worker(config)
        worker.open()
        worker.close()
    finally:
        first.stop()
    shutil.rmtree(tmp_path / "daemon")  # the daemon's local state is gone
    second = Daemon(settings)
    second.start()
    try:
        config = config.model_copy(update={"server": second.url})
        with structlog.testing.capture_logs() as refused_logs:
            assert serve(config.model_copy(update={"token": None})) == 2
        [refusal] = [e for e in refused_logs if e["event"] == "agent.register_refused"]
        assert "--token" in refusal["error"] and "enrolment secret" in refusal["error"]
        assert second.assembly.store.find_agent("w1") is None
        again = Worker(config)
        with structlog.testing.capture_logs() as logs:
            again.open()
        try:
            assert again.agent_id == "w1"
            [reenrolled] = [e for e in logs if e["event"] == "agent.reenrolled"]
            assert "enrolment secret" in reenrolled["reason"]
            assert second.assembly.store.get_agent("w1").status is AgentStatus.ONLINE
        finally:
            again.close()
    finally:
        second.stop()


# --- stop orders and fencing ----------------------------------------------------------------


def test_a_stop_order_in_a_heartbeat_reply_kills_the_run(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The task was taken back (requeued): the next heartbeat's reply says stop, and the run's
    CLI process group is gone."""
    task = api_server.waiting_task(5)
    started = threading.Event()
    pids: list[int] = []

    def run_cli(run: TaskRun) -> None:
        local = start_local(["sleep", "60"], cwd=tmp_path, env=dict(os.environ), timeout=60)
        assert local.pid is not None
        pids.append(local.pid)
        run.attach(local)
        started.set()
        local.wait()

    worker = Worker(worker_config(tmp_path, "w1", api_server.url), execute=run_cli)
    worker.open()
    try:
        assert worker.take_once()
        assert started.wait(10)
        assert worker.beat_once() is not None and worker.running()  # still ours: no stop
        stored = api_server.store.get_task(task.id)
        requeued, event = transition(stored, TaskState.CREATED, now=utc_now(), actor="test",
                                     agent_id=None)  # fmt: skip
        api_server.store.record(requeued, event)
        beat = worker.beat_once()
        assert beat is not None and [s.code for s in beat.stop] == ["requeued"]
        wait_until("the run to end", lambda: not worker.running(), timeout=15)
        assert group_members(pids[0]) == []
    finally:
        worker.stop()
        worker.close()


def test_a_stopping_worker_hands_its_running_tasks_back(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """SIGTERM mid-run (a pod or unit stopping): the run is cancelled, the agent deregisters,
    and the daemon requeues its task at once instead of after the missed heartbeats."""
    task = api_server.waiting_task(7)
    worker, taken = holding_worker(tmp_path, api_server)
    runner = threading.Thread(target=worker.run, name="worker-run")
    runner.start()
    try:
        wait_until("the run to start", lambda: bool(taken))
        assert api_server.store.get_task(task.id).state is TaskState.ASSIGNED
    finally:
        worker.stop()
        runner.join(timeout=30)
        worker.close()
    assert not runner.is_alive() and taken[0].cancelled.is_set()
    assert api_server.store.get_agent("w1").deregistered
    api_server.assembly.loop.drain()
    requeued = api_server.store.get_task(task.id)
    assert requeued.state is TaskState.CREATED and requeued.agent_id is None


def test_without_an_acknowledged_heartbeat_for_the_lease_ttl_the_worker_fences_itself(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Daemon unreachable: heartbeats fail; at lease_ttl_s since the last acknowledged one the
    runs are stopped and no task is taken; a heartbeat that gets through lifts the fence."""
    api_server.waiting_task(5)
    api_server.waiting_task(6)
    clock = [1000.0]
    worker, taken = holding_worker(tmp_path, api_server, monotonic=lambda: clock[0])
    try:
        assert worker.take_once()
        wait_until("the run to start", lambda: bool(taken))
        api_server.stop()
        clock[0] += worker.lease_ttl - 1
        assert worker.beat_once() is None
        assert worker.may_take_work() and not taken[0].cancelled.is_set()
        clock[0] += 1
        assert worker.beat_once() is None
        assert taken[0].cancelled.is_set() and "no heartbeat acknowledged" in taken[0].stop_reason
        assert not worker.may_take_work() and not worker.take_once()
        api_server.start()
        assert worker.beat_once() is not None and worker.may_take_work()
        assert worker.take_once()
    finally:
        worker.stop()
        worker.close()


# --- the receipt outbox ---------------------------------------------------------------------


def started_task(worker: Worker, server: ApiServer, taken: list[TaskRun], number: int) -> Task:
    """A task the worker dequeued and reported running."""
    task = server.waiting_task(number)
    assert worker.take_once()
    wait_until("the run to start", lambda: any(r.task_id == task.id for r in taken))
    worker.api.report(task.id, lease_generation=1, running=True)
    return server.store.get_task(task.id)


def test_a_receipt_survives_a_daemon_restart_mid_submission(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The daemon stores the receipt and dies before answering; while it is down the worker
    retries with backoff; after the restart the retry gets the first answer: one receipt."""
    clock = [0.0]
    worker, taken = holding_worker(tmp_path, api_server, monotonic=lambda: clock[0])
    try:
        task = started_task(worker, api_server, taken, 5)
        api_server.stop()
        # The next start answers the first receipt with a 503 after storing it: its answer
        # is lost, as if the daemon died in between.
        answered: list[int] = []

        def lose_first_answer(app: Any) -> Any:
            def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
                if environ["PATH_INFO"] != "/api/v1/receipts" or answered:
                    return app(environ, start_response)
                body = b"".join(app(environ, lambda *a, **k: None))
                answered.append(len(body))
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"the daemon went away"]

            return wrapped

        api_server.wrap = lose_first_answer
        api_server.start()
        worker.outbox.put(receipt_for(task))  # type: ignore[union-attr]
        assert worker.deliver_once() == pytest.approx(0.2)  # stored, but no answer
        assert len(api_server.store.receipts_for(task.id)) == 1 and answered
        api_server.stop()
        clock[0] += 0.2
        assert worker.deliver_once() == pytest.approx(0.4)  # the daemon is down
        assert worker.pending_receipts() == 1
        clock[0] += 0.1
        assert worker.deliver_once() == pytest.approx(0.3)  # not due yet: nothing sent
        api_server.wrap = lambda app: app
        api_server.start()
        clock[0] += 0.3
        assert worker.deliver_once() is None
        assert worker.pending_receipts() == 0 and len(worker.delivered) == 1
        assert len(api_server.store.receipts_for(task.id)) == 1
        assert api_server.store.get_task(task.id).state is TaskState.REVIEW_PENDING
    finally:
        worker.stop()
        worker.close()


def test_receipts_queued_before_a_worker_stops_arrive_once_after_it_starts_again(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Stopped after queueing one receipt (never sent) and after sending another whose answer
    it never recorded: started again from its state directory, without the enrolment secret,
    it delivers both, and the daemon holds each once."""
    worker, taken = holding_worker(tmp_path, api_server)
    try:
        unsent = started_task(worker, api_server, taken, 5)
        unacked = started_task(worker, api_server, taken, 6)
        assert worker.outbox is not None
        worker.outbox.put(receipt_for(unsent))
        worker.outbox.put(receipt_for(unacked))
        worker.api.submit_receipt(receipt_for(unacked))  # arrives; the ack is never recorded
    finally:
        worker.stop()
        worker.close()
    assert len(api_server.store.receipts_for(unacked.id)) == 1
    assert api_server.store.receipts_for(unsent.id) == []
    restarted = Worker(
        worker_config(tmp_path, "w1", api_server.url, token=None), execute=lambda run: None
    )
    restarted.open()
    try:
        assert restarted.pending_receipts() == 2
        assert restarted.deliver_once() is None
        assert restarted.pending_receipts() == 0 and len(restarted.delivered) == 2
    finally:
        restarted.close()
    for task in (unsent, unacked):
        assert len(api_server.store.receipts_for(task.id)) == 1
        assert api_server.store.get_task(task.id).state is TaskState.REVIEW_PENDING


def test_a_receipt_refused_for_good_leaves_the_outbox(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """A stale lease is never going to be accepted: the receipt is dropped, not retried."""
    worker, taken = holding_worker(tmp_path, api_server)
    try:
        task = started_task(worker, api_server, taken, 5)
        assert worker.outbox is not None
        worker.outbox.put(receipt_for(task, lease=7))
        assert worker.deliver_once() is None
        assert worker.pending_receipts() == 0 and worker.delivered == []
        assert api_server.store.receipts_for(task.id) == []
    finally:
        worker.stop()
        worker.close()


def test_the_agent_api_client_maps_refusals_to_the_error_module(api_server: ApiServer) -> None:
    """401/403/409 with the daemon's code; an unreachable daemon is transient."""
    from reconciler.errors import TransientError, UnauthenticatedError

    client = AgentApi(api_server.url, timeout=5)
    client.token = "forged"
    with pytest.raises(UnauthenticatedError) as refused:
        client.dequeue()
    assert refused.value.code == "unknown_token"
    api_server.stop()
    with pytest.raises(TransientError, match="cannot reach"):
        client.dequeue()


def test_a_rerun_after_review_carries_the_review_into_the_workers_prompt(forge: Any) -> None:
    """The dequeued task's review feedback (kept by the daemon) reaches the pull worker's prompt."""
    from datetime import UTC, datetime

    import httpx as _httpx

    from reconciler.agent.runner import prompt_for
    from reconciler.forgejo.gateway import ForgejoGateway as _Gateway
    from reconciler.models import RepoName, Task, task_id_for
    from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL

    number = forge.create_issue(DEMO_REPO, "Add a flag", body="## Goal\nAdd --version.")
    now = datetime.now(UTC)
    task = Task(
        id=task_id_for(DEMO_REPO, number),
        repo=RepoName(DEMO_REPO),
        issue_number=number,
        title="Add a flag",
        branch="task/x",
        created_at=now,
        updated_at=now,
        review_feedback=("alice: Please also document it in the README.",),
    )
    with _Gateway(
        IN_PROCESS_URL, forge.admin_token, transport=_httpx.WSGITransport(app=forge.app)
    ) as gateway:
        prompt = prompt_for(gateway, task, attempt=2)
    assert "Please also document it in the README." in prompt
    assert "Add --version." in prompt


@pytest.mark.usefixtures("isolated_git")
def test_a_rerun_after_its_pull_request_was_closed_unmerged_opens_a_new_one(
    daemon: Daemon, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Pull path: a pull request closed without merging is never reused; the task's next
    lease opens a new one from the same branch, and the closed one stays closed."""
    [task] = queue_issues(daemon, served_forge, ["Closed then rerun"])
    store = daemon.assembly.store
    config = worker_config(tmp_path, "w1", daemon.url, forgejo_token=served_forge.admin_token)
    worker = Worker(config)
    worker.open()
    gateway = ForgejoGateway(served_forge.url, served_forge.admin_token)

    def in_review_with_a_new_pull(previous: int | None) -> Callable[[], bool]:
        def check() -> bool:
            worker.deliver_once()
            done = store.get_task(task.id)
            return done.state is TaskState.REVIEW_PENDING and done.pr_number not in (None, previous)

        return check

    try:
        assert worker.take_once()
        wait_until("the first run's receipt", in_review_with_a_new_pull(None))
        first = store.get_task(task.id).pr_number
        assert first is not None
        # The receipt can be in before the run has let go of its slot (its thread ends after).
        wait_until("the first run to end", lambda: not worker.running(), timeout=15)
        gateway.edit_issue(DEMO_REPO, first, state="closed")
        waiting, event = requeue(
            store.get_task(task.id), now=utc_now(), actor="test", reason="closed unmerged"
        )
        store.record(waiting, event)
        assert worker.take_once()
        wait_until("the second run's receipt", in_review_with_a_new_pull(first))
        second = store.get_task(task.id).pr_number
        assert second is not None
        assert gateway.get_pull(DEMO_REPO, second).state == "open"
        assert gateway.get_pull(DEMO_REPO, first).state == "closed"
        assert gateway.get_pull(DEMO_REPO, second).head_branch == task.branch
    finally:
        gateway.close()
        worker.stop()
        for run in worker.running():
            if run.thread is not None:
                run.thread.join(timeout=30)
        worker.close()


@pytest.mark.usefixtures("isolated_git")
@pytest.mark.parametrize("delete_branch", [False, True])
def test_a_rerun_whose_earlier_work_was_merged_meanwhile_hands_that_work_in(
    daemon: Daemon, served_forge: ForgejoSandbox, tmp_path: Path, delete_branch: bool
) -> None:
    """Pull path: a run pushed its commit and PR, and its receipt never arrived; the person
    merged the PR. The rerun's agent changes nothing, yet it hands in the merged PR with its
    commits, and the task completes — no failed run, no second PR."""
    [task] = queue_issues(daemon, served_forge, ["Merged before its receipt"])
    store = daemon.assembly.store
    config = worker_config(tmp_path, "w1", daemon.url, forgejo_token=served_forge.admin_token)
    worker = Worker(config)
    worker.open()
    gateway = ForgejoGateway(served_forge.url, served_forge.admin_token)
    try:
        assert worker.take_once()
        wait_until(
            "the first run's pull request",
            lambda: (
                not worker.running()
                and gateway.find_pull_by_head(DEMO_REPO, task.branch) is not None
            ),
        )
        first = gateway.find_pull_by_head(DEMO_REPO, task.branch)
        assert first is not None
        # The run's receipt is still in the worker's outbox: its lease is given back (as when
        # the worker dies), and the person merges the pull request.
        waiting, event = requeue(
            store.get_task(task.id), now=utc_now(), actor="test", reason="lease lost"
        )
        store.record(waiting, event)
        gateway.merge_pull(DEMO_REPO, first.number, delete_branch=delete_branch)
        assert worker.take_once()

        def completed() -> bool:
            worker.deliver_once()
            return store.get_task(task.id).state is TaskState.COMPLETED

        wait_until("the rerun's receipt completes the task", completed)
        done = store.get_task(task.id)
        assert done.pr_number == first.number and done.attempt == 2
        pulls = gateway.list_pulls(DEMO_REPO, state="all")
        assert [p.number for p in pulls if p.head_branch == task.branch] == [first.number]
    finally:
        gateway.close()
        worker.stop()
        for run in worker.running():
            if run.thread is not None:
                run.thread.join(timeout=30)
        worker.close()


# A CLI in Claude Code's stream-json shape whose first message passes a 50-token budget, then
# works on for a minute: only the budget can end it early.
BUDGET_EATER = (
    "import json, time\n"
    "print(json.dumps({'type': 'system', 'subtype': 'init', 'session_id': 's-1'}), flush=True)\n"
    "usage = {'input_tokens': 100, 'output_tokens': 7}\n"
    "print(json.dumps({'type': 'assistant', 'message': {'id': 'm1', 'usage': usage}}), flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_pull_worker_stops_a_run_over_budget_and_the_task_fails_at_once(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The task's 50-token budget reaches the worker with the task; the run's first streamed
    message passes it, the worker stops the run and reports it, and the daemon fails the task
    over budget (not retryable) with what the run spent."""
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    budgets = BudgetsSettings(default=TaskBudget(tokens=50))
    running = Daemon(settings.model_copy(update={"budgets": budgets}))
    running.start()
    try:
        [task] = queue_issues(running, served_forge, ["Spend a lot"])
        eater = tmp_path / "eater.py"
        eater.write_text(BUDGET_EATER)
        adapter = AdapterSettings(command=(sys.executable, str(eater), "{prompt}"),
                                  parser="claude-json")  # fmt: skip
        config = worker_config(tmp_path, "w1", running.url, adapter=adapter,
                               forgejo_token=served_forge.admin_token)  # fmt: skip
        Worker(config).run(once=True)
        store = running.assembly.store
        wait_until("the task to fail", lambda: store.get_task(task.id).state is TaskState.FAILED)
        failed = store.get_task(task.id)
        assert failed.over_budget and not failed.failure_retryable
        assert failed.failure_reason == "over budget: spent 107 of 50 tokens"
        assert failed.spent_tokens == 107
    finally:
        running.stop()
