"""The state store's append-only files: the event log, the task archive and the receipts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import NotFoundError, StoreError
from reconciler.models import (
    AgentId,
    Receipt,
    ReceiptId,
    RepoName,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    task_id_for,
    transition,
)
from reconciler.store import SCHEMA_VERSION, Store
from reconciler.store.logfile import encode_line
from reconciler.store.storage import load_state
from reconciler.store.store import ARCHIVE_FILE, EVENTS_FILE, RECEIPTS_FILE

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=8)


def make_task(number: int, *, state: TaskState = TaskState.CREATED, at: datetime = NOW) -> Task:
    return Task(
        id=task_id_for("org/repo", number),
        repo=RepoName("org/repo"),
        issue_number=number,
        title=f"issue {number}",
        state=state,
        created_at=NOW,
        updated_at=at,
    )


def make_event(task_id: str, n: int) -> TaskEvent:
    return TaskEvent(
        task_id=TaskId(task_id),
        at=NOW + timedelta(seconds=n),
        actor="reconciler",
        kind="progress",
        reason=f"step {n}",
        data={"n": n},
    )


def make_receipt(receipt_id: str, task_id: str, *, summary: str = "done") -> Receipt:
    return Receipt(
        id=ReceiptId(receipt_id),
        task_id=TaskId(task_id),
        agent_id=AgentId("a1"),
        lease_generation=1,
        summary=summary,
        submitted_at=NOW,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


def reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.path)


def live_task_ids(store: Store) -> set[str]:
    """The live task ids as the disk holds them (snapshot with its journal replayed)."""
    return set(load_state(store.path).get("tasks", {}))


# --- the event log ------------------------------------------------------------------------


def test_events_read_back_per_task_in_order(store: Store) -> None:
    """events_for returns exactly one task's events, oldest first."""
    for n in range(6):
        store.append_event(make_event("1-aaaaaaaa" if n % 2 else "2-bbbbbbbb", n))
    assert [e.data["n"] for e in store.events_for("1-aaaaaaaa")] == [1, 3, 5]
    assert [e.data["n"] for e in store.events_for("2-bbbbbbbb")] == [0, 2, 4]
    assert store.events_for("3-cccccccc") == []


def test_event_log_is_not_a_tinydb_table(store: Store) -> None:
    """Events go to their own JSON-lines file; the live state file does not grow with them."""
    store.append_event(make_event("1-aaaaaaaa", 1))
    lines = (store.path / EVENTS_FILE).read_bytes().splitlines()
    assert json.loads(lines[0])["task_id"] == "1-aaaaaaaa"
    # The live state holds only the schema version written at open.
    assert load_state(store.path) == {"meta": {"schema_version": {"value": SCHEMA_VERSION}}}


def test_event_index_stays_right_across_appends_and_reopen(store: Store) -> None:
    """Events appended after the index was built are found, and again after a reopen."""
    store.append_event(make_event("1-aaaaaaaa", 1))
    assert len(store.events_for("1-aaaaaaaa")) == 1  # builds the index
    store.append_event(make_event("1-aaaaaaaa", 2))
    store.append_event(make_event("2-bbbbbbbb", 3))
    assert [e.data["n"] for e in store.events_for("1-aaaaaaaa")] == [1, 2]
    store = reopen(store)
    try:
        store.append_event(make_event("1-aaaaaaaa", 4))
        assert [e.data["n"] for e in store.events_for("1-aaaaaaaa")] == [1, 2, 4]
        assert [e.data["n"] for e in store.events_for("2-bbbbbbbb")] == [3]
    finally:
        store.close()


def test_torn_last_event_line_is_dropped_at_open(store: Store) -> None:
    """Half a line at the end (a crash mid-write) is cut off at open, not an error."""
    store.append_event(make_event("1-aaaaaaaa", 1))
    store.close()
    log = store.path / EVENTS_FILE
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"task_id":"1-aaaaaaaa","at":"2025-')
    with Store.open(store.path) as reopened:
        assert [e.data["n"] for e in reopened.events_for("1-aaaaaaaa")] == [1]
        assert log.read_bytes() == whole
        reopened.append_event(make_event("1-aaaaaaaa", 2))
        assert [e.data["n"] for e in reopened.events_for("1-aaaaaaaa")] == [1, 2]


