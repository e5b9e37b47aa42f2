"""The state store under kills, threads and a second process: nothing acknowledged is lost.

The kill test forks a writer that reports each write on a pipe only after the write returned,
kills it with SIGKILL at random moments, and checks every reported write after reopening. It
forks rather than starting ``python -c`` so that forty rounds do not pay forty interpreter
starts; the child is a separate process all the same, killed the same way.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import StoreLockedError
from reconciler.models import (
    Agent,
    AgentId,
    AgentStats,
    Receipt,
    ReceiptId,
    RepoName,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    task_id_for,
)
from reconciler.store import Store, storage
from reconciler.store.storage import COMPACT_AFTER_BYTES

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REPO = RepoName("org/repo")
COUNTER = task_id_for(REPO, 999_999)


def make_task(number: int, *, state: TaskState = TaskState.RUNNING) -> Task:
    return Task(
        id=task_id_for(REPO, number),
        repo=REPO,
        issue_number=number,
        title=f"issue {number}",
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )


def make_agent(agent_id: str, *, done: int = 0) -> Agent:
    return Agent(
        id=AgentId(agent_id),
        type="codex-cli",
        registered_at=NOW,
        stats=AgentStats(tasks_completed=done),
    )


# --- the kill test ------------------------------------------------------------------------


def run_writer(
    directory: Path,
    *,
    first: int,
    report: Callable[[str], None],
    compact_after_bytes: int = COMPACT_AFTER_BYTES,
) -> None:
    """Write forever: tasks, archive moves, agents, events, receipts, outbox, backoff, meta.

    ``report`` is called only after the write it names returned. A small
    ``compact_after_bytes`` makes the background compaction run every few writes.
    """
    with Store.open(directory, compact_after_bytes=compact_after_bytes) as store:
        report("ready")
        number = first
        while True:
            task = make_task(number)
            store.put_task(task)
            report(f"task {task.id} {number}")
            store.append_event(
                TaskEvent(task_id=task.id, at=NOW, actor="reconciler", data={"n": number})
            )
            report(f"event {task.id} {number}")
            store.put_task(task.model_copy(update={"state": TaskState.COMPLETED}))
            report(f"completed {task.id}")
            if number % 3 == 0:
                store.archive_terminal(NOW + timedelta(days=1))
                report("archived")
            counted = store.update_task(
                COUNTER, lambda t: t.model_copy(update={"attempt": t.attempt + 1})
            )
            report(f"counter {counted.attempt}")
            store.put_agent(make_agent(f"agent-{number % 3}", done=number))
            report(f"agent agent-{number % 3} {number}")
            store.put_receipt(
                Receipt(
                    id=ReceiptId(f"r-{number}"),
                    task_id=task.id,
                    agent_id=AgentId("agent-0"),
                    lease_generation=1,
                    submitted_at=NOW,
                )
            )
            report(f"receipt r-{number} {task.id}")
            message = store.enqueue("matrix", {"n": number}, now=NOW, message_id=f"m-{number}")
            report(f"enqueued {message.id}")
            if number % 2 == 0:
                report(f"acking {message.id}")
                store.ack(message.id)
                report(f"acked {message.id}")
            store.set_backoff(("assignment", REPO, str(number)), attempts=number, not_before=NOW)
            report(f"backoff {number}")
            store.set_meta("last", number)
            report(f"meta {number}")
            number += 1


def fork_writer(
    directory: Path,
    *,
    first: int,
    compact_after_bytes: int = COMPACT_AFTER_BYTES,
    in_child: Callable[[Callable[[str], None]], None] = lambda report: None,
) -> tuple[int, int]:
    """Start the writer in a forked child; return (pid, read end of its report pipe).
    ``in_child`` runs in the child first, given the report function (to patch the child)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write until killed; never return into pytest
        status = 1

        def report(line: str) -> None:
            os.write(write_end, line.encode() + b"\n")

        try:
            os.close(read_end)
            in_child(report)
            run_writer(
                directory, first=first, report=report, compact_after_bytes=compact_after_bytes
            )
        except BaseException:
            traceback.print_exc()  # the test reports that the writer stopped by itself
            raise
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end


