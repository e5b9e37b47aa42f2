"""Benchmark of dispatch: pull agents dequeuing on loopback, and a labelled issue's webhook to
an assigned task with its labels written in the in-memory Forgejo.

Run by hand: ``python bench/dispatch.py`` (``--quick`` for a few agents and samples; the smoke
test runs that). Two parts, one table:

**Dequeue, 100 concurrent pull agents.** Serves the daemon's own Bottle app
(``webhook.daemon.http_app`` over the assembly from ``build``) on the production server
(``webhook.server.HttpServer``, waitress, the configured 4 threads), registers the agents
through ``POST /api/v1/agents/register`` (each with 4 slots), seeds waiting tasks in the store
as the assignment controller leaves them, and drives ``POST /api/v1/tasks/dequeue`` from every
agent, each on its own keep-alive connection:

* **burst, nothing waiting** — every agent dequeues at the same instant, once, before any task
  is seeded: a hundred 204s that write nothing, the floor a burst cannot go below on this HTTP
  stack and machine (information);
* **burst** — the same with 100 tasks waiting, so every dequeue assigns: the thundering herd.
  Dequeues arriving while an assignment is being written are group committed (one durable
  write for the batch), so the row also counts the live state file's writes. p50/p99, shown
  for information: every dequeue waits for a durable write of the live state (~5-8 ms at 500
  documents) and the machine's two cores are shared with the load client, so the 20 ms figure
  is not reached here (group commit took it from ~370 to ~245 ms);
* **burst, an HTTP thread per agent** — the burst again on a second server over the same app
  with as many threads as agents (fresh agents and tasks), so every dequeue is in the app at
  once and batches as far as it can: what the configured 4 threads leave (information);
* **polling** — each agent dequeues once a second, staggered (100 dequeues/s offered, five
  times the worker's default poll rate), for 10 s, while new tasks arrive at 10 a second
  (written to the store by a thread of the server's process, as the assignment controller
  creates them): about one dequeue in ten assigns a task, the others find nothing for their
  agent (204). p99 of every dequeue (target: <= 20 ms), and p50/p99 of the ones that assigned;
* **double assignments** — a task handed out twice, counted from the answers the agents got
  and from the store's event log (target: 0).

**Webhook to assigned.** The real daemon (``webhook.daemon.Daemon``: loop, controllers,
HTTP) against the in-memory Forgejo served on loopback, with one ``localhost`` ssh host whose
agent CLI is ``true`` (the assignment controller places tasks on ssh agents; pull agents take
theirs). For each sample a person files a labelled issue in the sandbox (``fleet/task``,
``agent/developer``); the sandbox's signed ``issues`` delivery is held and the bench POSTs it to
the daemon's ``/webhooks/forgejo`` itself, starting the clock as it sends. Measured, by polling
the sandbox's state and the daemon's store every 0.25 ms:

* webhook → ``status/doing`` on the issue in Forgejo (the assignment controller's first write);
* webhook → task ``assigned`` in the store — written after the label and the assignment comment
  (local state last), so the labels are written by then (target p50: <= 50 ms).

Between samples the bench waits for the host's run (clone, ``true``, nothing to push → failed)
to end, so runs never overlap a measurement.

The dequeue load comes from a separate process forked before any server starts (``http.client``,
one thread per agent), so client and server share no interpreter lock — but they do share the
machine's cores, and the latencies include the client's own time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

# Importing the harness takes bench/ off sys.path, where the bench/ scripts' names would shadow
# the packages they measure: it comes before the project's imports (see bench/harness.py).
from harness import (
    ConnectionThreads,
    LoadClient,
    Row,
    percentile_ms,
    print_notes,
    print_table,
    register_agents,
    verdict,
)
from pydantic import SecretStr

from controllers.setup import WEBHOOK_EVENTS
from reconciler.engine.logs import configure_logging
from reconciler.fleet import operations
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import RepoName, Task, TaskState, branch_for, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ApiSettings,
    ForgejoSettings,
    HostSettings,
    LoopSettings,
    RetriesSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from reconciler.store.journal import Change, Journal
from webhook.daemon import Daemon, build, http_app
from webhook.receiver import WEBHOOK_PATH
from webhook.server import HttpServer

DEQUEUE_PATH = operations.DEQUEUE.path
ENROLMENT = "bench-enrolment-secret"
OPERATOR = "bench-operator-token"
WEBHOOK_SECRET = "bench-webhook-secret"
REPO = "fleet-admin/bench"
HOST = "bench-host"

AGENTS = 100
SLOTS = 4
POLL_INTERVAL = 1.0
POLL_SECONDS = 10.0
ARRIVALS = 10.0  # new tasks per second during the polling run
SAMPLES = 30
QUICK = {"agents": 10, "poll_seconds": 1.0, "arrivals": 5.0, "samples": 3}

DEQUEUE_P99_TARGET_MS = 20.0
BURST_P99_TARGET_MS = 20.0
ASSIGNED_P50_TARGET_MS = 50.0


# --- the load generator (runs in the forked client process) -------------------------------


@dataclass(frozen=True)
class Job:
    """One run: every agent dequeues ``rounds`` times, ``interval`` apart (0: all at once)."""

    port: int
    agents: tuple[tuple[str, str], ...]  # (agent id, token)
    seconds: float
    interval: float
    host: str = "127.0.0.1"


@dataclass
class Run:
    """What one run saw: per dequeue its latency (s), status, and the task it got, if any."""

    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    handed: list[tuple[str, str]] = field(default_factory=list)  # (task id, agent id)
    assigning: list[float] = field(default_factory=list)  # latencies of the 200s
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def drive(job: Job) -> Run:
    """One keep-alive connection and thread per agent; a barrier starts them together."""
    run = Run()
    lock = threading.Lock()
    together = ConnectionThreads(len(job.agents))

    def agent(n: int) -> None:
        agent_id, token = job.agents[n]
        conn = http.client.HTTPConnection(job.host, job.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        mine: list[tuple[float, int, str | None]] = []
        try:
            together.ready()
            # Polling: staggered over the interval; burst: all at the same instant, once.
            due = together.started + (n / len(job.agents)) * job.interval
            while True:
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                before = time.perf_counter()
                conn.request("POST", DEQUEUE_PATH, body=b"{}", headers=headers)
                response = conn.getresponse()
                body = response.read()
                latency = time.perf_counter() - before
                task = json.loads(body)["task"]["id"] if response.status == 200 else None
                mine.append((latency, response.status, task))
                due += job.interval
                if job.interval == 0 or due >= together.started + job.seconds:
                    break
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            with lock:
                run.errors.append(f"{agent_id}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                for latency, status, task in mine:
                    run.latencies.append(latency)
                    run.statuses.append(status)
                    if task is not None:
                        run.handed.append((task, agent_id))
                        run.assigning.append(latency)

    started = together.run(agent, timeout=job.seconds + 120, lead=0.05)
    run.elapsed = time.perf_counter() - started
    return run


# --- part 1: dequeue -----------------------------------------------------------------------


def dequeue_settings(root: Path) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="http://forgejo.invalid:3000",
            token=SecretStr("never-used: dequeues make no Forgejo call"),
            repos=(REPO,),
            bot_login="fleet-bot",
        ),
        api=ApiSettings(operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)),
        store=StoreSettings(path=root / "state"),
    )


def registration(n: int, *, prefix: str) -> dict[str, object]:
    """What the ``n``-th pull agent (named ``prefix``-n) tells the API when it registers."""
    return {
        "agent_id": f"{prefix}-{n:03d}",
        "type": "claude-code",
        "hostname": f"worker-{n // 4:03d}",
        "roles": ["developer"],
        "capabilities": ["code:python", "test"],
        "max_concurrency": SLOTS,
    }


def pull_agents(port: int, count: int, *, prefix: str) -> tuple[tuple[str, str], ...]:
    """``count`` pull agents registered through the API; their (id, token)."""
    bodies = (registration(n, prefix=prefix) for n in range(count))
    return tuple(register_agents(port, bodies, enrolment=ENROLMENT))


def seed_tasks(store: Store, first: int, count: int) -> list[str]:
    """Waiting tasks as the assignment controller leaves them, a mix of demands and priorities."""
    now = datetime.now(UTC)
    ids: list[str] = []
    for number in range(first, first + count):
        tid = task_id_for(REPO, number)
        title = f"Task {number}"
        store.put_task(
            Task(
                id=tid,
                repo=RepoName(REPO),
                issue_number=number,
                title=title,
                branch=branch_for(tid, title),
                required_role="developer" if number % 2 else None,
                required_capabilities=("code:python",) if number % 3 == 0 else (),
                created_at=now,
                updated_at=now,
            )
        )
        ids.append(tid)
    return ids


class CountedStateWrites:
    """Counts the store's durable writes of its live state while in a ``with`` block.

    Wraps ``reconciler.store.journal.Journal.append``, which every write of the live state goes
    through (one journal record each), under the store's lock (so the count needs no lock of
    its own).
    """

    def __init__(self) -> None:
        self.count = 0
        self._original = Journal.append

    def __enter__(self) -> Self:
        original = self._original

        def counted(journal: Journal, changes: Iterable[Change]) -> None:
            self.count += 1
            original(journal, changes)

        Journal.append = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Journal.append = self._original  # type: ignore[method-assign]


@dataclass
class DequeueResults:
    idle: Run
    burst: Run
    burst_writes: int
    polling: Run
    wide: Run
    wide_writes: int
    agents: int
    tasks: int
    doubles_answers: int
    doubles_log: int
    threads: int


def doubles(runs: list[Run]) -> int:
    seen: dict[str, int] = {}
    for run in runs:
        for task, _ in run.handed:
            seen[task] = seen.get(task, 0) + 1
    return sum(count - 1 for count in seen.values() if count > 1)


def measure_dequeue(
    client: LoadClient[Job, Run], options: Options, *, root: Path
) -> DequeueResults:
    settings = dequeue_settings(root)

    def dequeues(
        port: int, agents: tuple[tuple[str, str], ...], *, seconds: float = 0, interval: float = 0
    ) -> Run:
        """Every agent dequeues on ``port``: once (no interval), or each interval for seconds."""
        run, _ = client.run(
            Job(port=port, agents=agents, seconds=seconds, interval=interval),
            timeout=seconds + 180,
        )
        return run

    with Store.open(settings.store.path) as store:
        assembly = build(settings, store=store)
        app = http_app(assembly, readiness=dict)
        server = HttpServer(app, host="127.0.0.1", port=0, threads=settings.webhook.threads)
        server.start()
        try:
            agents = pull_agents(server.port, options.agents, prefix="pull")
            # Nothing waits yet: every dequeue answers 204 and writes nothing.
            idle = dequeues(server.port, agents)
            tasks = seed_tasks(store, 1, options.agents)
            with CountedStateWrites() as burst_writes:
                burst = dequeues(server.port, agents)
            done = threading.Event()
            arrived: list[str] = []

            def arrive() -> None:
                """New waiting tasks at the arrival rate, on schedule, until the run ends."""
                period = 1 / options.arrivals
                due = time.perf_counter()
                number = options.agents + 1
                while not done.wait(max(due - time.perf_counter(), 0)):
                    arrived.extend(seed_tasks(store, number, 1))
                    number += 1
                    due += period

            feeder = threading.Thread(target=arrive, name="arrivals", daemon=True)
            feeder.start()
            try:
                polling = dequeues(
                    server.port, agents, seconds=options.poll_seconds, interval=POLL_INTERVAL
                )
            finally:
                done.set()
                feeder.join(timeout=10)
            tasks += arrived
            # The burst again, on a server with an HTTP thread per agent, so every dequeue is
            # in the app at once: fresh agents (the others' slots are partly used by now) and
            # fresh tasks.
            wide_server = HttpServer(app, host="127.0.0.1", port=0, threads=options.agents)
            wide_server.start()
            try:
                wide_agents = pull_agents(server.port, options.agents, prefix="wide")
                tasks += seed_tasks(store, len(tasks) + 1, options.agents)
                with CountedStateWrites() as wide_writes:
                    wide = dequeues(wide_server.port, wide_agents)
            finally:
                wide_server.stop()
            in_log = sum(
                max(
                    sum(e.to_state is TaskState.ASSIGNED for e in store.events_for(task_id)) - 1,
                    0,
                )
                for task_id in tasks
            )
        finally:
            server.stop()
            assembly.gateway.close()
    runs = (("idle burst", idle), ("burst", burst), ("polling", polling), ("wide burst", wide))
    for name, run in runs:
        if run.errors or set(run.statuses) - {200, 204} or not run.latencies:
            raise SystemExit(
                f"{name}: answers {sorted(set(run.statuses))}, errors {run.errors[:3]}"
            )
    for name, run, expected in (
        ("idle burst", idle, 204),
        ("burst", burst, 200),
        ("wide burst", wide, 200),
    ):
        if set(run.statuses) != {expected}:
            raise SystemExit(f"{name}: expected only {expected}s, got {sorted(set(run.statuses))}")
    return DequeueResults(
        idle=idle,
        burst=burst,
        burst_writes=burst_writes.count,
        polling=polling,
        wide=wide,
        wide_writes=wide_writes.count,
        agents=len(agents),
        tasks=len(tasks),
        doubles_answers=doubles([burst, polling, wide]),
        doubles_log=in_log,
        threads=settings.webhook.threads,
    )


# --- part 2: webhook to assigned -----------------------------------------------------------


def daemon_settings(forge: ForgejoSandbox, root: Path) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url=forge.url,
            token=SecretStr(forge.admin_token),
            repos=(REPO,),
            bot_login="fleet-admin",
        ),
        webhook=WebhookSettings(bind="127.0.0.1", port=0, secret=SecretStr(WEBHOOK_SECRET)),
        loop=LoopSettings(workers=2, resync_interval=3600, shutdown_grace=10),
        api=ApiSettings(operator_token=SecretStr(OPERATOR)),
        store=StoreSettings(path=root / "daemon"),
        # A failed run waits a minute before its retry: never during the bench.
        retries=RetriesSettings(backoff_initial=600, backoff_max=600),
        hosts=(
            HostSettings(
                name=HOST,
                address="localhost",
                agent_type="noop",
                adapter="noop",
                roles=("developer",),
                max_concurrency=1,
                workdir=str(root / "host"),
                health_interval=3600,
                min_free_disk_mb=1,
            ),
        ),
        adapters={"noop": AdapterSettings(command=("true",), parser="raw")},
    )


def wait_for(what: str, check: object, *, timeout: float = 30.0, pause: float = 0.00025) -> float:
    """Poll ``check()`` until true; the perf_counter time it was first seen true."""
    assert callable(check)
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(pause)
    return time.perf_counter()


@dataclass
class WebhookResults:
    to_label: list[float]
    to_assigned: list[float]
    answers: list[int]


def measure_webhook(options: Options, *, root: Path) -> WebhookResults:
    with ForgejoSandbox() as forge:
        forge.create_repo(REPO)
        daemon = Daemon(daemon_settings(forge, root))
        daemon.start()
        try:
            store = daemon.assembly.store
            wait_for(
                "the ssh host to be online",
                lambda: (a := store.find_agent(HOST)) is not None and a.status.value == "online",
            )
            with ForgejoGateway(forge.url, forge.admin_token) as gateway:
                gateway.ensure_webhook(
                    REPO,
                    url=f"{daemon.url}{WEBHOOK_PATH}",
                    secret=WEBHOOK_SECRET,
                    events=WEBHOOK_EVENTS,
                )
            # The bench sends each issue's delivery itself, to start the clock as it sends.
            forge.webhooks_enabled = False
            results = WebhookResults([], [], [])
            for n in range(options.samples):
                to_label, to_assigned, answer = one_issue(forge, daemon, n)
                results.to_label.append(to_label)
                results.to_assigned.append(to_assigned)
                results.answers.append(answer)
        finally:
            daemon.stop()
    return results


def one_issue(forge: ForgejoSandbox, daemon: Daemon, n: int) -> tuple[float, float, int]:
    """File a labelled issue, send its webhook, time the assignment; wait for the run's end."""
    store = daemon.assembly.store
    executor = daemon.assembly.executor
    assert executor is not None
    repo = forge.state.repo(REPO, forge.state.user_named("fleet-admin"))
    number = forge.create_issue(
        REPO,
        f"Bench issue {n}",
        body="## Goal\nNothing: the bench measures the assignment.",
        labels=["fleet/task", "agent/developer"],
    )
    delivery = next(
        d
        for d in reversed(forge.deliveries)
        if d.event == "issues" and json.loads(d.payload)["issue"]["number"] == number
    )
    task_id = task_id_for(REPO, number)

    def labelled() -> bool:
        with forge.state.lock:
            names = [label.name for label in forge.state.issue(repo, number).labels]
        return "status/doing" in names

    def assigned() -> bool:
        task = store.find_task(task_id)
        return task is not None and task.agent_id == HOST

    def run_over() -> bool:
        task = store.find_task(task_id)
        busy = (TaskState.ASSIGNED, TaskState.RUNNING)
        return task is not None and task.state not in busy and not executor.is_running(task_id)

    request = urllib.request.Request(
        f"{daemon.url}{WEBHOOK_PATH}",
        data=delivery.payload,
        headers=dict(delivery.headers),
        method="POST",
    )
    sent = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = response.status
    label_at = wait_for(f"status/doing on #{number}", labelled)
    assigned_at = wait_for(f"task {task_id} assigned", assigned)
    wait_for(f"the host's run of {task_id} to end", run_over, timeout=60, pause=0.005)
    return label_at - sent, assigned_at - sent, answer


