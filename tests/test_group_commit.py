"""Group commit: dequeues arriving together share one durable write and never share a task; a
batch that cannot be written fails whole with nothing stored; ``Store.commit`` writes many
tasks at once, all or nothing, and survives SIGKILL; the leader/follower protocol itself."""

from __future__ import annotations

import os
import random
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import StaleStateError, StoreError
from reconciler.fleet.agents import _LOCK_STRIPES
from reconciler.fleet.queue import DequeueAsk, Handout, PullQueue, plan_assignments
from reconciler.models import (
    Agent,
    AgentId,
    Priority,
    RepoName,
    Task,
    TaskEvent,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.store import Store
from reconciler.store.group_commit import GroupCommit
from reconciler.store.journal import Journal
from reconciler.store.logfile import JsonLinesLog
from reconciler.store.store import EVENTS_FILE, TaskWrite
from tests.test_fleet import REPO, Harness
from tests.test_store_durability import kill_after

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WAIT = 10.0  # seconds any event or join in these tests may take before the test fails


# --- fixtures ------------------------------------------------------------------------------


class Queue:
    """A PullQueue over the registry's harness (a real store on disk, a manual clock)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.store = harness.store
        self.pull = PullQueue(
            harness.store,
            fleet=harness.fleet,
            settings=harness.settings,
            clock=harness.clock,
            enqueue=harness.enqueued.append,
        )

    def waiting(self, number: int, **fields: Any) -> Task:
        """A task of issue ``number`` waiting in the queue."""
        tid = task_id_for(REPO, number)
        task = Task(
            id=tid,
            repo=RepoName(REPO),
            issue_number=number,
            title=f"Issue {number}",
            branch=branch_for(tid, f"Issue {number}"),
            created_at=self.harness.clock(),
            updated_at=self.harness.clock(),
            **fields,
        )
        self.store.put_task(task)
        return task

    def agents(self, count: int, **profile: Any) -> list[str]:
        """``count`` registered agents, each under its own agent-lock stripe.

        The agent lock is striped; two agents sharing a stripe queue for the lock, not for the
        batch, and a test waiting for a batch to form would wait for ever.
        """
        chosen: dict[int, str] = {}
        for n in range(10_000):
            name = f"a{n:04d}"
            chosen.setdefault(hash(name) % _LOCK_STRIPES, name)
            if len(chosen) == count:
                break
        names = sorted(chosen.values())
        for name in names:
            self.harness.register(name, **profile)
        return names


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    harness = Harness(tmp_path)
    yield Queue(harness)
    harness.close()


class StateWrites:
    """Counts the durable writes of the live state (journal records) and the appends to the
    event log; fails the writes whose number (1-based, since the last ``reset``) is in
    ``failing``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.appends = 0
        self.failing: set[int] = set()
        write = Journal.append
        append = JsonLinesLog.append

        def counted_write(journal: Journal, changes: Any) -> None:
            self.count += 1
            if self.count in self.failing:
                raise StoreError("cannot write the state journal: No space left on device")
            write(journal, changes)

        def counted_append(log: JsonLinesLog, records: Any) -> int:
            records = list(records)
            if log.path.name == EVENTS_FILE and records:
                self.appends += 1
            return append(log, records)

        monkeypatch.setattr(Journal, "append", counted_write)
        monkeypatch.setattr(JsonLinesLog, "append", counted_append)

    def reset(self) -> None:
        self.count = self.appends = 0


class HeldCommit:
    """Holds the first ``Store.commit`` (before it takes the store's lock) until released: a
    batch in progress, for others to queue behind."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        commit = store.commit
        calls = [0]

        def held(writes: Sequence[TaskWrite], *, events: Sequence[TaskEvent] = ()) -> None:
            calls[0] += 1
            if calls[0] == 1:
                self.holding.set()
                assert self.release.wait(WAIT), "the held commit was never released"
            commit(writes, events=events)

        monkeypatch.setattr(store, "commit", held)


class Dequeuers:
    """Threads each calling ``dequeue`` once; their handouts or errors by agent."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self.handed: dict[str, Handout | None] = {}
        self.failed: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, *agent_ids: str) -> None:
        for agent_id in agent_ids:
            thread = threading.Thread(target=self._dequeue, args=(agent_id,))
            thread.start()
            self._threads.append(thread)

    def _dequeue(self, agent_id: str) -> None:
        try:
            handout = self._queue.pull.dequeue(agent_id)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each dequeue raised
            with self._lock:
                self.failed[agent_id] = exc
        else:
            with self._lock:
                self.handed[agent_id] = handout

    def join(self) -> None:
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a dequeue never returned"


