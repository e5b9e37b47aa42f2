"""Append-only JSON-lines files: the task event log, the task archive and the receipts.

Used only by :class:`reconciler.store.store.Store`. Each record is one line, written with one
``write`` on a descriptor opened ``O_APPEND`` and then ``fsync``'d: when :meth:`append`
returns, the record is on disk. An append costs one small write and one flush, whatever the
size of the file — where a TinyDB table would rewrite everything (≈0.65 s per event at 100k
events, MEASUREMENTS.md).

Every record is written with its key fields first (``task_id`` for events, ``id`` for archived
tasks, ``id`` and ``task_id`` for receipts), so the index from a key to its line offsets is built
by reading the start of each line, without parsing the JSON. The index is built lazily, the
first time a record is looked up, so opening the store never reads a whole log.

A crash (power loss; a kill cannot split one ``write``) can leave the last line torn. At open a
last line without its newline is completed when it holds a whole JSON object (the write landed,
only its acknowledgement did not) and cut off otherwise; the cut record was never acknowledged.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from reconciler.errors import StoreError
from reconciler.store.storage import fsync_directory

log = structlog.get_logger(__name__)

_SCAN_CHUNK = 1 << 20
_TAIL_CHUNK = 1 << 16


def encode_line(record: Mapping[str, Any], *, key_fields: tuple[str, ...]) -> bytes:
    """One record as one line, its key fields first (the index reads keys from line starts)."""
    ordered = {**{field: record[field] for field in key_fields}, **record}
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode() + b"\n"


class JsonLinesLog:
    """One append-only, fsync'd JSON-lines file with a lazy index from each key to its lines.

    ``key_fields`` are string fields every record has; :meth:`records_for` finds records by any
    of them. Not thread-safe by itself: the store calls it under its lock.
    """

    def __init__(self, path: Path, *, key_fields: tuple[str, ...], directory_fd: int) -> None:
        if not key_fields:
            raise ValueError("a log needs at least one key field")
        self.path = path
        self.key_fields = key_fields
        self._openers = tuple(
            (b'{"' if i == 0 else b',"') + field.encode() + b'":"'
            for i, field in enumerate(key_fields)
        )
        existed = path.exists()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            if not existed:
                fsync_directory(directory_fd, path=path.parent)
            self._size = self._repair_tail()
        except BaseException:
            os.close(self._fd)
            raise
        # One index per key field: key → flat array of (offset, length) pairs in file order.
        # None until a lookup needs it.
        self._indexes: tuple[dict[str, array[int]], ...] | None = None
        self._failure: str | None = None

    # --- opening ------------------------------------------------------------------------

    def _repair_tail(self) -> int:
        """Make the file end with a whole line; return its size."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return size
        line_start = self._last_line_start(size)
        tail = os.pread(self._fd, size - line_start, line_start)
        try:
            complete = isinstance(json.loads(tail), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            complete = False
        try:
            if complete:
                os.write(self._fd, b"\n")
                size += 1
                log.warning("store.log_line_completed", path=str(self.path), offset=line_start)
            else:
                os.ftruncate(self._fd, line_start)
                log.warning(
                    "store.torn_line_dropped",
                    path=str(self.path),
                    offset=line_start,
                    bytes=size - line_start,
                )
                size = line_start
            os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(f"cannot repair the torn last line of {self.path}: {exc}") from exc
        return size

    def _last_line_start(self, size: int) -> int:
        """The offset just past the last newline before ``size`` (0 when there is none)."""
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            newline = os.pread(self._fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0

    # --- writing ------------------------------------------------------------------------

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append ``records`` with one write and one fsync; durable when this returns.

        Returns the offset the records start at, which :meth:`cut_back` takes.
        """
        if self._failure is not None:
            raise StoreError(self._failure)
        records = list(records)
        lines = [encode_line(record, key_fields=self.key_fields) for record in records]
        start = self._size
        if not lines:
            return start
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            self._undo_partial_append(start, exc)
            raise StoreError(f"cannot append to {self.path}: {exc}") from exc
        self._size = start + len(data)
        if self._indexes is not None:
            offset = start
            for record, line in zip(records, lines):
                self._index_line(tuple(record[f] for f in self.key_fields), offset, len(line))
                offset += len(line)
        return start

    def cut_back(self, offset: int) -> None:
        """Remove every record appended at or after ``offset`` (what :meth:`append` returned):
        records whose companion write failed, so they were never acknowledged. Durable when
        this returns."""
        if self._failure is not None:
            raise StoreError(self._failure)
        if not 0 <= offset <= self._size:
            raise ValueError(f"cannot cut {self.path} back to byte {offset} of {self._size}")
        if offset == self._size:
            return
        try:
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
        except OSError as exc:
            self._failure = (
                f"{self.path} holds records of a failed write that could not be cut off ({exc}); "
                "restart agent-fleet"
            )
            raise StoreError(self._failure) from exc
        self._size = offset
        # Rare (a failed write): rebuild the index on the next lookup rather than edit it.
        self._indexes = None

    def _undo_partial_append(self, start: int, cause: OSError) -> None:
        # Later appends must not land after half a line: cut back to the last whole line.
        try:
            os.ftruncate(self._fd, start)
            os.fsync(self._fd)
        except OSError as exc:
            self._failure = (
                f"{self.path} may end in half a record after a failed append ({cause}) and could "
                f"not be cut back ({exc}); restart agent-fleet (opening repairs the file)"
            )

    # --- reading ------------------------------------------------------------------------

    def records_for(self, key: str, *, field: str | None = None) -> list[dict[str, Any]]:
        """Every record whose ``field`` (the first key field by default) is ``key``, oldest first."""
        positions = self._positions(key, field=field)
        if positions is None:
            return []
        return [self._read(positions[i], positions[i + 1]) for i in range(0, len(positions), 2)]

    def latest_for(self, key: str, *, field: str | None = None) -> dict[str, Any] | None:
        """The last record appended whose ``field`` is ``key``, or None."""
        positions = self._positions(key, field=field)
        if positions is None:
            return None
        return self._read(positions[-2], positions[-1])

    def read_from(self, offset: int, *, limit: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Up to ``limit`` records starting at byte ``offset`` (a record boundary, 0 for the
        start), each with its own offset; and the offset to read from next time."""
        if not 0 <= offset <= self._size:
            raise ValueError(f"cannot read {self.path} from byte {offset} of {self._size}")
        found: list[tuple[int, dict[str, Any]]] = []
        position = offset
        while position < self._size and len(found) < limit:
            chunk = os.pread(self._fd, min(_TAIL_CHUNK, self._size - position), position)
            start = 0
            while len(found) < limit and (newline := chunk.find(b"\n", start)) >= 0:
                if newline > start:
                    found.append(
                        (
                            position + start,
                            self._parse(chunk[start:newline], offset=position + start),
                        )
                    )
                start = newline + 1
            if start == 0:  # one line longer than a chunk: read it whole
                end = self._size
                line = os.pread(self._fd, end - position, position)
                newline = line.find(b"\n")
                found.append((position, self._parse(line[:newline], offset=position)))
                start = newline + 1
            position += start
        return found, position

    def distinct_keys(self) -> list[str]:
        """Every distinct value of the first key field, in the order first appended."""
        return list(self._ensure_indexes()[0])

    def _positions(self, key: str, *, field: str | None) -> array[int] | None:
        which = 0 if field is None else self.key_fields.index(field)
        return self._ensure_indexes()[which].get(key)

    def _read(self, offset: int, length: int) -> dict[str, Any]:
        return self._parse(os.pread(self._fd, length, offset), offset=offset)

    def _parse(self, line: bytes, *, offset: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{self.path}: the line at byte {offset} is not valid JSON ({exc})"
            ) from exc
        if not isinstance(record, dict) or not all(
            isinstance(record.get(field), str) for field in self.key_fields
        ):
            raise StoreError(
                f"{self.path}: the line at byte {offset} is not a record with string "
                f"fields {', '.join(self.key_fields)}"
            )
        return record

    # --- the index ----------------------------------------------------------------------

    def _ensure_indexes(self) -> tuple[dict[str, array[int]], ...]:
        if self._indexes is None:
            self._indexes = tuple({} for _ in self.key_fields)
            for offset, line in self._lines():
                self._index_line(self._keys_of(line, offset=offset), offset, len(line))
        return self._indexes

    def _index_line(self, keys: tuple[str, ...], offset: int, length: int) -> None:
        assert self._indexes is not None
        for index, key in zip(self._indexes, keys):
            positions = index.get(key)
            if positions is None:
                positions = index[key] = array("Q")
            positions.append(offset)
            positions.append(length)

    def _keys_of(self, line: bytes, *, offset: int) -> tuple[str, ...]:
        """The key fields of one line: read from the line start, parsed only when unusual."""
        keys: list[str] = []
        position = 0
        for opener in self._openers:
            if not line.startswith(opener, position):
                break
            start = position + len(opener)
            end = line.find(b'"', start)
            raw = line[start:end]
            # A backslash means JSON escapes: let the parser read the key instead.
            if end < 0 or b"\\" in raw:
                break
            try:
                keys.append(raw.decode())
            except UnicodeDecodeError:
                break
            position = end + 1
        if len(keys) == len(self.key_fields):
            return tuple(keys)
        record = self._parse(line, offset=offset)
        return tuple(record[field] for field in self.key_fields)

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(offset, line with its newline) for every non-blank line, read in chunks."""
        position = 0  # file offset of buffer[0]
        buffer = b""
        while position + len(buffer) < self._size:
            want = min(_SCAN_CHUNK, self._size - position - len(buffer))
            chunk = os.pread(self._fd, want, position + len(buffer))
            if not chunk:
                break
            buffer += chunk
            start = 0
            while (newline := buffer.find(b"\n", start)) >= 0:
                if newline > start:
                    yield position + start, buffer[start : newline + 1]
                start = newline + 1
            position += start
            buffer = buffer[start:]

    def close(self) -> None:
        os.close(self._fd)
