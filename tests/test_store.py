"""The state store's live records: opening, agents, tasks, outbox, backoff, metadata, errors."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.engine.workqueue import BackoffStore
from reconciler.errors import NotFoundError, StoreError
from reconciler.fleet.placement import queue_order
from reconciler.keys import Key, agent_key, issue_key
from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    Priority,
    RepoName,
    Task,
    TaskState,
    task_id_for,
    transition,
)
from reconciler.store import Backoff, Store, encode_backoff_key
from reconciler.store.store import STATE_FILE, TaskWrite

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_task(number: int, *, repo: str = "org/repo", state: TaskState = TaskState.CREATED) -> Task:
    return Task(
        id=task_id_for(repo, number),
        repo=RepoName(repo),
        issue_number=number,
        title=f"issue {number}",
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )


def make_agent(agent_id: str, *, status: AgentStatus = AgentStatus.ONLINE) -> Agent:
    return Agent(id=AgentId(agent_id), type="claude-code", status=status, registered_at=NOW)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


def reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.path)


# --- opening ------------------------------------------------------------------------------


def test_open_creates_the_directory(tmp_path: Path) -> None:
    """Opening a path that does not exist creates it, parents included."""
    with Store.open(tmp_path / "a" / "b") as store:
        assert store.path.is_dir()


def test_corrupt_state_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """A state file that does not parse stops the open; it is not replaced by an empty store."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / STATE_FILE).write_text('{"tasks": {"1-abc": ')
    with pytest.raises(StoreError) as raised:
        Store.open(directory)
    assert str(directory / STATE_FILE) in str(raised.value)
    assert "not valid JSON" in str(raised.value)
    assert (directory / STATE_FILE).read_text() == '{"tasks": {"1-abc": '


def test_invalid_record_in_state_file_is_an_error_at_open(tmp_path: Path) -> None:
    """A hand-edited task with an unknown state fails the open, naming the record."""
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(1))
    data = json.loads((directory / STATE_FILE).read_text())
    data["tasks"][task_id_for("org/repo", 1)]["state"] = "sleeping"
    (directory / STATE_FILE).write_text(json.dumps(data))
    with pytest.raises(StoreError, match=f"tasks/{task_id_for('org/repo', 1)}"):
        Store.open(directory)


