"""The live state: a durable TinyDB storage and a table keyed by the domain's own ids.

Used only by :class:`reconciler.store.store.Store`. TinyDB's stock ``JSONStorage`` rewrites its
file in place, so a kill in the middle of a write leaves a file that no longer opens, and its
``CachingMiddleware`` loses acknowledged writes; both were measured (see MEASUREMENTS.md).
:class:`DurableJSONStorage` keeps the data in memory for reads and makes each change durable as
one fsync'd record of the changed documents in ``state.journal``, so a write costs the size of
the change; the snapshot ``state.json`` is rewritten (temp file, ``fsync``, ``os.replace``,
``fsync`` of the directory) only by compaction, in the background (:mod:`reconciler.store.journal`).
When :meth:`DurableJSONStorage.apply` returns, the change is on disk.

The storage relies on the store's one lock for its writes; compaction takes it only to rotate.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from reconciler.errors import StoreError
from reconciler.store import journal

log = structlog.get_logger(__name__)

Tables = dict[str, dict[str, Any]]
"""TinyDB's whole-database shape: table name → document id → document."""

TMP_SUFFIX = ".tmp"
STATE_FILE = "state.json"

COMPACT_AFTER_BYTES = 1 << 20
"""Compact once the journal passes this size, or the snapshot's size if larger: the
snapshot's rewrite then costs at most about as much as the journal records it folds in."""


def fsync_directory(directory_fd: int, *, path: Path) -> None:
    """Make a rename or a file creation in the directory itself durable."""
    try:
        os.fsync(directory_fd)
    except OSError as exc:
        raise StoreError(f"cannot fsync the state store directory {path}: {exc}") from exc


def write_file_atomically(path: Path, data: bytes, *, directory_fd: int) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    The temporary file has a fixed name: only one process owns the store (it holds the lock),
    and a leftover from a crash is removed when the store opens.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(directory_fd, path=path.parent)


