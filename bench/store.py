"""Benchmark of the durable state store: append, live write and reopen costs against targets.

Run by hand: ``python bench/store.py``. Works in a temporary directory (on the default temp
disk, or ``--dir``) that it removes, and prints one table with each target and PASS/MISS.

* event append: ``Store.append_event`` beside a plain fsync'd JSON-lines append on the same
  disk (target: within 2x);
* live-state write: ``Store.put_task`` with 1,000 live tasks (target: p50 <= 25 ms);
* reopen with 10,000 archived tasks and 100,000 events (target: <= 2 s), and the first
  lookups after it, which build the lazy indexes;
* the curve as the live set grows, at 100, 1k, 3k and 10k live tasks (a mix: 70% completed and
  not yet archived, 20% running on agents, 9% waiting for a capability no agent has, 1% waiting
  for the pull agents): ``Store.put_task`` p50 (target: <= 3 ms at every size, and the 10k/100
  ratio of this run <= 1.5); in-process ``PullQueue.dequeue`` p99 with 100 pull agents each
  polling once a second while new tasks arrive at 10 a second (target: <= 20 ms);
* the assignment controller's ``observe()`` of one issue at 1,000 agents and 10,000 live tasks,
  with a stand-in gateway that answers the issue at once, so the figure is the store's part
  (target: <= 5 ms); and ``plan()`` on what it observed, for information.

``--quick`` runs small sizes in a few seconds (the smoke test in the suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Importing the harness takes bench/ off sys.path, where the bench/ scripts' names would shadow
# the packages they measure: it comes before the project's imports (see bench/harness.py).
from harness import Row, machine_speed_ms, print_table, speed_note, verdict
from pydantic import SecretStr

from controllers.assignment import AssignmentController, plan
from reconciler.engine.logs import configure_logging
from reconciler.engine.reconcile import ActContext, Actuator
from reconciler.fleet.agents import Fleet
from reconciler.fleet.queue import PullQueue
from reconciler.fleet.records import Profile
from reconciler.forgejo.issue_types import Issue, IssueState
from reconciler.keys import issue_key
from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    RepoName,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    task_id_for,
)
from reconciler.settings import ApiSettings, ForgejoSettings, Settings
from reconciler.store import Store
from reconciler.store.logfile import encode_line
from reconciler.store.store import ARCHIVE_FILE, EVENTS_FILE, STATE_FILE

NOW = datetime(2025, 1, 1, tzinfo=UTC)
APPENDS = 1500
LIVE_TASKS = 1000
LIVE_WRITES = 300
ARCHIVED_TASKS = 10_000
EVENTS = 100_000
CURVE_SIZES = (100, 1_000, 3_000, 10_000)
CURVE_PUTS = 300
POLLING_AGENTS = 100
POLL_SECONDS = 6.0
ARRIVALS_PER_SECOND = 10
OBSERVE_AGENTS = 1_000
OBSERVE_TASKS = 10_000
OBSERVE_CALLS = 200
ENROLMENT = "bench-enrolment-secret"


def make_task(number: int, *, state: TaskState = TaskState.RUNNING) -> Task:
    repo = RepoName(f"org/repo{number % 7}")
    return Task(
        id=task_id_for(repo, number),
        repo=repo,
        issue_number=number,
        title=f"Make the widget number {number} configurable and document it in the guide",
        state=state,
        required_role="developer",
        required_capabilities=("code:python", "test"),
        agent_id=AgentId("claude-1"),
        lease_generation=2,
        attempt=2,
        branch=f"task/{task_id_for(repo, number)}-make-the-widget-configurable",
        session_id="0b8f6c52-6f9e-4a51-9bd2-5a7e0f3c9a11",
        created_at=NOW,
        updated_at=NOW + timedelta(seconds=number),
        last_activity_at=NOW,
        wait_reason="",
    )


def make_event(task_id: str, n: int) -> TaskEvent:
    return TaskEvent(
        task_id=TaskId(task_id),
        at=NOW + timedelta(seconds=n),
        actor="reconciler",
        from_state=TaskState.ASSIGNED,
        to_state=TaskState.RUNNING,
        reason="agent claude-1 started the run",
        data={"lease_generation": 2},
    )


def percentile(samples: list[float], q: int) -> float:
    return (
        statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if q < 100 else max(samples)
    )


def timed(action: Callable[[], object], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def bench_event_append(root: Path) -> tuple[list[float], list[float]]:
    event = make_event(task_id_for("org/repo", 1), 1)
    with Store.open(root / "append") as store:
        store_samples = timed(lambda: store.append_event(event), APPENDS)
    line = json.dumps(event.model_dump(mode="json")).encode() + b"\n"
    with open(root / "plain.jsonl", "ab") as plain:

        def plain_append() -> None:
            plain.write(line)
            plain.flush()
            os.fsync(plain.fileno())

        plain_samples = timed(plain_append, APPENDS)
    return store_samples, plain_samples


def write_live_state(directory: Path, tasks: list[Task]) -> None:
    """A state file as the store writes it, built at once (puts one by one would take long)."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"tasks": {t.id: t.model_dump(mode="json") for t in tasks}}
    (directory / STATE_FILE).write_text(json.dumps(tables, separators=(",", ":")))