def test_failed_open_releases_the_lock(tmp_path: Path) -> None:
    """An open that fails on a bad file does not keep the store locked."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / STATE_FILE).write_text("[1, 2")
    with pytest.raises(StoreError):
        Store.open(directory)
    (directory / STATE_FILE).unlink()
    with Store.open(directory) as store:
        assert store.list_tasks() == []


def test_leftover_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    """A temp file from a write a crash interrupted is deleted, and the state is the old one."""
    directory = tmp_path / "state"
    with Store.open(directory) as store:
        store.put_task(make_task(1))
    leftover = directory / (STATE_FILE + ".tmp")
    leftover.write_text('{"tasks": {}')
    with Store.open(directory) as store:
        assert not leftover.exists()
        assert store.find_task(task_id_for("org/repo", 1)) is not None


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    """Using a store after close() is an error, not a silent no-op."""
    store = Store.open(tmp_path / "state")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_tasks()


def test_second_open_in_the_same_process_is_refused(store: Store) -> None:
    """The flock is per open file, so even this process cannot open the store twice."""
    with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
        Store.open(store.path)


# --- tasks --------------------------------------------------------------------------------


def test_task_round_trips_across_reopen(store: Store) -> None:
    """A task written is read back equal after the store is reopened."""
    task = make_task(7).model_copy(update={"required_capabilities": ("code:python",)})
    store.put_task(task)
    store = reopen(store)
    try:
        assert store.get_task(task.id) == task
    finally:
        store.close()


def test_unknown_task_is_not_found(store: Store) -> None:
    """get_task raises NotFoundError; find_task answers None."""
    assert store.find_task("404-deadbeef") is None
    with pytest.raises(NotFoundError, match="404-deadbeef"):
        store.get_task("404-deadbeef")


def test_task_is_found_by_its_issue(store: Store) -> None:
    """task_for_issue finds the task born from (repo, number), and only that one."""
    store.put_task(make_task(3, repo="Org/Repo"))
    found = store.task_for_issue("Org/Repo", 3)
    assert found is not None and found.issue_number == 3
    assert store.task_for_issue("org/other", 3) is None


def test_list_tasks_filters_by_state_and_repo(store: Store) -> None:
    """list_tasks keeps only the given state(s) and repository (case-insensitively)."""
    store.put_task(make_task(1, state=TaskState.CREATED))
    store.put_task(make_task(2, state=TaskState.RUNNING))
    store.put_task(make_task(3, repo="org/other", state=TaskState.RUNNING))
    running = store.list_tasks(state=TaskState.RUNNING)
    assert sorted(t.issue_number for t in running) == [2, 3]
    in_repo = store.list_tasks(repo="ORG/repo")
    assert sorted(t.issue_number for t in in_repo) == [1, 2]
    both = store.list_tasks(state=[TaskState.CREATED, TaskState.RUNNING], repo="org/other")
    assert [t.issue_number for t in both] == [3]


def test_put_task_replaces_the_whole_record(store: Store) -> None:
    """A second put replaces the task; no field of the old version survives."""
    store.put_task(make_task(1).model_copy(update={"wait_reason": "no agent has code:rust"}))
    store.put_task(make_task(1))
    assert store.get_task(task_id_for("org/repo", 1)).wait_reason == ""


def test_update_task_may_not_change_the_id(store: Store) -> None:
    """update_task refuses a change function that returns another task."""
    store.put_task(make_task(1))
    with pytest.raises(ValueError, match="may not change the id"):
        store.update_task(task_id_for("org/repo", 1), lambda t: make_task(2))


def test_record_appends_the_event_before_saving_the_task(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the task write fails, the event is already in the log (event first)."""
    task = make_task(1)
    store.put_task(task)
    moved, event = transition(task, TaskState.CANCELLED, now=NOW, actor="reconciler")

    def fail(_: Task) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "put_task", fail)
    with pytest.raises(StoreError, match="disk full"):
        store.record(moved, event)
    assert store.events_for(task.id) == [event]
    assert store.get_task(task.id).state is TaskState.CREATED


def test_record_refuses_an_event_of_another_task(store: Store) -> None:
    """An event is recorded only with its own task."""
    _, event = transition(make_task(1), TaskState.CANCELLED, now=NOW, actor="reconciler")
    with pytest.raises(ValueError, match="recorded with task"):
        store.record(make_task(2), event)