def test_whole_last_event_without_newline_is_kept(store: Store) -> None:
    """A last record that landed whole but lost its newline is kept and completed."""
    store.append_event(make_event("1-aaaaaaaa", 1))
    store.close()
    log = store.path / EVENTS_FILE
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    with Store.open(store.path) as reopened:
        assert [e.data["n"] for e in reopened.events_for("1-aaaaaaaa")] == [1]
        assert log.read_bytes().endswith(b"}\n")


def test_torn_only_line_leaves_an_empty_log(store: Store) -> None:
    """A log holding nothing but a torn line opens empty."""
    store.close()
    (store.path / EVENTS_FILE).write_bytes(b'{"task_id":"1-aa')
    with Store.open(store.path) as reopened:
        assert reopened.events_for("1-aaaaaaaa") == []
        assert (store.path / EVENTS_FILE).read_bytes() == b""


def test_task_ids_that_need_json_escapes_are_indexed(store: Store) -> None:
    """Keys with quotes, backslashes or non-ASCII are found (the parser reads them)."""
    odd = ['quote"d', "back\\slash", "né-1"]
    for n, task_id in enumerate(odd):
        store.append_event(make_event(task_id, n))
    store = reopen(store)
    try:
        assert [[e.data["n"] for e in store.events_for(t)] for t in odd] == [[0], [1], [2]]
    finally:
        store.close()


def test_corrupt_event_line_is_an_error_naming_the_file(store: Store) -> None:
    """A line edited into invalid JSON in the middle of the log fails the lookup clearly."""
    store.append_event(make_event("1-aaaaaaaa", 1))
    store.close()
    log = store.path / EVENTS_FILE
    log.write_bytes(b"not json\n" + log.read_bytes())
    with Store.open(store.path) as reopened, pytest.raises(StoreError, match=EVENTS_FILE):
        reopened.events_for("1-aaaaaaaa")


# --- the archive --------------------------------------------------------------------------


def test_terminal_tasks_leave_the_live_file_and_stay_readable(store: Store) -> None:
    """archive_terminal moves old completed/cancelled tasks out; get_task still finds them."""
    store.put_task(make_task(1, state=TaskState.COMPLETED))
    store.put_task(make_task(2, state=TaskState.CANCELLED))
    store.put_task(make_task(3, state=TaskState.FAILED))
    store.put_task(make_task(4, state=TaskState.COMPLETED, at=LATER))
    assert store.archive_terminal(NOW + timedelta(days=7)) == 2
    ids = {n: task_id_for("org/repo", n) for n in range(1, 5)}
    assert live_task_ids(store) == {ids[3], ids[4]}
    assert store.get_task(ids[1]).state is TaskState.COMPLETED
    assert {t.issue_number for t in store.archived_tasks()} == {1, 2}
    assert {t.issue_number for t in store.list_tasks()} == {3, 4}
    store = reopen(store)
    try:
        assert store.get_task(ids[2]).state is TaskState.CANCELLED
        assert {t.issue_number for t in store.archived_tasks(repo="org/repo")} == {1, 2}
        assert store.archived_tasks(repo="org/other") == []
    finally:
        store.close()


def test_archive_needs_an_aware_cutoff(store: Store) -> None:
    """A naive cutoff time is refused."""
    with pytest.raises(ValueError, match="time zone"):
        store.archive_terminal(datetime(2025, 1, 1))


