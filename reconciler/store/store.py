"""The durable local state store: agents, live tasks, the archive, receipts, events, outbox.

The daemon opens one :class:`Store` at start (``Store.open(settings.store.path)``) and hands it
to the controllers, the webhook's agent API and the notifier; the pull worker opens its own for
its outbox. Every read and write goes through the typed methods here — nothing else touches
TinyDB or the files.

What lives where (all in one directory, see docs/state.md):

* ``state.json`` and ``state.journal`` — TinyDB over
  :class:`~reconciler.store.storage.DurableJSONStorage`: agents, live tasks, the outbox, per-key
  backoff and metadata. A write appends the changed documents to the journal; compaction folds
  the journal into the snapshot in the background.
* ``archive.jsonl`` — terminal tasks moved out of the live file by :meth:`Store.archive_terminal`.
* ``receipts.jsonl`` — every receipt ever submitted; receipts are claims, written once.
* ``events.jsonl`` — the task event log.
* ``store.lock`` — held with ``flock`` by the one process that owns the store.

Every method runs under one re-entrant lock, so threads never lose an update; a method that
writes returns only once the write is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.errors import NotFoundError, StaleStateError, StoreError, StoreLockedError
from reconciler.models import (
    TERMINAL_STATES,
    Agent,
    AgentStatus,
    Receipt,
    Task,
    TaskEvent,
    TaskState,
    task_id_for,
)
from reconciler.store.journal import COMPACTING_FILE, JOURNAL_FILE
from reconciler.store.live import LiveAgents, LiveTasks
from reconciler.store.logfile import JsonLinesLog
from reconciler.store.schema import migrate
from reconciler.store.storage import (
    COMPACT_AFTER_BYTES,
    STATE_FILE,
    TMP_SUFFIX,
    KeyedTable,
    StateDatabase,
)
from reconciler.store.tables import (
    _BACKOFF,
    _META,
    _OUTBOX,
    Backoff,
    JsonValue,
    OutboxMessage,
    SmallTables,
    _dump,
    encode_backoff_key,
)

ARCHIVE_FILE = "archive.jsonl"
RECEIPTS_FILE = "receipts.jsonl"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = "store.lock"

_AGENTS = "agents"
_TASKS = "tasks"


_Model = TypeVar("_Model", bound=BaseModel)


class TaskWrite(NamedTuple):
    """One task for :meth:`Store.commit`: written only if the store still holds ``expected``
    (None: no such task), as :meth:`Store.replace_task` does."""

    task: Task
    expected: Task | None


class Store(SmallTables):
    """The one process-wide handle on the local state directory. Open with :meth:`open`."""

    def __init__(
        self, path: str | os.PathLike[str], *, compact_after_bytes: int = COMPACT_AFTER_BYTES
    ) -> None:
        """Prefer :meth:`open`, which says what it does; both open the store."""
        self.path = Path(path).absolute()
        self._compact_after_bytes = compact_after_bytes
        self._lock = threading.RLock()
        # Each resource opened so far, closed in reverse by close() or by a failed open.
        self._closers: list[Callable[[], None]] = []
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        self._closed = False

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, compact_after_bytes: int = COMPACT_AFTER_BYTES
    ) -> Store:
        """Open (creating if needed) the store in directory ``path`` and take ownership of it.

        Raises :class:`StoreLockedError` when another process has it open, and
        :class:`StoreError` when a file cannot be read or was edited into something invalid.
        ``compact_after_bytes`` is the least journal size that starts a compaction.
        """
        return cls(path, compact_after_bytes=compact_after_bytes)

    def compact(self) -> bool:
        """Fold the live state's journal into ``state.json`` now (normally done in the
        background); whether a new snapshot was written."""
        if self._closed:
            raise StoreError(f"the state store at {self.path} is closed")
        return self._db.durable.compact()

    @property
    def compactions(self) -> int:
        """How many compactions this handle has completed."""
        return self._db.durable.compactions

    def _open(self) -> None:
        try:
            created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            if created:
                # Make the new directory's own entry durable, not only the files inside it.
                parent_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(parent_fd)
                finally:
                    os.close(parent_fd)
            directory_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StoreError(
                f"cannot create or open the state store at {self.path}: {exc}"
            ) from exc
        self._closers.append(lambda: os.close(directory_fd))
        self._directory_fd = directory_fd
        lock_fd = _take_lock(self.path)
        # Closing the lock file releases the flock.
        self._closers.append(lambda: os.close(lock_fd))
        self._remove_leftover_temp_files()
        self._db = StateDatabase(
            self.path / STATE_FILE,
            directory_fd=directory_fd,
            lock=self._lock,
            compact_after_bytes=self._compact_after_bytes,
        )
        self._closers.append(self._db.close)
        migrate(self._db, self.path)
        self._check_live_state()
        self._archive = self._open_log(ARCHIVE_FILE, ("id",))
        self._receipts = self._open_log(RECEIPTS_FILE, ("id", "task_id"))
        self._events = self._open_log(EVENTS_FILE, ("task_id",))

    def _open_log(self, name: str, key_fields: tuple[str, ...]) -> JsonLinesLog:
        log = JsonLinesLog(self.path / name, key_fields=key_fields, directory_fd=self._directory_fd)
        self._closers.append(log.close)
        return log

    def _remove_leftover_temp_files(self) -> None:
        # A temp file is a write that never reached os.replace: it was never acknowledged.
        for leftover in self.path.glob(f"*{TMP_SUFFIX}"):
            try:
                leftover.unlink()
            except OSError as exc:
                raise StoreError(f"cannot remove the leftover temp file {leftover}: {exc}") from exc

    def _check_live_state(self) -> None:
        """Validate every live document now, so a hand edit fails at start, not mid-reconcile."""
        models: tuple[tuple[str, type[Agent | Task | OutboxMessage]], ...] = (
            (_AGENTS, Agent),
            (_TASKS, Task),
            (_OUTBOX, OutboxMessage),
        )
        self._live_tasks = LiveTasks()
        self._live_agents = LiveAgents()
        for name, model in models:
            for doc_id, doc in self._table(name).docs():
                loaded = self._load(model, doc, where=f"{name}/{doc_id}")
                if loaded.id != doc_id:
                    raise StoreError(
                        f"{self.path / STATE_FILE}: {name}/{doc_id} holds the record of {loaded.id!r}"
                    )
                # Parsed once here; reads are served from these objects from now on.
                if isinstance(loaded, Task):
                    self._live_tasks.put(loaded)
                elif isinstance(loaded, Agent):
                    self._live_agents.put(loaded)
        for doc_id, doc in self._table(_BACKOFF).docs():
            self._load_backoff(doc, where=f"{_BACKOFF}/{doc_id}")
        for doc_id, doc in self._table(_META).docs():
            if "value" not in doc:
                raise StoreError(f"{self.path / STATE_FILE}: {_META}/{doc_id} has no 'value'")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (readiness reports it)."""
        return self._closed

    def close(self) -> None:
        """Release the store (and its lock). Safe to call twice."""
        with self._lock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if getattr(self, "_closed", True):
                raise StoreError(f"the state store at {self.path} is closed")
            yield

    # --- agents -----------------------------------------------------------------------------

    def find_agent(self, agent_id: str) -> Agent | None:
        with self._locked():
            return self._live_agents.get(agent_id)

    def get_agent(self, agent_id: str) -> Agent:
        """The agent, or :class:`NotFoundError`."""
        agent = self.find_agent(agent_id)
        if agent is None:
            raise NotFoundError(f"no agent {agent_id!r} is registered")
        return agent

    def put_agent(self, agent: Agent) -> None:
        doc = _dump(agent)
        # Kept as a reopen would read it (a model_copy can hold values validation would change).
        stored = self._load(Agent, doc, where=f"agents/{agent.id}")
        with self._locked():
            self._table(_AGENTS).put_doc(agent.id, doc)
            self._live_agents.put(stored)

    def list_agents(self, *, status: AgentStatus | None = None) -> list[Agent]:
        with self._locked():
            return self._live_agents.select(status=status)

    def delete_agent(self, agent_id: str) -> bool:
        """Forget an agent; return whether it was there."""
        with self._locked():
            removed = self._table(_AGENTS).delete_docs([agent_id]) == 1
            self._live_agents.remove(agent_id)
            return removed

    def update_agent(self, agent_id: str, change: Callable[[Agent], Agent]) -> Agent:
        """Read, change and write one agent atomically with respect to every other caller.

        ``change`` runs under the store's lock: keep it a pure function of the agent.
        """
        with self._locked():
            updated = change(self.get_agent(agent_id))
            if updated.id != agent_id:
                raise ValueError(
                    f"update_agent({agent_id!r}) may not change the id to {updated.id!r}"
                )
            self.put_agent(updated)
            return updated

    # --- tasks ------------------------------------------------------------------------------

    def find_task(self, task_id: str) -> Task | None:
        """The task, live or archived, or None."""
        with self._locked():
            live = self._live_tasks.get(task_id)
            if live is not None:
                # A live record is always the newest: the archive only receives copies of live
                # records, and a reopened task is written live after its archived copy.
                return live
            archived = self._archive.latest_for(task_id)
            if archived is None:
                return None
            return self._load(Task, archived, where=f"{ARCHIVE_FILE} record of {task_id}")

    def get_task(self, task_id: str) -> Task:
        """The task, live or archived, or :class:`NotFoundError`."""
        task = self.find_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r} in the local store")
        return task

    def task_for_issue(self, repo: str, number: int) -> Task | None:
        """The task born from issue ``number`` of ``repo`` (the id is derived from both)."""
        return self.find_task(task_id_for(repo, number))

    def put_task(self, task: Task) -> None:
        """Write a task to the live state (a terminal task is archived later, see
        :meth:`archive_terminal`)."""
        doc = _dump(task)
        stored = self._load(Task, doc, where=f"tasks/{task.id}")
        with self._locked():
            self._table(_TASKS).put_doc(task.id, doc)
            self._live_tasks.put(stored)

    def list_tasks(
        self,
        *,
        state: TaskState | Collection[TaskState] | None = None,
        repo: str | None = None,
        agent_id: str | None = None,
    ) -> list[Task]:
        """Live tasks (not archived ones), optionally only in ``state``, of ``repo`` and
        assigned to ``agent_id``, in the order first stored. Served from the parsed objects
        and their indexes: the cost is what is returned, not the size of the store."""
        states = _state_filter(state)
        with self._locked():
            return self._live_tasks.select(states=states, repo=repo, agent_id=agent_id)

    def waiting_tasks(self) -> list[Task]:
        """The live tasks in state ``created``, in queue order: high priority first, then the
        oldest, then by id (``reconciler.fleet.placement.queue_order``). Kept sorted as tasks
        change, so this costs what it returns."""
        with self._locked():
            return self._live_tasks.waiting_in_queue_order()

    def has_held_tasks(self) -> bool:
        """Whether any live task is held (``Task.is_held``): one a blocker's close may release.
        Kept as tasks change, so this costs nothing however many tasks there are."""
        with self._locked():
            return self._live_tasks.held_count() > 0

    def update_task(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        """Read, change and write one task (live or archived) atomically.

        ``change`` runs under the store's lock: keep it a pure function of the task.
        """
        with self._locked():
            updated = change(self.get_task(task_id))
            if updated.id != task_id:
                raise ValueError(
                    f"update_task({task_id!r}) may not change the id to {updated.id!r}"
                )
            self.put_task(updated)
            return updated

    def replace_task(self, task: Task, *, expected: Task | None) -> None:
        """Write ``task`` only if the stored one is still ``expected`` (None: absent).

        The optimistic-concurrency write of a reconcile: it planned from ``expected``; if an
        agent's update or another writer changed the task meanwhile, nothing is written and
        :class:`StaleStateError` makes the loop reconcile again from the new state.
        """
        with self._locked():
            current = self.find_task(task.id)
            if current != expected:
                raise StaleStateError(
                    f"task {task.id} changed while it was being reconciled "
                    f"({expected.state if expected else 'absent'} → "
                    f"{current.state if current else 'absent'}); reconciling again"
                )
            self.put_task(task)

    def commit(self, writes: Sequence[TaskWrite], *, events: Sequence[TaskEvent] = ()) -> None:
        """Write several tasks and the events that explain them together: one fsync'd append
        of ``events``, then one durable write of the live state holding every task.

        All or nothing. If any stored task is no longer its write's ``expected``,
        :class:`StaleStateError` names them and nothing is written. If the state write fails,
        the events just appended are cut off the log again, so the store is as it was. Events
        first, as in :meth:`record`: a crash between the two leaves events whose tasks did not
        land (never acknowledged), never a task no event explains.

        The dequeue's group commit (``reconciler.fleet.queue``) calls this once for every batch of
        assignments, so concurrent dequeues share one write.
        """
        ids = [write.task.id for write in writes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"commit writes a task more than once: {sorted(ids)}")
        stray = sorted({event.task_id for event in events} - set(ids))
        if stray:
            raise ValueError(f"commit has events of tasks it does not write: {stray}")
        if not writes:
            return
        with self._locked():
            changed = [
                (write, current)
                for write in writes
                if (current := self.find_task(write.task.id)) != write.expected
            ]
            if changed:
                raise StaleStateError(
                    "; ".join(
                        f"task {write.task.id} changed since it was read "
                        f"({write.expected.state if write.expected else 'absent'} → "
                        f"{current.state if current else 'absent'})"
                        for write, current in changed
                    )
                    + "; nothing was written"
                )
            docs: dict[str, dict[str, Any]] = {w.task.id: _dump(w.task) for w in writes}
            stored = [
                self._load(Task, doc, where=f"tasks/{task_id}") for task_id, doc in docs.items()
            ]
            start = self._events.append(_dump(event) for event in events)
            try:
                self._table(_TASKS).put_docs(docs)
            except BaseException:
                self._events.cut_back(start)
                raise
            for task in stored:
                self._live_tasks.put(task)

    def record(self, task: Task, event: TaskEvent) -> None:
        """Append ``event`` to the log, then save ``task``.

        Event first: a crash in between leaves an event whose task write did not land, which
        the next reconcile repeats (the log may show the move twice). The other order could
        leave a task in a state no event explains.
        """
        if event.task_id != task.id:
            raise ValueError(f"event for task {event.task_id} recorded with task {task.id}")
        with self._locked():
            self.append_event(event)
            self.put_task(task)

    # --- the archive ------------------------------------------------------------------------

    def archive_terminal(self, older_than: datetime) -> int:
        """Move live tasks in a terminal state last updated before ``older_than`` to the archive.

        Returns how many moved. The loop calls this periodically with
        ``now - settings.store.archive_after``. Append to the archive first, then delete from
        the live file: a crash in between leaves the same record in both, and the live copy
        wins until the next call finishes the move without appending it twice.
        """
        if older_than.tzinfo is None:
            raise ValueError("older_than must carry a time zone")
        with self._locked():
            tasks = self._table(_TASKS)
            moving: list[tuple[str, Mapping[str, Any]]] = []
            for task in self._live_tasks.select(states=TERMINAL_STATES):
                if task.updated_at < older_than:
                    doc = tasks.get_doc(task.id)
                    assert doc is not None  # the parsed objects mirror the table
                    moving.append((task.id, doc))
            if not moving:
                return 0
            # A record already there unchanged is a move a crash interrupted.
            self._archive.append(
                doc for doc_id, doc in moving if self._archive.latest_for(doc_id) != doc
            )
            tasks.delete_docs(doc_id for doc_id, _ in moving)
            for doc_id, _ in moving:
                self._live_tasks.remove(doc_id)
            return len(moving)

    def archived_tasks(self, *, repo: str | None = None) -> list[Task]:
        """Every archived task that is not live again, in the order first archived."""
        wanted_repo = repo.casefold() if repo is not None else None
        with self._locked():
            found: list[Task] = []
            for task_id in self._archive.distinct_keys():
                if self._live_tasks.get(task_id) is not None:
                    continue
                record = self._archive.latest_for(task_id)
                assert record is not None
                if (
                    wanted_repo is not None
                    and str(record.get("repo", "")).casefold() != wanted_repo
                ):
                    continue
                found.append(self._load(Task, record, where=f"{ARCHIVE_FILE} record of {task_id}"))
            return found

    # --- the event log ----------------------------------------------------------------------

    def append_event(self, event: TaskEvent) -> None:
        """Append one event to the log; on disk when this returns."""
        with self._locked():
            self._events.append([_dump(event)])

    def events_for(self, task_id: str) -> list[TaskEvent]:
        """A task's events, oldest first."""
        with self._locked():
            return [
                self._load(TaskEvent, record, where=f"{EVENTS_FILE} event of {task_id}")
                for record in self._events.records_for(task_id)
            ]

    def events_after(
        self, cursor: int, *, limit: int = 200
    ) -> tuple[list[tuple[int, TaskEvent]], int]:
        """Events of every task in the order logged, from ``cursor`` (0: the first; else what
        the previous call returned), each with its position in the log (stable, unique); and
        the cursor for the next call. The Matrix notifier follows the log with this."""
        with self._locked():
            records, after = self._events.read_from(cursor, limit=limit)
            return [
                (position, self._load(TaskEvent, record, where=f"{EVENTS_FILE} at byte {position}"))
                for position, record in records
            ], after

    # --- receipts ---------------------------------------------------------------------------

    def put_receipt(self, receipt: Receipt) -> None:
        """Keep a receipt for good. Submitting the same receipt again writes nothing; a
        changed receipt under the same id supersedes the old one (both stay in the file)."""
        record = _dump(receipt)
        with self._locked():
            if self._receipts.latest_for(receipt.id) != record:
                self._receipts.append([record])

    def find_receipt(self, receipt_id: str) -> Receipt | None:
        with self._locked():
            record = self._receipts.latest_for(receipt_id)
            if record is None:
                return None
            return self._load(Receipt, record, where=f"{RECEIPTS_FILE} record of {receipt_id}")

    def get_receipt(self, receipt_id: str) -> Receipt:
        """The receipt, or :class:`NotFoundError`."""
        receipt = self.find_receipt(receipt_id)
        if receipt is None:
            raise NotFoundError(f"no receipt {receipt_id!r} in the local store")
        return receipt

    def receipts_for(self, task_id: str) -> list[Receipt]:
        """A task's receipts (latest version of each), in the order first submitted."""
        with self._locked():
            latest: dict[str, dict[str, Any]] = {}
            for record in self._receipts.records_for(task_id, field="task_id"):
                latest[record["id"]] = record
            return [
                self._load(Receipt, record, where=f"{RECEIPTS_FILE} record of {receipt_id}")
                for receipt_id, record in latest.items()
            ]

    # --- internals --------------------------------------------------------------------------

    def _table(self, name: str) -> KeyedTable:
        return self._db.keyed(name)

    def _load(self, model: type[_Model], doc: Mapping[str, Any], *, where: str) -> _Model:
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            raise StoreError(
                f"the state store at {self.path} holds an invalid record ({where}): {exc}"
            ) from exc


def _state_filter(state: TaskState | Collection[TaskState] | None) -> set[TaskState] | None:
    if state is None:
        return None
    if isinstance(state, TaskState):
        return {state}
    return {TaskState(s) for s in state}


def _take_lock(directory: Path) -> int:
    """Hold ``flock`` on the lock file for the life of the store; refuse if another has it."""
    lock_path = directory / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreLockedError(
                f"another agent-fleet process (pid {holder}) is using the state store at "
                f"{directory}"
            ) from None
        raise StoreError(f"cannot lock {lock_path}: {exc}") from exc
    # Who holds it, for the message above; informational, so not fsync'd.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


__all__ = [
    "ARCHIVE_FILE",
    "COMPACTING_FILE",
    "EVENTS_FILE",
    "JOURNAL_FILE",
    "LOCK_FILE",
    "RECEIPTS_FILE",
    "STATE_FILE",
    "Backoff",
    "JsonValue",
    "OutboxMessage",
    "Store",
    "TaskWrite",
    "encode_backoff_key",
]
