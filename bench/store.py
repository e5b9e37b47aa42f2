"""Benchmark of the durable state store: append, live write and reopen costs against targets.

Run by hand: ``python bench/store.py``. Works in a temporary directory (on the default temp
disk, or ``--dir``) that it removes, and prints one table with each target and PASS/MISS.

* event append: ``Store.append_event`` beside a plain fsync'd JSON-lines append on the same
  disk (target: within 2x);
* live-state write: ``Store.put_task`` with 1,000 live tasks (target: p50 <= 25 ms);
* reopen with 10,000 archived tasks and 100,000 events (target: <= 2 s), and the first
  lookups after it, which build the lazy indexes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Importing the harness takes bench/ off sys.path, where the bench/ scripts' names would shadow
# the packages they measure: it comes before the project's imports (see bench/harness.py).
from harness import Row, print_table, verdict

from reconciler.models import AgentId, RepoName, Task, TaskEvent, TaskId, TaskState, task_id_for
from reconciler.store import Store
from reconciler.store.logfile import encode_line
from reconciler.store.store import ARCHIVE_FILE, EVENTS_FILE, STATE_FILE

NOW = datetime(2025, 1, 1, tzinfo=UTC)
APPENDS = 1500
LIVE_TASKS = 1000
LIVE_WRITES = 300
ARCHIVED_TASKS = 10_000
EVENTS = 100_000


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
        assert store.get_task(archived[4242].id).state is TaskState.COMPLETED
        first_archived = time.perf_counter() - start
    finally:
        store.close()
    return opened, first_events, first_archived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-store-bench-", dir=args.dir))
    try:
        store_ms, plain_ms = bench_event_append(root)
        live_ms = bench_live_writes(root)
        opened, first_events, first_archived = bench_reopen(root)
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

    print_table(rows)
    print(
        f"\n{APPENDS} appends each; {LIVE_WRITES} live writes; temp dir under "
        f"{args.dir or tempfile.gettempdir()}"
    )


if __name__ == "__main__":
    main()