def assigned_events(store: Store, task_id: str) -> list[TaskState | None]:
    return [event.to_state for event in store.events_for(task_id)]


# --- dequeue batches -----------------------------------------------------------------------


def test_dequeues_queued_behind_a_write_are_committed_with_one_write_and_one_append(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five dequeues arriving while a sixth is being written become one batch: one state
    write and one event append for the five, each agent a different task, every event there."""
    leader, *followers = queue.agents(6)
    tasks = {
        queue.waiting(n, priority=Priority.HIGH if n % 2 else Priority.LOW).id for n in range(1, 7)
    }
    writes = StateWrites(monkeypatch)
    held = HeldCommit(queue.store, monkeypatch)
    dequeuers = Dequeuers(queue)
    dequeuers.start(leader)
    assert held.holding.wait(WAIT)
    dequeuers.start(*followers)
    assert queue.pull.dequeues.wait_for_waiting(5, timeout=WAIT)
    writes.reset()
    batches = queue.pull.dequeues.batches
    held.release.set()
    dequeuers.join()
    assert dequeuers.failed == {}
    assert (writes.count, writes.appends, queue.pull.dequeues.batches - batches) == (2, 2, 2)
    given = {agent: h.task.id for agent, h in dequeuers.handed.items() if h is not None}
    assert sorted(given) == sorted([leader, *followers]) and set(given.values()) == tasks
    for agent_id, task_id in given.items():
        stored = queue.store.get_task(task_id)
        assert (stored.state, stored.agent_id, stored.lease_generation) == (
            TaskState.ASSIGNED,
            agent_id,
            1,
        )
        assert stored.deadline_at is not None
        assert assigned_events(queue.store, task_id) == [TaskState.ASSIGNED]


def test_many_threads_dequeuing_until_nothing_is_left_never_double_assign(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty threads taking tasks until none fits: every task goes out exactly once, no agent
    over its slots, one assignment event each, and never more state writes than assignments."""
    agents = [f"b{n:02d}" for n in range(30)]
    for agent_id in agents:
        queue.harness.register(agent_id, max_concurrency=2)
    waiting = {queue.waiting(100 + n).id for n in range(45)}
    writes = StateWrites(monkeypatch)
    handed: list[tuple[str, str]] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(agents))

    def take(agent_id: str) -> None:
        try:
            start.wait(WAIT)
            while (handout := queue.pull.dequeue(agent_id)) is not None:
                with lock:
                    handed.append((handout.task.id, agent_id))
        except Exception:  # noqa: BLE001 - reported by the assertion on failures
            with lock:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=take, args=(agent_id,)) for agent_id in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert failures == []
    ids = [task_id for task_id, _ in handed]
    assert len(ids) == len(set(ids)) == 45 and set(ids) == waiting
    assert max(sum(agent == a for _, agent in handed) for a in agents) <= 2
    for task_id, agent_id in handed:
        assert queue.store.get_task(task_id).agent_id == agent_id
        assert assigned_events(queue.store, task_id) == [TaskState.ASSIGNED]
    assert 1 <= writes.count <= 45