def load_tables(path: Path) -> Tables:
    """Read the live state file; a missing file is an empty store, anything unreadable an error.

    The file is only ever replaced whole, so a file that does not parse was edited by hand (or
    damaged by the disk): refuse to start rather than silently start empty over it.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StoreError(f"cannot read the state store file {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"the state store file {path} is not valid JSON ({exc}); fix it or move it aside "
            "(agent-fleet rebuilds task state from Forgejo on an empty store)"
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(table, dict) and all(isinstance(doc, dict) for doc in table.values())
        for table in data.values()
    ):
        raise StoreError(
            f"the state store file {path} does not hold TinyDB tables "
            "(an object of tables, each an object of documents)"
        )
    return data


def load_state(directory: Path) -> Tables:
    """The live state as the disk holds it: ``state.json`` with the journals replayed onto it.
    Reads only; tests and tools that look at the live state while a store is open use this."""
    tables = load_tables(directory / STATE_FILE)
    journal.replay(directory, tables)
    return tables


class DurableJSONStorage(Storage):
    """In-memory reads; each change journaled and fsync'd; the snapshot compacted in the
    background (see :mod:`reconciler.store.journal`)."""

    def __init__(
        self,
        path: Path,
        *,
        directory_fd: int,
        lock: threading.RLock | None = None,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
    ) -> None:
        self._path = path
        self._directory = path.parent
        self._directory_fd = directory_fd
        # The store's lock: appends run under it already; compaction takes it for its rotation.
        self._lock = lock if lock is not None else threading.RLock()
        self._compact_after = compact_after_bytes
        self._failure: str | None = None
        self._data: Tables = load_state(self._directory)
        # Writers of state.json (compaction, a whole-database write) take this, in that order
        # after the store's lock when they need both.
        self._snapshot_lock = threading.Lock()
        self._epoch = 0
        self._journal = journal.Journal(self._directory, directory_fd=directory_fd)
        if self._journal.size or (self._directory / journal.COMPACTING_FILE).exists():
            # Fold what a previous run journaled into the snapshot now, so every run starts
            # from one file and an empty journal.
            self._write_snapshot(self._data)
            self._journal.reset()
        self._snapshot_size = self._path.stat().st_size if self._path.exists() else 0
        self._wake = threading.Event()
        self._stopping = False
        self._compactor: threading.Thread | None = None
        self.compactions = 0

    def read(self) -> Tables:
        if self._failure is not None:
            raise StoreError(self._failure)
        # TinyDB reads what it then hands to its own updaters; KeyedTable never lets them change
        # the live dict in place (see KeyedTable._update_table), so reads need no copy.
        return self._data

    def apply(self, changes: list[journal.Change]) -> None:
        """Make ``changes`` durable (one journal record, one ``fdatasync``), then visible.

        The caller holds the store's lock. A failed append raises :class:`StoreError` and
        leaves memory as the disk has it.
        """
        if self._failure is not None:
            raise StoreError(self._failure)
        if not changes:
            return
        try:
            self._journal.append(changes)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"cannot write the state journal: {exc}") from exc
        except StoreError as exc:
            if self._journal.broken:
                self._failure = str(exc)
            raise
        journal.apply_changes(self._data, changes)
        if self._journal.size > max(self._compact_after, self._snapshot_size):
            self._start_compactor()
            self._wake.set()

    def write(self, data: Tables) -> None:
        """A whole-database write (TinyDB's ``drop_table`` and the like): a new snapshot and an
        empty journal. The changes KeyedTable makes never come here."""
        if self._failure is not None:
            raise StoreError(self._failure)
        try:
            with self._snapshot_lock:
                self._write_snapshot(data)
                self._journal.reset()
                self._epoch += 1
        except BaseException as exc:
            try:
                self._data = load_state(self._directory)
            except StoreError as reload_error:
                self._failure = (
                    f"the state store stopped after a failed write ({exc}) and could not re-read "
                    f"{self._path} ({reload_error}); restart agent-fleet"
                )
                raise StoreError(self._failure) from exc
            if isinstance(exc, (OSError, TypeError, ValueError)):
                raise StoreError(f"cannot write the state store file {self._path}: {exc}") from exc
            raise
        self._data = data

    def compact(self) -> bool:
        """Fold the journal into ``state.json`` now; whether a new snapshot was written.

        Takes the store's lock only to copy the tables and rotate the journal; the snapshot is
        serialised and written without it. The background compactor calls this; tests too.
        """
        # Not a plain ``with``: close() may hold the store's lock while it waits for this
        # thread, so give up when the store is closing.
        while not self._lock.acquire(timeout=0.05):
            if self._stopping:
                return False
        try:
            if self._failure is not None or self._journal.size == 0 or self._stopping:
                return False
            copy = {name: dict(table) for name, table in self._data.items()}
            self._journal.rotate()
            epoch = self._epoch
        finally:
            self._lock.release()
        with self._snapshot_lock:
            if epoch != self._epoch:
                return False  # a whole-database write since holds everything the copy does
            self._write_snapshot(copy)
            (self._directory / journal.COMPACTING_FILE).unlink(missing_ok=True)
            fsync_directory(self._directory_fd, path=self._directory)
            self._snapshot_size = self._path.stat().st_size
            self.compactions += 1
        log.info("store.compacted", snapshot_bytes=self._snapshot_size)
        return True

    def _write_snapshot(self, data: Tables) -> None:
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        write_file_atomically(self._path, encoded.encode(), directory_fd=self._directory_fd)

    def _start_compactor(self) -> None:
        if self._compactor is None and not self._stopping:
            self._compactor = threading.Thread(
                target=self._compact_forever, name="store-compactor", daemon=True
            )
            self._compactor.start()

    def _compact_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.compact()
            except Exception as exc:  # noqa: BLE001  # the journal still holds everything: retry next time
                log.error("store.compaction_failed", error=str(exc))

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        compactor = self._compactor
        if compactor is not None and compactor is not threading.current_thread():
            # The caller may hold the store's lock: the compactor takes it only briefly, and
            # it is re-entrant for this thread only, so wait without it where possible.
            compactor.join()
        if self._failure is None and (
            self._journal.size or (self._directory / journal.COMPACTING_FILE).exists()
        ):
            # A clean close leaves one file: the snapshot holding everything.
            try:
                with self._snapshot_lock:
                    self._write_snapshot(self._data)
                    self._journal.reset()
            except (OSError, StoreError) as exc:  # the journal still holds it: replayed at open
                log.error("store.compaction_failed", error=str(exc), at="close")
        self._journal.close()


class KeyedTable(Table):
    """A TinyDB table whose document ids are the domain's own string ids (task id, agent id).

    TinyDB numbers documents itself by default; keying by our ids makes every lookup a dict
    access and every replace one journal record, with no query scan.
    """

    # TinyDB converts every stored key through this class; our ids are strings.
    document_id_class = str  # type: ignore[assignment]

    def get_doc(self, doc_id: str) -> Mapping[str, Any] | None:
        return self._read_table().get(doc_id)

    def docs(self) -> list[tuple[str, Mapping[str, Any]]]:
        """A snapshot of every (id, document); the caller holds the store's lock."""
        return list(self._read_table().items())

    @property
    def _durable(self) -> DurableJSONStorage:
        storage = self._storage
        assert isinstance(storage, DurableJSONStorage)
        return storage

    def put_doc(self, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Insert or replace one document whole (TinyDB's ``update`` would merge fields)."""
        self.put_docs({doc_id: doc})

    def put_docs(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        """Insert or replace several documents whole with one durable write."""
        self._durable.apply([(self.name, doc_id, dict(doc)) for doc_id, doc in docs.items()])
        self.clear_cache()

    def delete_docs(self, doc_ids: Iterable[str]) -> int:
        """Remove the documents that exist among ``doc_ids`` in one write; return how many."""
        table = self._read_table()
        present = [doc_id for doc_id in dict.fromkeys(doc_ids) if doc_id in table]
        self._durable.apply([(self.name, doc_id, None) for doc_id in present])
        self.clear_cache()
        return len(present)

    def _update_table(self, updater: Callable[[dict[Any, Mapping[str, Any]]], None]) -> None:
        """TinyDB's own writes (insert, update, remove, truncate) as journaled changes.

        The updater gets copies of the documents (TinyDB's ``update`` changes them in place,
        and the live ones may be being serialised by a compaction); what differs afterwards is
        journaled like any other change. Costs a pass over the table: the store's own writes
        use the keyed methods above instead.
        """
        before = self._read_table()
        after: dict[Any, Mapping[str, Any]] = {doc_id: dict(doc) for doc_id, doc in before.items()}
        updater(after)
        changes: list[journal.Change] = [
            (self.name, str(doc_id), dict(doc))
            for doc_id, doc in after.items()
            if before.get(str(doc_id)) != doc
        ]
        kept = {str(doc_id) for doc_id in after}
        changes.extend((self.name, doc_id, None) for doc_id in before if doc_id not in kept)
        self._durable.apply(changes)
        self.clear_cache()


class StateDatabase(TinyDB):
    """TinyDB over :class:`DurableJSONStorage` with :class:`KeyedTable` tables."""

    table_class = KeyedTable

    def __init__(
        self,
        path: Path,
        *,
        directory_fd: int,
        lock: threading.RLock,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
    ) -> None:
        factory: Callable[[], Storage] = lambda: DurableJSONStorage(
            path, directory_fd=directory_fd, lock=lock, compact_after_bytes=compact_after_bytes
        )
        super().__init__(storage=factory)

    @property
    def durable(self) -> DurableJSONStorage:
        storage = self.storage
        assert isinstance(storage, DurableJSONStorage)
        return storage

    def keyed(self, name: str) -> KeyedTable:
        table = self.table(name)
        assert isinstance(table, KeyedTable)
        return table