def kill_after(pid: int, read_end: int, *, delay: float, reports: int = 0) -> list[str]:
    """Drain reports until ``delay`` after the child is ready and has made ``reports`` more
    reports, SIGKILL it, return every report.

    The kill point is counted in the child's own progress, not in time, so a slow machine
    only makes the test take longer; each report may take up to a minute to come.
    """
    received = b""
    deadline: float | None = None
    while True:
        timeout = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([read_end], [], [], timeout)
        if not readable:
            break
        chunk = os.read(read_end, 65536)
        if not chunk:
            break  # the child exited by itself: its traceback is on stderr
        received += chunk
        if deadline is None and b"ready\n" in received:
            made = received.split(b"ready\n", 1)[1].count(b"\n")
            if made >= reports:
                deadline = time.monotonic() + delay
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the writer stopped by itself (see its traceback)"
    while chunk := os.read(read_end, 65536):  # reports written before the kill
        received += chunk
    os.close(read_end)
    assert deadline is not None, "the writer never opened the store"
    return received.decode().splitlines()


class Acknowledged:
    """Everything the writers reported, and the checks that it is all in the store."""

    def __init__(self) -> None:
        self.tasks: set[str] = set()
        self.completed: set[str] = set()
        self.events: dict[str, int] = {}
        self.counter = 0
        self.agents: dict[str, int] = {}
        self.receipts: dict[str, str] = {}
        self.enqueued: set[str] = set()
        self.acking: set[str] = set()
        self.acked: set[str] = set()
        self.backoff: int | None = None
        self.meta: int | None = None
        self.highest = -1

    def take(self, reports: list[str]) -> None:
        for report in reports:
            kind, *rest = report.split()
            if kind == "task":
                self.tasks.add(rest[0])
                self.highest = max(self.highest, int(rest[1]))
            elif kind == "completed":
                self.completed.add(rest[0])
            elif kind == "event":
                self.events[rest[0]] = int(rest[1])
            elif kind == "counter":
                self.counter = int(rest[0])
            elif kind == "agent":
                self.agents[rest[0]] = int(rest[1])
            elif kind == "receipt":
                self.receipts[rest[0]] = rest[1]
            elif kind == "enqueued":
                self.enqueued.add(rest[0])
            elif kind == "acking":
                self.acking.add(rest[0])
            elif kind == "acked":
                self.acked.add(rest[0])
            elif kind == "backoff":
                self.backoff = int(rest[0])
            elif kind == "meta":
                self.meta = int(rest[0])

    def check(self, store: Store) -> None:
        for task_id in self.tasks:
            state = store.get_task(task_id).state
            assert task_id not in self.completed or state is TaskState.COMPLETED, task_id
        for task_id, n in self.events.items():
            assert n in [e.data["n"] for e in store.events_for(task_id)], (task_id, n)
        # The kill may land after the write and before its report: at least, at most one more.
        assert store.get_task(COUNTER).attempt in (self.counter, self.counter + 1)
        for agent_id, done in self.agents.items():
            assert store.get_agent(agent_id).stats.tasks_completed >= done, agent_id
        for receipt_id, task_id in self.receipts.items():
            assert store.get_receipt(receipt_id).task_id == task_id
        pending = {m.id for m in store.pending()}
        assert self.enqueued - self.acking <= pending, "an enqueued message was lost"
        assert not (self.acked & pending), "an acked message came back"
        if self.backoff is not None:
            backoff = store.get_backoff(("assignment", REPO, str(self.backoff)))
            assert backoff is not None and backoff.attempts == self.backoff
        if self.meta is not None:
            last = store.get_meta("last")
            assert isinstance(last, int) and last >= self.meta


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkilled_writer_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Forty kills at random moments: the store always reopens with every acknowledged write."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(999_999))
    acknowledged = Acknowledged()
    for round_number in range(40):
        pid, read_end = fork_writer(directory, first=acknowledged.highest + 2)
        # Killed after 1-30 reports (the first is a task's) and a random moment more: at any
        # point of a write, however fast or slow the machine is.
        reports = kill_after(
            pid,
            read_end,
            delay=rng.choice([0.0, 0.002, 0.01, 0.03, 0.06]),
            reports=rng.randint(1, 30),
        )
        acknowledged.take(reports)
        try:
            with Store.open(directory) as store:
                acknowledged.check(store)
        except AssertionError as failure:
            raise AssertionError(f"round {round_number}, seed {seed}: {failure}") from failure
    assert len(acknowledged.tasks) >= 40  # at least one task per round, by construction


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkilled_writer_compacting_every_few_writes_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    """With the journal compacted every few writes, kills land in every step of compaction
    (rotation, the snapshot's temp file, its rename, the old journal's removal) and the store
    still reopens with every acknowledged write."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(999_999))
    acknowledged = Acknowledged()
    mid_compaction = 0
    for round_number in range(25):
        pid, read_end = fork_writer(
            directory, first=acknowledged.highest + 2, compact_after_bytes=1500
        )
        reports = kill_after(
            pid,
            read_end,
            delay=rng.choice([0.0, 0.002, 0.01, 0.03]),
            reports=rng.randint(1, 60),
        )
        acknowledged.take(reports)
        # A kill between a compaction's rotation and its end leaves the rotated journal.
        mid_compaction += (directory / "state.journal.compacting").exists()
        try:
            with Store.open(directory) as store:
                acknowledged.check(store)
        except AssertionError as failure:
            raise AssertionError(f"round {round_number}, seed {seed}: {failure}") from failure
    assert len(acknowledged.tasks) >= 25
    print(f"{mid_compaction} of 25 kills landed mid-compaction")  # shown with -s


def block_compaction(stage: str) -> Callable[[Callable[[str], None]], None]:
    """A child patch: the first compaction's snapshot write stops at ``stage`` ("temp": half
    the temp file written; "renamed": the snapshot replaced, the old journal not yet removed),
    reports "compacting" and waits there forever, while the writer goes on."""

    def patch(report: Callable[[str], None]) -> None:
        write = storage.write_file_atomically

        def stuck(path: Path, data: bytes, *, directory_fd: int) -> None:
            if threading.current_thread().name != "store-compactor":
                write(path, data, directory_fd=directory_fd)
                return
            if stage == "temp":
                tmp = path.with_name(path.name + storage.TMP_SUFFIX)
                tmp.write_bytes(data[: len(data) // 2])
            else:
                write(path, data, directory_fd=directory_fd)
            report("compacting")
            threading.Event().wait()

        storage.write_file_atomically = stuck  # type: ignore[assignment]  # the child only

    return patch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("stage", ["temp", "renamed"])
def test_kill_during_compaction_loses_no_acknowledged_write(tmp_path: Path, stage: str) -> None:
    """A writer killed while its compaction is stuck mid-way (before or after the snapshot's
    rename), with writes acknowledged meanwhile into the new journal, reopens with all of
    them; the reopened store compacts and leaves one snapshot."""
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(999_999))
    pid, read_end = fork_writer(
        directory, first=1, compact_after_bytes=3000, in_child=block_compaction(stage)
    )
    received = b""
    after_compacting = -1
    while after_compacting < 40:
        readable, _, _ = select.select([read_end], [], [], 60.0)
        assert readable, "the writer stopped reporting"
        chunk = os.read(read_end, 65536)
        assert chunk, "the writer stopped by itself (see its traceback)"
        received += chunk
        if b"compacting\n" in received:
            after_compacting = received.split(b"compacting\n", 1)[1].count(b"\n")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(read_end, 65536):
        received += chunk
    os.close(read_end)
    reports = [line for line in received.decode().splitlines() if line != "compacting"]
    assert (directory / "state.journal.compacting").exists()
    acknowledged = Acknowledged()
    acknowledged.take(reports)
    with Store.open(directory) as store:
        acknowledged.check(store)
        assert not (directory / "state.journal.compacting").exists()
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith("state.")) == [
        "state.journal",
        "state.json",
    ]
    assert (directory / "state.journal").stat().st_size == 0


# --- threads ------------------------------------------------------------------------------


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``count`` threads released together; re-raise any failure."""
    start = threading.Barrier(count)

    def body(index: int) -> None:
        start.wait(timeout=10)
        work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(body, i) for i in range(count)]:
            future.result(timeout=60)