def test_a_batch_that_cannot_be_written_fails_every_dequeue_in_it_and_stores_nothing(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The followers' batch hits a full disk: each of them gets a StoreError and none of their
    tasks is assigned; asking again then works, and after a reopen each task has exactly one
    assignment event (the failed batch's were cut off the log)."""
    leader, *followers = queue.agents(4)
    for n in range(1, 5):
        queue.waiting(n)
    writes = StateWrites(monkeypatch)
    held = HeldCommit(queue.store, monkeypatch)
    dequeuers = Dequeuers(queue)
    dequeuers.start(leader)
    assert held.holding.wait(WAIT)
    dequeuers.start(*followers)
    assert queue.pull.dequeues.wait_for_waiting(3, timeout=WAIT)
    writes.reset()
    writes.failing = {2}  # the leader's own write is the first; the followers' batch the second
    held.release.set()
    dequeuers.join()
    handout = dequeuers.handed[leader]
    assert handout is not None and set(dequeuers.handed) == {leader}
    assert set(dequeuers.failed) == set(followers)
    for error in dequeuers.failed.values():
        assert isinstance(error, StoreError)
        assert "No space left" in str(error) and "batch of 3" in str(error)
    others = [task for task in queue.store.list_tasks() if task.id != handout.task.id]
    assert [task.state for task in others] == [TaskState.CREATED] * 3
    assert all(queue.store.events_for(task.id) == [] for task in others)
    again = {agent_id: queue.pull.dequeue(agent_id) for agent_id in followers}
    assert {h.task.id for h in again.values() if h is not None} == {t.id for t in others}
    queue.harness.close()
    with Store.open(tmp_path / "state") as reopened:
        for task in [handout.task, *others]:
            assert assigned_events(reopened, task.id) == [TaskState.ASSIGNED]
            assert reopened.get_task(task.id).state is TaskState.ASSIGNED


# --- choosing for a batch ------------------------------------------------------------------


def make_agent(agent_id: str, *, slots: int = 1, roles: tuple[str, ...] = ()) -> Agent:
    return Agent(
        id=AgentId(agent_id),
        type="codex-cli",
        registered_at=NOW,
        max_concurrency=slots,
        roles=roles,
    )


def make_task(number: int, **fields: Any) -> Task:
    return Task(
        id=task_id_for(REPO, number),
        repo=RepoName(REPO),
        issue_number=number,
        title=f"Issue {number}",
        created_at=fields.pop("created_at", NOW),
        updated_at=NOW,
        **fields,
    )


def ask(agent: Agent, queue: Queue) -> DequeueAsk:
    return DequeueAsk(agent=agent, now=NOW, settings=queue.harness.settings())


def test_a_batch_is_served_in_turn_in_queue_order_without_a_task_twice(queue: Queue) -> None:
    """Each ask in turn gets the first task left in queue order that fits it: the high-priority
    task, then the oldest, then the youngest; the reviewer-only task fits nobody after that,
    so the last two get None."""
    high = make_task(1, priority=Priority.HIGH)
    old = make_task(2, created_at=NOW.replace(hour=9))
    young = make_task(3)
    review = make_task(4, required_role="reviewer")
    asks = [
        ask(make_agent("a1"), queue),
        ask(make_agent("a2"), queue),
        ask(make_agent("r1", roles=("reviewer",)), queue),
        ask(make_agent("a3"), queue),
        ask(make_agent("a4"), queue),
    ]
    planned = plan_assignments(asks, [young, review, old, high])
    got = [(p.chosen.id, p.assigned.agent_id) if p is not None else None for p in planned]
    assert got == [(high.id, "a1"), (old.id, "a2"), (young.id, "r1"), None, None]
    assert all(
        p.event.to_state is TaskState.ASSIGNED and p.event.task_id == p.chosen.id
        for p in planned
        if p is not None
    )


def test_an_agent_full_after_its_first_ask_in_a_batch_gets_nothing_more(queue: Queue) -> None:
    """Load counts what an agent took earlier in the same batch."""
    agent = make_agent("a1", slots=1)
    planned = plan_assignments([ask(agent, queue), ask(agent, queue)], [make_task(1), make_task(2)])
    assert planned[0] is not None and planned[1] is None


# --- Store.commit --------------------------------------------------------------------------


def event_for(task: Task, n: int) -> TaskEvent:
    return TaskEvent(task_id=task.id, at=NOW, actor="reconciler", data={"n": n})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


def test_commit_writes_every_task_with_one_state_write_and_one_event_append(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks, two new and one replaced, and their events: one write, one append."""
    kept = make_task(1)
    store.put_task(kept)
    writes = StateWrites(monkeypatch)
    moved = kept.model_copy(update={"state": TaskState.CANCELLED})
    new = [make_task(2), make_task(3)]
    store.commit(
        [TaskWrite(moved, expected=kept), *(TaskWrite(t, expected=None) for t in new)],
        events=[event_for(moved, 1), event_for(new[0], 2), event_for(new[1], 3)],
    )
    assert (writes.count, writes.appends) == (1, 1)
    assert [store.get_task(t.id) for t in (moved, *new)] == [moved, *new]
    assert [e.data["n"] for t in (moved, *new) for e in store.events_for(t.id)] == [1, 2, 3]


def test_commit_with_one_changed_task_writes_nothing_and_says_which(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: one stale expectation and neither task nor any event is written."""
    first, second = make_task(1), make_task(2)
    store.put_task(first)
    store.put_task(second)
    store.put_task(second.model_copy(update={"title": "edited meanwhile"}))
    writes = StateWrites(monkeypatch)
    with pytest.raises(StaleStateError, match=f"task {second.id} changed"):
        store.commit(
            [
                TaskWrite(first.model_copy(update={"attempt": 1}), expected=first),
                TaskWrite(second.model_copy(update={"attempt": 1}), expected=second),
            ],
            events=[event_for(first, 1)],
        )
    assert (writes.count, writes.appends) == (0, 0)
    assert store.get_task(first.id) == first and store.events_for(first.id) == []


def test_commit_refuses_a_task_twice_and_events_of_tasks_it_does_not_write(store: Store) -> None:
    """Bad input is a ValueError before anything is written."""
    task = make_task(1)
    with pytest.raises(ValueError, match="more than once"):
        store.commit([TaskWrite(task, expected=None), TaskWrite(task, expected=None)])
    with pytest.raises(ValueError, match="does not write"):
        store.commit([TaskWrite(task, expected=None)], events=[event_for(make_task(2), 1)])
    assert store.find_task(task.id) is None


def test_a_commit_that_cannot_write_cuts_its_events_back_off_the_log(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failed state write leaves the store as it was — events included, after a reopen
    too — and earlier events and later commits are unaffected."""
    earlier = make_task(1)
    store.commit([TaskWrite(earlier, expected=None)], events=[event_for(earlier, 1)])
    writes = StateWrites(monkeypatch)
    writes.failing = {1}
    lost = make_task(2)
    with pytest.raises(StoreError, match="No space left"):
        store.commit(
            [TaskWrite(lost, expected=None), TaskWrite(earlier, expected=earlier)],
            events=[event_for(lost, 2), event_for(earlier, 3)],
        )
    assert store.find_task(lost.id) is None and store.events_for(lost.id) == []
    assert [e.data["n"] for e in store.events_for(earlier.id)] == [1]
    later = make_task(3)
    store.commit([TaskWrite(later, expected=None)], events=[event_for(later, 4)])
    assert [e.data["n"] for e in store.events_for(later.id)] == [4]
    store.close()
    with Store.open(tmp_path / "state") as reopened:
        assert reopened.find_task(lost.id) is None and reopened.events_for(lost.id) == []
        assert [e.data["n"] for e in reopened.events_for(earlier.id)] == [1]
        assert [e.data["n"] for e in reopened.events_for(later.id)] == [4]


# --- Store.commit under SIGKILL ------------------------------------------------------------

BATCH = 3


def commit_forever(directory: Path, *, first: int, report: Callable[[str], None]) -> None:
    """Commit batches of three new tasks with their events; report each batch after it."""
    with Store.open(directory) as store:
        report("ready")
        number = first
        while True:
            tasks = [make_task(number + i) for i in range(BATCH)]
            store.commit(
                [TaskWrite(task, expected=None) for task in tasks],
                events=[event_for(task, number) for task in tasks],
            )
            report(f"batch {number}")
            number += BATCH


def fork_committer(directory: Path, *, first: int) -> tuple[int, int]:
    """Start ``commit_forever`` in a forked child; (pid, read end of its report pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: commit until killed; never return into pytest

        def report(line: str) -> None:
            os.write(write_end, f"{line}\n".encode())

        try:
            os.close(read_end)
            commit_forever(directory, first=first, report=report)
        except BaseException:  # noqa: BLE001 - the parent sees the child stop by itself
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(write_end)
    return pid, read_end


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkilled_committer_keeps_every_acknowledged_batch_whole(tmp_path: Path) -> None:
    """Killed at random moments, a process committing batches reopens with every acknowledged
    batch, tasks and events; and every batch's tasks are there all together or not at all."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    directory = tmp_path / "state"
    acknowledged = 0
    for round_number in range(15):
        # Each round numbers its own tasks: a batch killed after its events and before its
        # state write is never written again under the same numbers.
        first = round_number * 100_000 + 1
        pid, read_end = fork_committer(directory, first=first)
        # Killed after 1-3 acknowledged batches and a random moment more: at any point of
        # a commit, however fast or slow the machine is.
        required = rng.randint(1, 3)
        reports = kill_after(
            pid, read_end, delay=rng.choice([0.0, 0.002, 0.01, 0.03]), reports=required
        )
        batches = [int(line.split()[1]) for line in reports if line.startswith("batch ")]
        assert len(batches) >= required, f"round {round_number}: the committer stalled"
        acknowledged += len(batches)
        context = f"round {round_number}, seed {seed}"
        with Store.open(directory) as store:
            for number in batches:
                for i in range(BATCH):
                    task = store.find_task(task_id_for(REPO, number + i))
                    assert task is not None, context
                    assert [e.data["n"] for e in store.events_for(task.id)] == [number], context
            numbers = [t.issue_number for t in store.list_tasks() if t.issue_number >= first]
            for number in range(first, max(numbers, default=0) + 1, BATCH):
                present = {
                    store.find_task(task_id_for(REPO, number + i)) is not None for i in range(BATCH)
                }
                assert present == {True}, f"{context}: batch {number} is not whole"
    assert acknowledged >= 15  # at least one acknowledged batch per round, by construction


# --- the protocol --------------------------------------------------------------------------


class Recorded:
    """A commit function that records each batch, holding the first one until released."""

    def __init__(self, *, failing_batch: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self.failing_batch = failing_batch

    def __call__(self, requests: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            self.holding.set()
            assert self.release.wait(WAIT)
        if len(self.batches) == self.failing_batch:
            raise ValueError("the disk is on fire")
        return [r * 10 if r >= 0 else LookupError(f"no answer for {r}") for r in requests]


def submit_in_threads(
    group: GroupCommit[int, int], requests: Sequence[int]
) -> tuple[list[threading.Thread], dict[int, int | BaseException]]:
    outcomes: dict[int, int | BaseException] = {}

    def submit(request: int) -> None:
        try:
            outcomes[request] = group.submit(request)
        except Exception as exc:  # noqa: BLE001 - the test looks at each outcome
            outcomes[request] = exc

    threads = [threading.Thread(target=submit, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    return threads, outcomes


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()


def test_a_lone_request_is_committed_at_once_as_its_own_batch() -> None:
    """Idle, a request waits for nobody: one batch holding only it."""
    seen: list[list[int]] = []

    def commit(batch: Sequence[int]) -> list[int | Exception]:
        seen.append(list(batch))
        return [7]

    group: GroupCommit[int, int] = GroupCommit(commit)
    assert group.submit(1) == 7
    assert (seen, group.batches, group.waiting) == ([[1]], 1, 0)


def test_requests_arriving_during_a_commit_share_the_next_batch() -> None:
    """Four requests queued behind a commit in progress are committed together, each with
    its own answer."""
    commit = Recorded()
    group: GroupCommit[int, int] = GroupCommit(commit)
    first, outcomes = submit_in_threads(group, [0])
    assert commit.holding.wait(WAIT)
    rest, more = submit_in_threads(group, [1, 2, 3, 4])
    assert group.wait_for_waiting(4, timeout=WAIT)
    commit.release.set()
    join_all(first + rest)
    assert [sorted(batch) for batch in commit.batches] == [[0], [1, 2, 3, 4]]
    assert {**outcomes, **more} == {0: 0, 1: 10, 2: 20, 3: 30, 4: 40}


def test_a_commit_that_raises_fails_every_request_of_its_batch() -> None:
    """The batch's leader gets the error itself, every other request a RuntimeError caused by
    it; the batch before is unaffected."""
    commit = Recorded(failing_batch=2)
    group: GroupCommit[int, int] = GroupCommit(commit)
    first, outcomes = submit_in_threads(group, [0])
    assert commit.holding.wait(WAIT)
    rest, failed = submit_in_threads(group, [1, 2, 3])
    assert group.wait_for_waiting(3, timeout=WAIT)
    commit.release.set()
    join_all(first + rest)
    assert outcomes == {0: 0}
    errors = list(failed.values())
    assert sorted(type(e).__name__ for e in errors) == [
        "RuntimeError",
        "RuntimeError",
        "ValueError",
    ]
    for error in errors:
        assert isinstance(error, Exception)
        cause = error if isinstance(error, ValueError) else error.__cause__
        assert isinstance(cause, ValueError) and "on fire" in str(cause)


def test_an_error_answered_for_one_request_fails_that_request_only() -> None:
    """A commit may fail single requests of a batch; the others get their answers."""
    commit = Recorded()
    group: GroupCommit[int, int] = GroupCommit(commit)
    first, outcomes = submit_in_threads(group, [0])
    assert commit.holding.wait(WAIT)
    rest, more = submit_in_threads(group, [1, -1])
    assert group.wait_for_waiting(2, timeout=WAIT)
    commit.release.set()
    join_all(first + rest)
    assert outcomes == {0: 0} and more[1] == 10 and isinstance(more[-1], LookupError)
