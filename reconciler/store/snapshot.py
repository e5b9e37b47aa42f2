"""A private copy of a state store, for readers that must not disturb the one in use.

``agent-fleet reconcile --once --dry-run`` calls :func:`open_snapshot` so that it can plan beside
a running daemon: it copies the store's files into a temporary directory and opens the copy,
taking no lock on the original and writing nothing to it. Each file is copied whole:
``state.json`` is only ever replaced atomically, and a line being appended to a JSON-lines log
or the journal at that moment is dropped as a torn tail when the copy is opened. The snapshot and
its journals are copied again if a compaction replaced or rotated one of them meanwhile, so the
copy never mixes two generations.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import StoreError
from reconciler.store.store import (
    ARCHIVE_FILE,
    COMPACTING_FILE,
    EVENTS_FILE,
    JOURNAL_FILE,
    RECEIPTS_FILE,
    STATE_FILE,
    Store,
)

_LIVE = (STATE_FILE, COMPACTING_FILE, JOURNAL_FILE)
_LOGS = (ARCHIVE_FILE, RECEIPTS_FILE, EVENTS_FILE)
_ATTEMPTS = 20


def _identities(path: Path) -> tuple[tuple[int, int] | None, ...]:
    """Which file (inode, device) each live-state name is, None when absent."""
    found: list[tuple[int, int] | None] = []
    for name in _LIVE:
        try:
            stat = (path / name).stat()
        except FileNotFoundError:
            found.append(None)
        else:
            found.append((stat.st_ino, stat.st_dev))
    return tuple(found)


def _copy_live_state(path: Path, copy: Path) -> None:
    for _ in range(_ATTEMPTS):
        before = _identities(path)
        for name in _LIVE:
            (copy / name).unlink(missing_ok=True)
            try:
                shutil.copyfile(path / name, copy / name)
            except FileNotFoundError:
                pass
        if _identities(path) == before:
            return
    raise StoreError(f"the state store at {path} kept compacting while it was being copied")


@contextmanager
def open_snapshot(path: Path) -> Iterator[Store]:
    """A :class:`Store` over a throw-away copy of the store at ``path`` (empty if none)."""
    with tempfile.TemporaryDirectory(prefix="agent-fleet-snapshot-") as scratch:
        copy = Path(scratch) / "store"
        copy.mkdir()
        _copy_live_state(path, copy)
        for name in _LOGS:
            source = path / name
            if source.is_file():
                shutil.copyfile(source, copy / name)
        store = Store.open(copy)
        try:
            yield store
        finally:
            store.close()