def test_concurrent_read_modify_write_loses_no_increment(tmp_path: Path) -> None:
    """Four threads incrementing one task and one agent through update_* lose nothing."""
    with Store.open(tmp_path / "state") as store:
        store.put_task(make_task(1))
        store.put_agent(make_agent("a1"))
        task_id = task_id_for(REPO, 1)

        def increment(_: int) -> None:
            for _ in range(25):
                store.update_task(
                    task_id, lambda t: t.model_copy(update={"review_count": t.review_count + 1})
                )
                store.update_agent(
                    "a1",
                    lambda a: a.model_copy(update={"stats": AgentStats(errors=a.stats.errors + 1)}),
                )

        run_threads(4, increment)
        assert store.get_task(task_id).review_count == 100
        assert store.get_agent("a1").stats.errors == 100
    with Store.open(tmp_path / "state") as store:
        assert store.get_task(task_id).review_count == 100


def test_threads_writing_while_compaction_runs_lose_nothing(tmp_path: Path) -> None:
    """Four threads incrementing through update_task while the journal is compacted every few
    writes: every increment is there, in memory and after reopening."""
    directory = tmp_path / "state"
    with Store.open(directory, compact_after_bytes=800) as store:
        store.put_task(make_task(1))
        task_id = task_id_for(REPO, 1)

        def increment(index: int) -> None:
            for n in range(40):
                store.update_task(
                    task_id, lambda t: t.model_copy(update={"review_count": t.review_count + 1})
                )
                store.put_task(make_task(1000 * (index + 1) + n))

        run_threads(4, increment)
        assert store.get_task(task_id).review_count == 160
        assert store.compactions >= 1
    with Store.open(directory) as store:
        assert store.get_task(task_id).review_count == 160
        assert len(store.list_tasks()) == 1 + 160