def test_failed_write_leaves_memory_as_the_disk_has_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that cannot reach the disk raises, and reads do not show it afterwards."""
    store.put_task(make_task(1))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", no_space)
    with pytest.raises(StoreError, match="No space left"):
        store.put_task(make_task(2))
    assert store.find_task(task_id_for("org/repo", 2)) is None
    monkeypatch.undo()
    store.put_task(make_task(3))
    assert sorted(t.issue_number for t in store.list_tasks()) == [1, 3]


# --- agents -------------------------------------------------------------------------------


def test_agents_put_get_list_and_delete(store: Store) -> None:
    """Agents round-trip, filter by status, and deleting reports whether one existed."""
    store.put_agent(make_agent("a1"))
    store.put_agent(make_agent("a2", status=AgentStatus.OFFLINE))
    assert store.get_agent("a1").type == "claude-code"
    assert [a.id for a in store.list_agents(status=AgentStatus.OFFLINE)] == ["a2"]
    assert store.delete_agent("a2") is True
    assert store.delete_agent("a2") is False
    assert [a.id for a in store.list_agents()] == ["a1"]
    with pytest.raises(NotFoundError):
        store.get_agent("a2")


def test_update_agent_applies_the_change(store: Store) -> None:
    """update_agent writes what the change function returns."""
    store.put_agent(make_agent("a1"))
    updated = store.update_agent(
        "a1", lambda a: a.model_copy(update={"status": AgentStatus.DRAINING})
    )
    assert updated.status is AgentStatus.DRAINING
    assert store.get_agent("a1").status is AgentStatus.DRAINING


# --- outbox -------------------------------------------------------------------------------


def test_outbox_keeps_messages_until_acked_across_reopen(store: Store) -> None:
    """Pending messages survive a reopen in order; an acked one is gone for good."""
    first = store.enqueue("matrix", {"text": "one"}, now=NOW)
    second = store.enqueue("matrix", {"text": "two"}, now=NOW)
    third = store.enqueue("receipts", {"id": "r1"}, now=NOW)
    store = reopen(store)
    try:
        assert [m.id for m in store.pending()] == [first.id, second.id, third.id]
        assert [m.id for m in store.pending(topic="matrix", limit=1)] == [first.id]
        assert store.ack(first.id) is True
        assert store.ack(first.id) is False
        store = reopen(store)
        assert [m.payload for m in store.pending(topic="matrix")] == [{"text": "two"}]
    finally:
        store.close()


def test_enqueue_with_a_pending_id_does_not_queue_twice(store: Store) -> None:
    """Enqueueing the same message id again returns the pending message unchanged."""
    first = store.enqueue("matrix", {"text": "one"}, now=NOW, message_id="evt-1")
    again = store.enqueue("matrix", {"text": "changed"}, now=NOW, message_id="evt-1")
    assert again == first
    assert len(store.pending()) == 1


def test_outbox_orders_new_messages_after_pending_ones(store: Store) -> None:
    """A message enqueued after an ack still sorts after every pending message."""
    first = store.enqueue("matrix", {"n": 1}, now=NOW)
    second = store.enqueue("matrix", {"n": 2}, now=NOW)
    store.ack(first.id)
    third = store.enqueue("matrix", {"n": 3}, now=NOW)
    assert [m.id for m in store.pending()] == [second.id, third.id]


def test_outbox_payload_must_be_json(store: Store) -> None:
    """A payload JSON cannot hold is refused with a clear error, and nothing is queued."""
    with pytest.raises(ValueError, match="plain JSON"):
        store.enqueue("matrix", {"when": NOW}, now=NOW)
    assert store.pending() == []


# --- backoff and metadata -----------------------------------------------------------------


def test_backoff_round_trips_across_reopen(store: Store) -> None:
    """A key's attempts and not-before time survive a reopen; clearing forgets them."""
    key = ("assignment", "org/repo", "12")
    store.set_backoff(key, attempts=3, not_before=NOW + timedelta(minutes=4))
    store = reopen(store)
    try:
        assert store.get_backoff(key) == Backoff(3, NOW + timedelta(minutes=4))
        assert store.get_backoff(("assignment", "org/repo", "13")) is None
        store.clear_backoff(key)
        store.clear_backoff(key)
        store = reopen(store)
        assert store.get_backoff(key) is None
    finally:
        store.close()


def test_backoff_key_encoding_is_stable_and_unambiguous() -> None:
    """Equal keys encode equally; parts containing separators do not collide."""
    assert encode_backoff_key(("a", "b/c", "1")) == encode_backoff_key(Key("a", "b/c", "1"))
    assert encode_backoff_key(("a", "b", "c,d")) != encode_backoff_key(("a", "b,c", "d"))
    assert encode_backoff_key(("a", "b/c", "d")) != encode_backoff_key(("a/b", "c", "d"))


@pytest.mark.parametrize(
    "key", [(), ("assignment", "org/repo"), ("assignment", "org/repo", 12), ["a", "b", "c"]]
)
def test_backoff_key_must_be_three_strings(store: Store, key: object) -> None:
    """A key that is not a tuple of three strings (controller, repo, id) is refused."""
    with pytest.raises(ValueError, match="tuple of three strings"):
        store.get_backoff(key)  # type: ignore[arg-type]


def test_store_gives_the_work_queue_every_backoff_after_reopen(store: Store) -> None:
    """all_backoffs returns each key as a work-queue Key with its attempts and time."""
    queue_store: BackoffStore = store
    queue_store.set_backoff(issue_key("org/repo", 12), attempts=2, not_before=NOW)
    store.set_backoff(agent_key("claude-1"), attempts=5, not_before=NOW + timedelta(hours=1))
    store = reopen(store)
    try:
        assert sorted(store.all_backoffs()) == [
            (Key("assignment", "org/repo", "12"), 2, NOW),
            (Key("registry", "", "claude-1"), 5, NOW + timedelta(hours=1)),
        ]
        assert all(isinstance(key, Key) for key, _, _ in store.all_backoffs())
    finally:
        store.close()


