"""The journal of the live state: every change to ``state.json``'s tables, appended and fsync'd.

Used only by :class:`reconciler.store.storage.DurableJSONStorage`. A durable write of the live
state appends one record holding the documents it changed (whole documents, or a deletion) to
``state.journal`` and ``fdatasync``s it: its cost is the size of the change, not of the
database. The snapshot ``state.json`` is brought up to date by *compaction*
(:class:`~reconciler.store.storage.DurableJSONStorage` runs it in the background):

1. under the store's lock: copy the tables (a shallow copy: documents are never changed in
   place), rename ``state.journal`` to ``state.journal.compacting`` and start a new, empty
   ``state.journal``;
2. without the lock: write the copy as the new ``state.json`` with the atomic write
   (temp file, ``fsync``, ``os.replace``, ``fsync`` of the directory), then delete
   ``state.journal.compacting``.

Opening replays ``state.journal.compacting`` and then ``state.journal`` onto ``state.json``.
Each record sets documents to absolute values, so replaying a record the snapshot already holds
changes nothing: a kill at any step of a compaction loses nothing acknowledged.

A record is one line: the CRC-32 of its JSON text in eight hex digits, a space, the JSON array
of changes ``[[table, id, document or null], ...]``, a newline. A last line that is torn (no
newline, or a checksum that does not match) is a write that was never acknowledged: it is
ignored. A bad line followed by good ones is damage, not a torn write, and refuses to open.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.errors import StoreError

JOURNAL_FILE = "state.journal"
COMPACTING_FILE = "state.journal.compacting"

Change = tuple[str, str, dict[str, Any] | None]
"""One changed document: table name, document id, the whole new document (None: deleted)."""


def encode_record(changes: Iterable[Change]) -> bytes:
    """One journal record: checksum, space, JSON array of the changes, newline."""
    text = json.dumps(
        [list(change) for change in changes],
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    return b"%08x %s\n" % (zlib.crc32(text), text)


def read_records(path: Path) -> list[list[Change]]:
    """Every whole record of the journal at ``path`` (none if it does not exist), in order.

    A torn last record is left out; a damaged record before the last raises
    :class:`StoreError`.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read the state journal {path}: {exc}") from exc
    records: list[list[Change]] = []
    lines = raw.split(b"\n")
    # After the last newline: empty, or a record whose write never completed.
    whole, _tail = lines[:-1], lines[-1]
    for number, line in enumerate(whole, start=1):
        record = _decode(line)
        if record is None:
            if number == len(whole):
                break  # a torn last record: never acknowledged
            raise StoreError(
                f"the state journal {path} has a damaged record at line {number} of "
                f"{len(whole)}; move the store aside (agent-fleet rebuilds task state from "
                "Forgejo on an empty store)"
            )
        records.append(record)
    return records


def _decode(line: bytes) -> list[Change] | None:
    checksum, _, text = line.partition(b" ")
    try:
        if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(text):
            return None
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, list):
        return None
    changes: list[Change] = []
    for item in data:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or not (item[2] is None or isinstance(item[2], dict))
        ):
            return None
        changes.append((item[0], item[1], item[2]))
    return changes


def apply_changes(tables: dict[str, dict[str, Any]], changes: Iterable[Change]) -> None:
    """Apply changes to TinyDB's tables in place."""
    for table_name, doc_id, doc in changes:
        if doc is None:
            table = tables.get(table_name)
            if table is not None:
                table.pop(doc_id, None)
        else:
            tables.setdefault(table_name, {})[doc_id] = doc


def replay(directory: Path, tables: dict[str, dict[str, Any]]) -> int:
    """Apply the journals in ``directory`` (the one being compacted first) onto ``tables``;
    return how many records were applied."""
    applied = 0
    for name in (COMPACTING_FILE, JOURNAL_FILE):
        for record in read_records(directory / name):
            apply_changes(tables, record)
            applied += 1
    return applied


class Journal:
    """The open ``state.journal``: fsync'd appends, rotation for compaction.

    Not thread-safe by itself: the storage calls it under the store's lock.
    """

    def __init__(self, directory: Path, *, directory_fd: int) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_FILE
        self._directory_fd = directory_fd
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size
        # Set when a failed append could not be cut back: the file may hold a record memory does
        # not, so nothing more may be appended after it.
        self.broken = False

    def _open(self) -> int:
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the state journal {self.path}: {exc}") from exc
        if not existed:
            _fsync_directory(self._directory_fd, self.directory)
        return fd

    def append(self, changes: Iterable[Change]) -> None:
        """Append one record and ``fdatasync`` it; durable when this returns. A failure cuts
        the file back to where it was, so no later record lands after half a record."""
        data = encode_record(changes)
        start = self.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fdatasync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError as undo_error:
                self.broken = True
                raise StoreError(
                    f"cannot write the state journal {self.path} ({exc}) nor cut it back "
                    f"({undo_error}); restart agent-fleet"
                ) from exc
            # Not synced: if the cut never reaches the disk, a crash leaves a whole record that
            # was never acknowledged, which replays like a write whose answer was lost.
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
            raise StoreError(f"cannot write the state journal {self.path}: {exc}") from exc
        self.size = start + len(data)

    def rotate(self) -> None:
        """Move the journal aside as ``state.journal.compacting`` (appending to one a failed
        compaction left) and start an empty one."""
        compacting = self.directory / COMPACTING_FILE
        try:
            if compacting.exists():
                with open(compacting, "ab") as target:
                    target.write(self.path.read_bytes())
                    target.flush()
                    os.fsync(target.fileno())
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
            else:
                os.rename(self.path, compacting)
                os.close(self._fd)
                self._fd = self._open()
                _fsync_directory(self._directory_fd, self.directory)
        except OSError as exc:
            raise StoreError(f"cannot rotate the state journal {self.path}: {exc}") from exc
        self.size = 0

    def reset(self) -> None:
        """Empty both journals: the snapshot just written holds everything in them."""
        try:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            (self.directory / COMPACTING_FILE).unlink(missing_ok=True)
            _fsync_directory(self._directory_fd, self.directory)
        except OSError as exc:
            raise StoreError(f"cannot empty the state journal {self.path}: {exc}") from exc
        self.size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fsync_directory(directory_fd: int, path: Path) -> None:
    try:
        os.fsync(directory_fd)
    except OSError as exc:
        raise StoreError(f"cannot fsync the state store directory {path}: {exc}") from exc


__all__ = [
    "COMPACTING_FILE",
    "JOURNAL_FILE",
    "Change",
    "Journal",
    "apply_changes",
    "encode_record",
    "read_records",
    "replay",
]
