"""What this process last read of each issue and pull request: its ``updated_at``.

The gateway notes the ``updated_at`` of every issue and pull request it reads one by one
(``get_issue``, ``get_pull``): those single reads are what reconciles observe. The resync
(``reconciler.engine.resync``) compares the ``updated_at`` its list answers carry with this
record and enqueues an item only when it moved, so a resync over an unchanged forge costs its
list calls and no per-item reads.

Kept in memory only: a restarted process has seen nothing and reads everything once, which is
what its first full resync does anyway. Forgejo's timestamps have whole seconds, so a change in
the very second of a read carries the same ``updated_at``; its webhook still enqueues the item,
and the resync only stands in for webhooks that were lost.
"""

from __future__ import annotations

import threading
from datetime import datetime


class SeenItems:
    """``(repo, number)`` → the ``updated_at`` of the last single read; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._updated: dict[tuple[str, int], datetime] = {}

    @staticmethod
    def _key(repo: str, number: int) -> tuple[str, int]:
        return (repo.lower(), number)

    def note(self, repo: str, number: int, updated_at: datetime | None) -> None:
        """Record a single read of item ``number`` (nothing when the server sent no time)."""
        if updated_at is None:
            return
        with self._lock:
            self._updated[self._key(repo, number)] = updated_at

    def is_unchanged(self, repo: str, number: int, updated_at: datetime | None) -> bool:
        """Whether a listed ``updated_at`` is the one last read (unknown items have changed)."""
        if updated_at is None:
            return False
        with self._lock:
            return self._updated.get(self._key(repo, number)) == updated_at

    def forget(self) -> None:
        """Drop every record, so the next resync enqueues everything it lists."""
        with self._lock:
            self._updated.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._updated)
