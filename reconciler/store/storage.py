"""The live state file: a durable TinyDB storage and a table keyed by the domain's own ids.

Used only by :class:`reconciler.store.store.Store`. TinyDB's stock ``JSONStorage`` rewrites its
file in place, so a kill in the middle of a write leaves a file that no longer opens, and its
``CachingMiddleware`` loses acknowledged writes; both were measured (see MEASUREMENTS.md).
:class:`DurableJSONStorage` instead keeps the data in memory for reads and writes every change
through to disk as a new file: temp file, ``fsync``, ``os.replace``, ``fsync`` of the directory.
When :meth:`DurableJSONStorage.write` returns, the data is on disk.

The storage does no locking of its own: the store serialises every call with one lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from reconciler.errors import StoreError

Tables = dict[str, dict[str, Any]]
"""TinyDB's whole-database shape: table name → document id → document."""

TMP_SUFFIX = ".tmp"


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


class DurableJSONStorage(Storage):
    """In-memory reads, write-through durable writes of the whole database."""

    def __init__(self, path: Path, *, directory_fd: int) -> None:
        self._path = path
        self._directory_fd = directory_fd
        self._data: Tables = load_tables(path)
        self._failure: str | None = None

    def read(self) -> Tables:
        if self._failure is not None:
            raise StoreError(self._failure)
        # TinyDB reads and then updates what it read; handing out the live dict keeps reads
        # free of copies. A failed write therefore restores the dict from disk (see write).
        return self._data

    def write(self, data: Tables) -> None:
        try:
            encoded = json.dumps(
                data, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            write_file_atomically(self._path, encoded, directory_fd=self._directory_fd)
        except BaseException as exc:
            # TinyDB has already changed the in-memory tables; put them back as the disk has
            # them, so memory never claims what the disk does not hold.
            try:
                self._data = load_tables(self._path)
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

    def close(self) -> None:
        pass


class KeyedTable(Table):
    """A TinyDB table whose document ids are the domain's own string ids (task id, agent id).

    TinyDB numbers documents itself by default; keying by our ids makes every lookup a dict
    access and every replace one write, with no query scan.
    """

    # TinyDB converts every stored key through this class; our ids are strings.
    document_id_class = str  # type: ignore[assignment]

    def get_doc(self, doc_id: str) -> Mapping[str, Any] | None:
        return self._read_table().get(doc_id)

    def docs(self) -> list[tuple[str, Mapping[str, Any]]]:
        """A snapshot of every (id, document); the caller holds the store's lock."""
        return list(self._read_table().items())

    def put_doc(self, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Insert or replace one document whole (TinyDB's ``update`` would merge fields)."""

        def replace(table: dict[Any, Mapping[str, Any]]) -> None:
            table[doc_id] = dict(doc)

        self._update_table(replace)

    def put_docs(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        """Insert or replace several documents whole with one write of the file."""

        def replace(table: dict[Any, Mapping[str, Any]]) -> None:
            for doc_id, doc in docs.items():
                table[doc_id] = dict(doc)

        self._update_table(replace)

    def delete_docs(self, doc_ids: Iterable[str]) -> int:
        """Remove the documents that exist among ``doc_ids`` in one write; return how many."""
        wanted = set(doc_ids)
        removed = 0

        def remove(table: dict[Any, Mapping[str, Any]]) -> None:
            nonlocal removed
            for doc_id in wanted & set(table):
                del table[doc_id]
                removed += 1

        self._update_table(remove)
        return removed


class StateDatabase(TinyDB):
    """TinyDB over :class:`DurableJSONStorage` with :class:`KeyedTable` tables."""

    table_class = KeyedTable

    def __init__(self, path: Path, *, directory_fd: int) -> None:
        factory: Callable[[], Storage] = lambda: DurableJSONStorage(path, directory_fd=directory_fd)
        super().__init__(storage=factory)

    def keyed(self, name: str) -> KeyedTable:
        table = self.table(name)
        assert isinstance(table, KeyedTable)
        return table
