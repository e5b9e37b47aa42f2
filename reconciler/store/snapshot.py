"""A private copy of a state store, for readers that must not disturb the one in use.

``agent-fleet reconcile --once --dry-run`` calls :func:`open_snapshot` so that it can plan beside
a running daemon: it copies the store's files into a temporary directory and opens the copy,
taking no lock on the original and writing nothing to it. Each file is copied whole:
``state.json`` is only ever replaced atomically, and a line being appended to a JSON-lines log
at that moment is dropped as a torn tail when the copy is opened.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.store.store import ARCHIVE_FILE, EVENTS_FILE, RECEIPTS_FILE, STATE_FILE, Store

_COPIED = (STATE_FILE, ARCHIVE_FILE, RECEIPTS_FILE, EVENTS_FILE)


@contextmanager
def open_snapshot(path: Path) -> Iterator[Store]:
    """A :class:`Store` over a throw-away copy of the store at ``path`` (empty if none)."""
    with tempfile.TemporaryDirectory(prefix="agent-fleet-snapshot-") as scratch:
        copy = Path(scratch) / "store"
        copy.mkdir()
        for name in _COPIED:
            source = path / name
            if source.is_file():
                shutil.copyfile(source, copy / name)
        store = Store.open(copy)
        try:
            yield store
        finally:
            store.close()