def bench_live_writes(root: Path) -> list[float]:
    tasks = [make_task(n) for n in range(LIVE_TASKS)]
    write_live_state(root / "live", tasks)
    with Store.open(root / "live") as store:
        changed = iter(t.model_copy(update={"review_count": 1}) for t in tasks)
        return timed(lambda: store.put_task(next(changed)), LIVE_WRITES)


def bench_reopen(root: Path) -> tuple[float, float, float]:
    directory = root / "reopen"
    write_live_state(directory, [make_task(n) for n in range(LIVE_TASKS)])
    archived = [
        make_task(n, state=TaskState.COMPLETED)
        for n in range(LIVE_TASKS, LIVE_TASKS + ARCHIVED_TASKS)
    ]
    with open(directory / ARCHIVE_FILE, "wb") as archive:
        archive.writelines(
            encode_line(task.model_dump(mode="json"), key_fields=("id",)) for task in archived
        )
    with open(directory / EVENTS_FILE, "wb") as events:
        for n in range(EVENTS):
            record = make_event(archived[n % ARCHIVED_TASKS].id, n).model_dump(mode="json")
            events.write(encode_line(record, key_fields=("task_id",)))
    os.sync()

    start = time.perf_counter()
    store = Store.open(directory)
    opened = time.perf_counter() - start
    try:
        start = time.perf_counter()
        history = store.events_for(archived[42].id)
        first_events = time.perf_counter() - start
        assert len(history) == EVENTS // ARCHIVED_TASKS, len(history)
        start = time.perf_counter()
        assert store.get_task(archived[len(archived) // 2].id).state is TaskState.COMPLETED
        first_archived = time.perf_counter() - start
    finally:
        store.close()
    return opened, first_events, first_archived


def curve_task(number: int, *, now: datetime) -> Task:
    """Task ``number`` of the live mix: 70% completed, 20% running, 9% waiting for what no
    agent has, 1% waiting for the pull agents."""
    kind = number % 100
    repo = RepoName(f"org/repo{number % 7}")
    tid = task_id_for(repo, number)
    fields: dict[str, object] = {}
    if kind < 70:
        fields = {"state": TaskState.COMPLETED, "agent_id": AgentId(f"old-{number % 50}")}
    elif kind < 90:
        fields = {
            "state": TaskState.RUNNING,
            "agent_id": AgentId(f"busy-{number % 200}"),
            "lease_generation": 1,
            "deadline_at": now + timedelta(hours=2),
        }
    elif kind < 99:
        fields = {"state": TaskState.CREATED, "required_capabilities": ("code:rust",)}
    else:
        fields = {"state": TaskState.CREATED, "required_capabilities": ("code:python",)}
    return Task(
        id=tid,
        repo=repo,
        issue_number=number,
        title=f"Make the widget number {number} configurable",
        required_role="developer",
        branch=f"task/{tid}-make-the-widget-configurable",
        created_at=now - timedelta(minutes=5),
        updated_at=now - timedelta(minutes=5),
        **fields,  # type: ignore[arg-type]
    )


def bench_settings() -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="https://forgejo.example.org",
            token=SecretStr("t"),
            repos=tuple(f"org/repo{n}" for n in range(7)),
            bot_login="fleet",
        ),
        api=ApiSettings(
            operator_token=SecretStr("bench-operator-token"),
            enrolment_secret=SecretStr(ENROLMENT),
            heartbeat_interval=60,
            missed_heartbeats=3,
        ),
    )


