"""The live state's journal: records replayed on open, torn and damaged records, compaction,
TinyDB's own table methods, and the dry-run's copy of a store that is open."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tinydb import Query

from reconciler.errors import StoreError
from reconciler.models import RepoName, Task, TaskState, task_id_for
from reconciler.store import Store
from reconciler.store.journal import COMPACTING_FILE, JOURNAL_FILE, encode_record, read_records
from reconciler.store.snapshot import open_snapshot
from reconciler.store.storage import STATE_FILE, load_state

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REPO = RepoName("org/repo")


def make_task(number: int, *, state: TaskState = TaskState.CREATED) -> Task:
    return Task(
        id=task_id_for(REPO, number),
        repo=REPO,
        issue_number=number,
        title=f"issue {number}",
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state")
    yield opened
    opened.close()


def test_a_write_appends_one_record_with_only_the_changed_document(store: Store) -> None:
    """put_task adds one journal record holding that task alone; state.json is not rewritten."""
    for n in range(20):
        store.put_task(make_task(n))
    store.compact()
    before = (store.path / JOURNAL_FILE).read_bytes()
    snapshot = (store.path / STATE_FILE).stat().st_mtime_ns
    store.put_task(make_task(5, state=TaskState.CANCELLED))
    added = (store.path / JOURNAL_FILE).read_bytes()[len(before) :]
    [record] = read_records_of(added, store.path / "probe")
    assert record == [
        ("tasks", make_task(5).id, make_task(5, state=TaskState.CANCELLED).model_dump(mode="json"))
    ]
    assert (store.path / STATE_FILE).stat().st_mtime_ns == snapshot


def read_records_of(data: bytes, path: Path) -> list[list[tuple[str, str, object]]]:
    path.write_bytes(data)
    try:
        return [list(record) for record in read_records(path)]
    finally:
        path.unlink()


def test_a_torn_last_record_is_ignored_and_the_rest_replayed(tmp_path: Path) -> None:
    """A record cut short (no newline) or with a bad checksum at the end was never
    acknowledged: reopening drops it and keeps every record before it."""
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(1))
    journal = directory / JOURNAL_FILE
    good = encode_record([("tasks", make_task(2).id, make_task(2).model_dump(mode="json"))])
    torn = encode_record([("tasks", make_task(3).id, make_task(3).model_dump(mode="json"))])
    journal.write_bytes(good + torn[: len(torn) // 2])
    with Store.open(directory) as store:
        assert {t.issue_number for t in store.list_tasks()} == {1, 2}
    assert journal.read_bytes() == b""  # folded into the snapshot at open
    bad_checksum = b"00000000" + torn[8:]
    journal.write_bytes(good + bad_checksum)
    with Store.open(directory) as store:
        assert {t.issue_number for t in store.list_tasks()} == {1, 2}


def test_a_damaged_record_before_the_last_refuses_to_open(tmp_path: Path) -> None:
    """Damage in the middle is not a torn write: the store names the journal and the line."""
    directory = tmp_path / "state"
    Store.open(directory).close()
    good = encode_record([("tasks", make_task(2).id, make_task(2).model_dump(mode="json"))])
    (directory / JOURNAL_FILE).write_bytes(b"garbage\n" + good)
    with pytest.raises(StoreError, match=r"state.journal has a damaged record at line 1"):
        Store.open(directory)


def test_both_journals_are_replayed_in_order_over_the_snapshot(tmp_path: Path) -> None:
    """A compaction interrupted after its rotation: the rotated journal, then the new one, win
    over the snapshot in that order."""
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(1))
    first = make_task(1, state=TaskState.CANCELLED).model_dump(mode="json")
    second = make_task(1, state=TaskState.FAILED).model_dump(mode="json")
    (directory / COMPACTING_FILE).write_bytes(encode_record([("tasks", make_task(1).id, first)]))
    (directory / JOURNAL_FILE).write_bytes(encode_record([("tasks", make_task(1).id, second)]))
    assert load_state(directory)["tasks"][make_task(1).id]["state"] == "failed"
    with Store.open(directory) as store:
        assert store.get_task(make_task(1).id).state is TaskState.FAILED
    assert not (directory / COMPACTING_FILE).exists()


def test_compaction_folds_the_journal_into_the_snapshot_and_writes_go_on(store: Store) -> None:
    """compact() writes state.json with everything, empties the journal, and later writes land
    in the new journal; load_state sees both."""
    for n in range(10):
        store.put_task(make_task(n))
    assert store.compact()
    assert (store.path / JOURNAL_FILE).stat().st_size == 0
    store.put_task(make_task(10))
    on_disk = load_state(store.path)["tasks"]
    assert set(on_disk) == {make_task(n).id for n in range(11)}
    assert store.compact() and not store.compact()  # nothing left to fold


def test_the_background_compactor_keeps_the_journal_bounded(tmp_path: Path) -> None:
    """With a small threshold the journal is folded again and again while writes go on."""
    with Store.open(tmp_path / "state", compact_after_bytes=4000) as store:
        for n in range(300):
            store.put_task(make_task(n % 40, state=TaskState.CREATED))
        store_path = store.path
        compactions = store.compactions
    assert compactions >= 1
    assert (store_path / JOURNAL_FILE).stat().st_size == 0  # a clean close folds the rest


def test_tinydb_table_methods_still_work_and_are_journaled(tmp_path: Path) -> None:
    """TinyDB's insert, update, search and remove on a table of the live state keep working,
    and what they change is on disk at once, in the journal (no close needed)."""
    directory = tmp_path / "state"
    store = Store.open(directory)
    table = store._db.table("scratch")  # the TinyDB under the store
    table.insert({"name": "a", "n": 1})
    table.insert({"name": "b", "n": 2})
    table.update({"n": 5}, Query().name == "a")
    table.remove(Query().name == "b")
    assert [doc["n"] for doc in table.search(Query().name == "a")] == [5]
    assert list(load_state(directory)["scratch"].values()) == [{"name": "a", "n": 5}]
    store.close()


def test_the_dry_run_copy_of_an_open_store_holds_its_journal(store: Store) -> None:
    """open_snapshot copies the snapshot and its journals, so it sees writes not yet compacted."""
    store.put_task(make_task(1))
    store.compact()
    store.put_task(make_task(2))
    with open_snapshot(store.path) as copy:
        assert {t.issue_number for t in copy.list_tasks()} == {1, 2}