# --- reporting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    agents: int
    poll_seconds: float
    arrivals: float
    samples: int


def burst_result(run: Run, *, writes: int | None = None) -> str:
    wrote = f", {writes} state writes" if writes is not None else ""
    return (
        f"{percentile_ms(run.latencies, 50):.2f} / {percentile_ms(run.latencies, 99):.2f} ms "
        f"({len(run.handed)} assigned in {run.elapsed:.2f} s{wrote})"
    )


def report(dequeue: DequeueResults, webhook: WebhookResults, options: Options) -> list[Row]:
    burst, polling, wide = dequeue.burst, dequeue.polling, dequeue.wide
    burst_p99 = percentile_ms(burst.latencies, 99)
    poll_p99 = percentile_ms(polling.latencies, 99)
    doubles_total = dequeue.doubles_answers + dequeue.doubles_log
    label_p50 = percentile_ms(webhook.to_label, 50)
    assigned_p50 = percentile_ms(webhook.to_assigned, 50)
    a = dequeue.agents
    given = len(burst.handed) + len(polling.handed) + len(wide.handed)
    # The dequeue target is judged on the polling row (agents dequeue on their poll
    # interval); a burst where every one of 100 dequeues assigns at the same instant is
    # bounded by one durable write per batch and two cores, and is shown for information
    # against that same figure.
    burst_target, burst_verdict = (
        f"(info: {BURST_P99_TARGET_MS:g} ms not reached)"
        if burst_p99 > BURST_P99_TARGET_MS
        else "(info)",
        "",
    )
    return [
        (
            "pull agents registered / tasks seeded",
            f"{a} + {a} ({SLOTS} slots each) / {dequeue.tasks}",
            "(info)",
            "",
        ),
        (
            f"burst, {a} agents at once, nothing waiting: p50 / p99",
            burst_result(dequeue.idle),
            "(info: 204s, no write)",
            "",
        ),
        (
            f"burst, {a} agents at once: p50 / p99",
            burst_result(burst, writes=dequeue.burst_writes),
            burst_target,
            burst_verdict,
        ),
        (
            f"burst, {a} agents at once, {a} HTTP threads: p50 / p99",
            burst_result(wide, writes=dequeue.wide_writes),
            "(info)",
            "",
        ),
        (
            f"polling, {a} agents x 1/s: dequeues",
            (
                f"{len(polling.latencies)} ({len(polling.handed)} assigned, "
                f"{polling.statuses.count(204)} x 204; {options.arrivals:g} tasks/s arriving)"
            ),
            "(info)",
            "",
        ),
        (
            f"polling, {a} agents x 1/s: p50",
            f"{percentile_ms(polling.latencies, 50):.2f} ms",
            "(info)",
            "",
        ),
        (
            f"polling, {a} agents x 1/s: p99",
            f"{poll_p99:.2f} ms",
            f"<= {DEQUEUE_P99_TARGET_MS:g} ms",
            verdict(poll_p99 <= DEQUEUE_P99_TARGET_MS),
        ),
        (
            "polling: p50 / p99 of assigning dequeues",
            (
                f"{percentile_ms(polling.assigning, 50):.2f} / "
                f"{percentile_ms(polling.assigning, 99):.2f} ms"
            ),
            "(info)",
            "",
        ),
        (
            "double assignments (answers + event log)",
            f"{doubles_total} of {given} tasks handed out",
            "0",
            verdict(doubles_total == 0),
        ),
        (
            f"webhook -> status/doing in Forgejo: p50 ({len(webhook.to_label)} issues)",
            f"{label_p50:.1f} ms (p99 {percentile_ms(webhook.to_label, 99):.1f})",
            "(info)",
            "",
        ),
        (
            "webhook -> assigned, labels written: p50",
            f"{assigned_p50:.1f} ms (p99 {percentile_ms(webhook.to_assigned, 99):.1f})",
            f"<= {ASSIGNED_P50_TARGET_MS:g} ms",
            verdict(assigned_p50 <= ASSIGNED_P50_TARGET_MS),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=AGENTS, help="pull agents dequeuing")
    parser.add_argument(
        "--seconds", type=float, default=POLL_SECONDS, help="length of the polling run"
    )
    parser.add_argument(
        "--arrivals", type=float, default=ARRIVALS, help="new tasks/s during the polling run"
    )
    parser.add_argument("--samples", type=int, default=SAMPLES, help="issues for webhook timing")
    parser.add_argument("--quick", action="store_true", help="a few agents: check the bench runs")
    args = parser.parse_args()
    options = Options(
        agents=int(QUICK["agents"]) if args.quick else args.agents,
        poll_seconds=QUICK["poll_seconds"] if args.quick else args.seconds,
        arrivals=QUICK["arrivals"] if args.quick else args.arrivals,
        samples=int(QUICK["samples"]) if args.quick else args.samples,
    )
    if min(options.agents, options.samples) < 1 or min(options.poll_seconds, options.arrivals) <= 0:
        parser.error("--agents, --seconds, --arrivals and --samples must be positive")

    # The daemon logs as in production: rendered, then discarded.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    configure_logging(level="info", json=True, stream=devnull)
    load = os.getloadavg()[0]
    client = LoadClient(drive, name="dispatch-bench-client")  # before any server thread starts
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-dispatch-bench-"))
    started = time.perf_counter()
    try:
        dequeue = measure_dequeue(client, options, root=root / "dequeue")
        webhook = measure_webhook(options, root=root / "webhook")
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
        devnull.close()
    if set(webhook.answers) != {202}:
        raise SystemExit(f"the daemon answered the webhooks with {sorted(set(webhook.answers))}")
    print_table(report(dequeue, webhook, options))
    cores, end_load, took = os.cpu_count(), os.getloadavg()[0], time.perf_counter() - started
    notes = (
        (
            f"Dequeue: the daemon's app on waitress ({dequeue.threads} threads), loopback, "
            "logging at info into /dev/null. Assignments are group committed: the dequeues "
            "waiting while one batch is written are chosen for in turn and written as the next "
            "batch, one compare-and-swap write of the whole live state file plus one event "
            "append; a 204 reads the waiting and busy tasks and writes nothing. With 4 HTTP "
            "threads at most 4 dequeues are in the app at once, which bounds a batch; the "
            "rest of a burst is CPU (HTTP, JSON, validation) on cores the client shares."
        ),
        (
            f"Client: one forked process, http.client, one keep-alive connection and thread per "
            f"agent. Client and server share this machine's {cores} cores (load average "
            f"{load:.2f} at start, {end_load:.2f} at the end; other work moves these numbers)."
        ),
        (
            "Webhook: the real daemon (loop with 2 workers, controllers, HTTP) against the "
            "in-memory Forgejo on loopback, one localhost ssh host; the assignment controller "
            "reads the issue, writes status/doing and the assignment comment, then saves the "
            "assigned task and dispatches. Polling resolution 0.25 ms."
        ),
        f"The run took {took:.1f} s.",
    )
    print_notes(notes)


if __name__ == "__main__":
    main()