def test_concurrent_puts_of_distinct_tasks_all_land(tmp_path: Path) -> None:
    """Four threads putting their own tasks, events and messages: every one is there after."""
    with Store.open(tmp_path / "state") as store:

        def put(index: int) -> None:
            for n in range(15):
                number = index * 100 + n
                store.put_task(make_task(number))
                store.append_event(
                    TaskEvent(task_id=TaskId(task_id_for(REPO, number)), at=NOW, actor="x")
                )
                store.enqueue("matrix", {"n": number}, now=NOW)

        run_threads(4, put)
        assert len(store.list_tasks()) == 60
        assert len(store.pending()) == 60
    with Store.open(tmp_path / "state") as store:
        assert len(store.list_tasks()) == 60
        assert all(len(store.events_for(t.id)) == 1 for t in store.list_tasks())


# --- a second process ---------------------------------------------------------------------


def test_second_process_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    """Another process opening a held store gets StoreLockedError naming this pid and the path."""
    directory = tmp_path / "state"
    attempt = (
        "import sys\n"
        "from reconciler.errors import StoreLockedError\n"
        "from reconciler.store import Store\n"
        "try:\n"
        "    Store.open(sys.argv[1]).close()\n"
        "except StoreLockedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with Store.open(directory) as store:
        refused = subprocess.run(
            [sys.executable, "-c", attempt, str(directory)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert refused.returncode == 3, refused.stderr
        assert refused.stdout.strip() == (
            f"another agent-fleet process (pid {os.getpid()}) is using the state store at "
            f"{store.path}"
        )
    allowed = subprocess.run(
        [sys.executable, "-c", attempt, str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_locked_error_is_a_store_error(tmp_path: Path) -> None:
    """Callers that handle StoreError also handle the locked case."""
    with Store.open(tmp_path / "state"), pytest.raises(StoreLockedError):
        Store.open(tmp_path / "state")