def bench_curve_point(
    root: Path, size: int, *, agents: int, seconds: float
) -> tuple[float, float, int]:
    """At ``size`` live tasks: put_task p50 (ms), dequeue p99 (ms), how many dequeues."""
    now = datetime.now(UTC)
    directory = root / f"curve-{size}"
    write_live_state(directory, [curve_task(n, now=now) for n in range(size)])
    # The file was just written without fsync: flush it now, or the first fdatasyncs measured
    # would wait for its megabytes (ext4 commits them together), which a running daemon's
    # journal appends never do.
    os.sync()
    settings = bench_settings()
    with Store.open(directory) as store:
        running = store.list_tasks(state=TaskState.RUNNING)
        changed = iter(
            t.model_copy(update={"review_count": t.review_count + 1 + k // len(running)})
            for k, t in enumerate(running * (CURVE_PUTS // len(running) + 1))
        )
        put_ms = timed(lambda: store.put_task(next(changed)), CURVE_PUTS)

        clock = lambda: datetime.now(UTC)
        fleet = Fleet(store, settings=lambda: settings, clock=clock, enqueue=lambda key: None)
        pull = PullQueue(
            store, fleet=fleet, settings=lambda: settings, clock=clock, enqueue=lambda key: None
        )
        names = [f"puller-{n:03d}" for n in range(agents)]
        for name in names:
            fleet.register(
                Profile(
                    type="claude-code",
                    hostname="bench",
                    roles=("developer",),
                    capabilities=("code:python",),
                    max_concurrency=4,
                ),
                agent_id=name,
                credential=ENROLMENT,
            )
        samples: list[float] = []
        errors: list[BaseException] = []
        stop = threading.Event()
        start = time.monotonic() + 0.2

        def poll(index: int) -> None:
            # Staggered: each agent polls once a second, at its own offset.
            due = start + index / agents
            try:
                while not stop.is_set():
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    began = time.perf_counter()
                    pull.dequeue(names[index])
                    samples.append((time.perf_counter() - began) * 1000)
                    due += 1.0
            except BaseException as exc:  # noqa: BLE001  # re-raised in the main thread
                errors.append(exc)

        def arrive() -> None:
            number = 1_000_000 + size * 10
            while not stop.wait(1 / ARRIVALS_PER_SECOND):
                store.put_task(arriving_task(number, now=datetime.now(UTC)))
                number += 1

        threads = [threading.Thread(target=poll, args=(i,)) for i in range(agents)]
        threads.append(threading.Thread(target=arrive))
        for thread in threads:
            thread.start()
        time.sleep(seconds + 0.2)
        stop.set()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    return percentile(put_ms, 50), percentile(samples, 99), len(samples)


def arriving_task(number: int, *, now: datetime) -> Task:
    """A new task for the pull agents, as the assignment controller creates one."""
    repo = RepoName(f"org/repo{number % 7}")
    tid = task_id_for(repo, number)
    return Task(
        id=tid,
        repo=repo,
        issue_number=number,
        title=f"Make the widget number {number} configurable",
        required_role="developer",
        required_capabilities=("code:python",),
        branch=f"task/{tid}-make-the-widget-configurable",
        created_at=now,
        updated_at=now,
    )


class IssueOnly:
    """A stand-in gateway for observe(): it answers the one issue, instantly."""

    def __init__(self, issue: Issue) -> None:
        self._issue = issue

    def get_issue(self, repo: str, number: int, *, kept: bool = False) -> Issue:
        return self._issue


def bench_observe(root: Path, *, agents: int, tasks: int) -> tuple[float, float]:
    """observe() p50 (ms) of a running task's issue, and plan() p50 (ms) on what it saw."""
    now = datetime.now(UTC)
    directory = root / "observe"
    live = [curve_task(n, now=now) for n in range(tasks)]
    write_live_state(directory, live)
    tables = json.loads((directory / STATE_FILE).read_text())
    tables["agents"] = {
        f"agent-{n:04d}": Agent(
            id=AgentId(f"agent-{n:04d}"),
            type="claude-code",
            roles=("developer",),
            capabilities=("code:python",),
            max_concurrency=2,
            status=AgentStatus.ONLINE,
            registered_at=now,
            last_heartbeat_at=now,
        ).model_dump(mode="json")
        for n in range(agents)
    }
    (directory / STATE_FILE).write_text(json.dumps(tables, separators=(",", ":")))
    running = next(t for t in live if t.state is TaskState.RUNNING)
    issue = Issue(
        id=1,
        number=running.issue_number,
        title=running.title,
        body="",
        state=IssueState.OPEN,
        labels=("fleet/task", "agent/developer", "status/doing"),
        author="alice",
        assignees=(),
        created_at=now,
        updated_at=now,
        closed_at=None,
        is_pull=False,
        html_url="",
    )
    settings = bench_settings()
    with Store.open(directory) as store:
        gateway = IssueOnly(issue)
        controller = AssignmentController(
            gateway,  # type: ignore[arg-type]  # observe() of a running task reads the issue only
            store,
            Actuator(ActContext(gateway=gateway, store=store)),  # type: ignore[arg-type]
            settings=lambda: settings,
            clock=lambda: now,
        )
        key = issue_key(running.repo, running.issue_number)
        observed = controller.observe(key)
        observe_ms = timed(lambda: controller.observe(key), OBSERVE_CALLS)
        plan_ms = timed(lambda: plan(observed, now=now, settings=settings), OBSERVE_CALLS)
    return percentile(observe_ms, 50), percentile(plan_ms, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, a few seconds (the smoke test)"
    )
    args = parser.parse_args()
    global APPENDS, LIVE_WRITES, ARCHIVED_TASKS, EVENTS, CURVE_PUTS
    sizes = CURVE_SIZES
    agents, seconds = POLLING_AGENTS, POLL_SECONDS
    observe_agents, observe_tasks = OBSERVE_AGENTS, OBSERVE_TASKS
    if args.quick:
        APPENDS, LIVE_WRITES, ARCHIVED_TASKS, EVENTS, CURVE_PUTS = 50, 30, 200, 2_000, 30
        sizes, agents, seconds = (100, 300), 10, 1.0
        observe_agents, observe_tasks = 20, 300
    speed_before = machine_speed_ms()
    # The daemon's logs (agents registered, compactions) would interleave with the table.
    devnull = open(os.devnull, "w")  # noqa: SIM115  # for the whole run
    configure_logging(level="warning", json=True, stream=devnull)
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-store-bench-", dir=args.dir))
    try:
        store_ms, plain_ms = bench_event_append(root)
        live_ms = bench_live_writes(root)
        opened, first_events, first_archived = bench_reopen(root)
        curve = {
            size: bench_curve_point(root, size, agents=agents, seconds=seconds) for size in sizes
        }
        observe_p50, plan_p50 = bench_observe(root, agents=observe_agents, tasks=observe_tasks)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows: list[Row] = []
    plain_p50, plain_p99 = percentile(plain_ms, 50), percentile(plain_ms, 99)
    store_p50, store_p99 = percentile(store_ms, 50), percentile(store_ms, 99)
    rows.append(("plain fsync'd JSON-lines append p50", f"{plain_p50:.3f} ms", "baseline", ""))
    rows.append(("plain fsync'd JSON-lines append p99", f"{plain_p99:.3f} ms", "baseline", ""))
    rows.append(
        (
            "Store.append_event p50",
            f"{store_p50:.3f} ms ({store_p50 / plain_p50:.2f}x)",
            "<= 2x plain p50",
            verdict(store_p50 <= 2 * plain_p50),
        )
    )
    rows.append(
        (
            "Store.append_event p99",
            f"{store_p99:.3f} ms ({store_p99 / plain_p99:.2f}x)",
            "<= 2x plain p99",
            verdict(store_p99 <= 2 * plain_p99),
        )
    )
    live_p50, live_p99 = percentile(live_ms, 50), percentile(live_ms, 99)
    rows.append(
        (
            f"Store.put_task p50, {LIVE_TASKS} live",
            f"{live_p50:.1f} ms",
            "<= 25 ms",
            verdict(live_p50 <= 25),
        )
    )
    rows.append((f"Store.put_task p99, {LIVE_TASKS} live", f"{live_p99:.1f} ms", "(reported)", ""))
    reopen_label = f"Store.open, {ARCHIVED_TASKS // 1000}k archived + {EVENTS // 1000}k events"
    rows.append((reopen_label, f"{opened * 1000:.0f} ms", "<= 2000 ms", verdict(opened <= 2)))
    rows.append(("first events_for (builds event index)", f"{first_events * 1000:.0f} ms", "", ""))
    rows.append(
        ("first archived get_task (builds index)", f"{first_archived * 1000:.0f} ms", "", "")
    )
    total = opened + first_events + first_archived
    rows.append(
        ("open + both first lookups", f"{total * 1000:.0f} ms", "<= 2000 ms", verdict(total <= 2))
    )

    for size, (put_p50, dequeue_p99, dequeues) in curve.items():
        rows.append(
            (
                f"put_task p50, {size:,} live",
                f"{put_p50:.2f} ms",
                "<= 3 ms",
                verdict(put_p50 <= 3),
            )
        )
        rows.append(
            (
                f"dequeue p99, {size:,} live, {agents} polling agents",
                f"{dequeue_p99:.2f} ms ({dequeues} dequeues)",
                "<= 20 ms",
                verdict(dequeue_p99 <= 20),
            )
        )
    smallest, largest = min(curve), max(curve)
    ratio = curve[largest][0] / curve[smallest][0]
    rows.append(
        (
            f"put_task p50 ratio, {largest:,}/{smallest:,} live",
            f"{ratio:.2f}",
            "<= 1.5",
            verdict(ratio <= 1.5),
        )
    )
    rows.append(
        (
            f"observe() p50, {observe_agents:,} agents + {observe_tasks:,} live",
            f"{observe_p50:.2f} ms",
            "<= 5 ms",
            verdict(observe_p50 <= 5),
        )
    )
    rows.append(("plan() p50 on that observation", f"{plan_p50:.2f} ms", "(reported)", ""))

    speed_after = machine_speed_ms()
    print_table(rows)
    print(
        f"\n{APPENDS} appends each; {LIVE_WRITES} live writes; {CURVE_PUTS} puts per size; "
        f"{agents} agents polling for {seconds:.0f} s per size; temp dir under "
        f"{args.dir or tempfile.gettempdir()}"
    )
    print(textwrap.fill(speed_note(speed_before, speed_after), width=96))


if __name__ == "__main__":
    main()