def test_backoff_time_must_carry_a_zone(store: Store) -> None:
    """A naive not-before time is refused."""
    with pytest.raises(ValueError, match="time zone"):
        store.set_backoff(("a", "b", "c"), attempts=1, not_before=datetime(2025, 1, 1))


def test_meta_round_trips_across_reopen(store: Store) -> None:
    """A named value survives a reopen; an unset name reads None."""
    store.set_meta("last_resync:org/repo", "2025-03-01T12:00:00+00:00")
    store.set_meta("counts", {"seen": [1, 2]})
    store = reopen(store)
    try:
        assert store.get_meta("last_resync:org/repo") == "2025-03-01T12:00:00+00:00"
        assert store.get_meta("counts") == {"seen": [1, 2]}
        assert store.get_meta("never") is None
    finally:
        store.close()


def test_meta_value_must_be_json(store: Store) -> None:
    """A value JSON cannot hold is refused."""
    with pytest.raises(ValueError, match="plain JSON"):
        store.set_meta("x", float("nan"))


# --- the parsed objects and their indexes ---------------------------------------------------


def test_indexed_task_lists_match_a_scan_after_random_writes_and_a_reopen(tmp_path: Path) -> None:
    """list_tasks by state, repo and agent answers what filtering every task would, in the order
    first stored, and waiting_tasks is the created ones in queue order, through puts, state changes, reassignments, commits, archiving and a reopen."""
    rng = random.Random(7)
    states = list(TaskState)
    repos = ["org/one", "Org/Two", "org/three"]
    agents = [None, AgentId("a1"), AgentId("a2"), AgentId("a3")]
    store = Store.open(tmp_path / "state", compact_after_bytes=2000)
    try:
        for step in range(400):
            number = rng.randrange(60)
            repo = repos[number % 3]
            current = store.find_task(task_id_for(repo, number))
            task = (current or make_task(number, repo=repo)).model_copy(
                update={
                    "state": rng.choice(states),
                    "agent_id": rng.choice(agents),
                    "priority": rng.choice(list(Priority)),
                    "created_at": NOW + timedelta(seconds=rng.randrange(5)),
                    "updated_at": NOW + timedelta(seconds=step),
                }
            )
            if step % 7 == 0:
                store.commit([TaskWrite(task, expected=current)])
            else:
                store.put_task(task)
            if step % 50 == 49:
                store.archive_terminal(NOW + timedelta(seconds=step - 20))
            if step == 200:
                store.close()
                store = Store.open(tmp_path / "state", compact_after_bytes=2000)
        everything = store.list_tasks()
        assert len({t.id for t in everything}) == len(everything)
        for wanted_states in ([TaskState.CREATED], [TaskState.RUNNING, TaskState.ASSIGNED], None):
            for repo in [None, "ORG/two", "org/one"]:
                for agent in [None, "a2"]:
                    expected = [
                        t
                        for t in everything
                        if (wanted_states is None or t.state in wanted_states)
                        and (repo is None or t.repo.casefold() == repo.casefold())
                        and (agent is None or t.agent_id == agent)
                    ]
                    got = store.list_tasks(state=wanted_states, repo=repo, agent_id=agent)
                    assert got == expected, (wanted_states, repo, agent)
        waiting = store.list_tasks(state=TaskState.CREATED)
        assert store.waiting_tasks() == sorted(waiting, key=queue_order)
        live = set(store.list_tasks())
        store.close()
        store = Store.open(tmp_path / "state")
        assert [t.id for t in store.list_tasks()] == [t.id for t in everything]
        assert set(store.list_tasks()) == live
        assert store.waiting_tasks() == sorted(waiting, key=queue_order)
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_a_task_written_from_an_unvalidated_copy_reads_back_as_a_reopen_would(
    store: Store,
) -> None:
    """model_copy skips validation; the store keeps the object a reopen would read, not it."""
    task = make_task(1).model_copy(update={"state": "running"})
    store.put_task(task)
    assert store.get_task(task.id).state is TaskState.RUNNING
    assert store.list_tasks(state=TaskState.RUNNING) == [store.get_task(task.id)]