def test_crash_between_archive_append_and_live_delete_resolves(store: Store) -> None:
    """A record in both files reads as itself, and the next pass finishes the move once."""
    task = make_task(1, state=TaskState.COMPLETED)
    store.put_task(task)
    store.close()
    # What archive_terminal appends before it deletes the live record; the kill came between.
    with open(store.path / ARCHIVE_FILE, "ab") as archive:
        archive.write(encode_line(task.model_dump(mode="json"), key_fields=("id",)))
    with Store.open(store.path) as reopened:
        assert reopened.get_task(task.id) == task
        assert reopened.archived_tasks() == []
        assert reopened.archive_terminal(LATER) == 1
        assert live_task_ids(reopened) == set()
        assert reopened.get_task(task.id) == task
    assert len((store.path / ARCHIVE_FILE).read_bytes().splitlines()) == 1


def test_reopened_task_is_live_again_and_wins_over_its_archived_copy(store: Store) -> None:
    """A cancelled, archived task put back to created reads as created, even at the same time."""
    cancelled = make_task(1, state=TaskState.CANCELLED)
    store.put_task(cancelled)
    store.archive_terminal(LATER)
    # The same timestamp on purpose: resolution must not depend on the clock.
    reopened_task, _ = transition(cancelled, TaskState.CREATED, now=NOW, actor="forgejo:alice")
    store.put_task(reopened_task)
    store = reopen(store)
    try:
        assert store.get_task(cancelled.id).state is TaskState.CREATED
        assert [t.state for t in store.list_tasks()] == [TaskState.CREATED]
        assert store.archived_tasks() == []
        cancelled_again, _ = transition(reopened_task, TaskState.CANCELLED, now=NOW, actor="x")
        store.put_task(cancelled_again.model_copy(update={"failure_reason": "closed again"}))
        assert store.archive_terminal(LATER) == 1
        assert store.get_task(cancelled.id).failure_reason == "closed again"
    finally:
        store.close()


def test_update_task_reaches_an_archived_task(store: Store) -> None:
    """update_task on an archived task writes the changed task back live."""
    store.put_task(make_task(1, state=TaskState.CANCELLED))
    store.archive_terminal(LATER)
    task_id = task_id_for("org/repo", 1)
    store.update_task(task_id, lambda t: transition(t, TaskState.CREATED, now=LATER, actor="x")[0])
    assert [t.id for t in store.list_tasks()] == [task_id]


# --- receipts -----------------------------------------------------------------------------


def test_receipts_survive_their_task_being_archived(store: Store) -> None:
    """Receipts stay readable by id and by task after the task moved to the archive."""
    task = make_task(1, state=TaskState.COMPLETED)
    store.put_task(task)
    store.put_receipt(make_receipt("r1", task.id))
    store.put_receipt(make_receipt("r2", task.id))
    store.put_receipt(make_receipt("r3", "9-99999999"))
    store.archive_terminal(LATER)
    store = reopen(store)
    try:
        assert store.get_receipt("r1").task_id == task.id
        assert [r.id for r in store.receipts_for(task.id)] == ["r1", "r2"]
    finally:
        store.close()


def test_same_receipt_twice_is_written_once(store: Store) -> None:
    """Resubmitting an identical receipt (a retried upload) adds nothing to the file."""
    store.put_receipt(make_receipt("r1", "1-aaaaaaaa"))
    store.put_receipt(make_receipt("r1", "1-aaaaaaaa"))
    assert len((store.path / RECEIPTS_FILE).read_bytes().splitlines()) == 1


def test_changed_receipt_supersedes_the_old_one(store: Store) -> None:
    """A receipt resubmitted with changes reads as the latest version, listed once."""
    store.put_receipt(make_receipt("r1", "1-aaaaaaaa", summary="first"))
    store.put_receipt(make_receipt("r1", "1-aaaaaaaa", summary="second"))
    store = reopen(store)
    try:
        assert store.get_receipt("r1").summary == "second"
        assert [r.summary for r in store.receipts_for("1-aaaaaaaa")] == ["second"]
    finally:
        store.close()


def test_unknown_receipt_is_not_found(store: Store) -> None:
    """get_receipt raises NotFoundError; find_receipt answers None."""
    assert store.find_receipt("nope") is None
    with pytest.raises(NotFoundError, match="nope"):
        store.get_receipt("nope")
