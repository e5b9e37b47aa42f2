"""What this process last saw of each issue and pull request: ``updated_at``, labels, state.

The gateway notes every issue and pull request it reads one by one (``get_issue``,
``get_pull``): those single reads are what reconciles observe. The label actions of the loop
(``AddLabels``, ``RemoveLabels`` in ``reconciler.engine.reconcile``) note the labels their
writes leave, with ``updated_at`` unknown (the write moved it). Two readers:

* the resync (``reconciler.engine.resync``) compares the ``updated_at`` its list answers carry
  with this record and enqueues an item only when it moved — or, after our own label write,
  when the listed labels or state differ from what that write left — so a resync over an
  unchanged forge costs its list calls and no per-item reads;
* the webhook receiver asks ``is_echo`` whether a delivery caused by agent-fleet's own write
  (the bot is its sender) shows an issue exactly as last seen or written: such a delivery
  needs no reconcile, and its ``updated_at`` is noted so the next resync skips the issue too.
  Deliveries come on their own schedule, so the echo of a label write may arrive before the
  write's answer, or after a later write of ours: the label sets our recent writes on the item
  will leave or left (``expect_labels``, before each write; the last few since the item was
  last read) count as echoes too.

Kept in memory only: a restarted process has seen nothing and reads everything once, which is
what its first full resync does anyway. Forgejo's timestamps have whole seconds, so a change in
the very second of a read carries the same ``updated_at``; its webhook still enqueues the item,
and the resync only stands in for webhooks that were lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel

from reconciler.bounded import remember

_Copy = TypeVar("_Copy", bound=BaseModel)
"""A kept copy: an ``Issue`` or a ``PullRequest`` (both carry ``labels``)."""


@dataclass(frozen=True)
class SeenItem:
    """One item as last read or written."""

    updated_at: datetime | None
    labels: frozenset[str]
    state: str
    written: tuple[frozenset[str], ...] = ()
    """Label sets our own writes since the last read leave or left (the last few)."""
    copy: object | None = None
    """The issue (``get_issue``) or pull request (``get_pull``) as last read one by one,
    while nothing but our own label writes (recorded in ``labels``) may have changed it since:
    a fresh look asked for (a webhook that is not an echo, the resync), or any other write of
    ours drops it (``invalidate``)."""


_WRITTEN = 4
"""How many of our own recent label writes per item an echo may show."""

MERGES_REMEMBERED = 10_000
"""Merged pull requests remembered with when they were seen merged (the oldest forgotten)."""


class SeenItems:
    """``(repo, number)`` → the item as last read or written; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, int], SeenItem] = {}
        self._merged: dict[tuple[str, int], float] = {}
        """Pull requests seen merged (a read, or a signed delivery), with when (monotonic)."""
        self._invalidations: dict[tuple[str, int], int] = {}
        """How often each item was invalidated: a read that started before an invalidation
        (``generation``) must not keep its copy, which may predate the change."""

    @staticmethod
    def _key(repo: str, number: int) -> tuple[str, int]:
        return (repo.lower(), number)

    def note(
        self,
        repo: str,
        number: int,
        updated_at: datetime | None,
        *,
        labels: Iterable[str],
        state: str,
        copy: object | None = None,
        generation: int | None = None,
    ) -> None:
        """Record a single read of item ``number`` (with ``copy``: the issue or pull request
        read, kept only when nothing invalidated the item since ``generation``, taken before
        the read)."""
        with self._lock:
            key = self._key(repo, number)
            if generation is not None and self._invalidations.get(key, 0) != generation:
                copy = None  # a change came in while it was read: the copy may predate it
            self._items[key] = SeenItem(updated_at, frozenset(labels), state, copy=copy)

    def generation(self, repo: str, number: int) -> int:
        """The item's invalidation count now: pass it to ``note`` for a read started now."""
        with self._lock:
            return self._invalidations.get(self._key(repo, number), 0)

    def change_copy(
        self, repo: str, number: int, change: Callable[[object], object | None]
    ) -> None:
        """Apply our own write to the kept copy, if one is kept (``change`` returns the new
        copy, or None to drop it)."""
        with self._lock:
            key = self._key(repo, number)
            item = self._items.get(key)
            if item is not None and item.copy is not None:
                self._items[key] = replace(item, copy=change(item.copy))

    def invalidate(self, repo: str, number: int) -> None:
        """Something other than our own label writes may have changed the item: the copy
        kept from the last read is not to be used any more."""
        with self._lock:
            key = self._key(repo, number)
            self._invalidations[key] = self._invalidations.get(key, 0) + 1
            item = self._items.get(key)
            if item is not None and item.copy is not None:
                self._items[key] = replace(item, copy=None)

    def note_labels(self, repo: str, number: int, labels: Iterable[str]) -> None:
        """Record the labels our own write left on a known item (its updated_at moved).

        A read of the item on its way meanwhile (another controller's) may show it from
        before the write: like an invalidation, this write keeps that read's copy from being
        kept (``generation``), though the copy kept now stays, with these labels."""
        with self._lock:
            key = self._key(repo, number)
            self._invalidations[key] = self._invalidations.get(key, 0) + 1
            item = self._items.get(key)
            if item is not None:
                after = frozenset(labels)
                self._items[key] = replace(
                    item, updated_at=None, labels=after, written=_remember(item.written, after)
                )

    def expect_labels(self, repo: str, number: int, labels: Iterable[str]) -> None:
        """Record, before our own label write, the labels it is expected to leave on a known
        item: its webhook may be delivered before the write's answer comes back."""
        with self._lock:
            key = self._key(repo, number)
            item = self._items.get(key)
            if item is not None:
                self._items[key] = replace(item, written=_remember(item.written, frozenset(labels)))

    def drop_labels(self, repo: str, number: int, names: Iterable[str]) -> None:
        """Record that our own write removed ``names`` from a known item."""
        with self._lock:
            key = self._key(repo, number)
            item = self._items.get(key)
            if item is not None:
                self._items[key] = replace(
                    item, updated_at=None, labels=item.labels - frozenset(names)
                )

    def note_merged(self, repo: str, number: int) -> None:
        """Pull request ``number`` was seen merged (a read of it, or its signed delivery)."""
        with self._lock:
            key = self._key(repo, number)
            if key not in self._merged:
                remember(self._merged, key, time.monotonic(), limit=MERGES_REMEMBERED)

    def merged_for(self, repo: str, number: int) -> float | None:
        """Seconds since pull request ``number`` was first seen merged; None: not seen so."""
        with self._lock:
            seen = self._merged.get(self._key(repo, number))
        return None if seen is None else time.monotonic() - seen

    def kept(self, repo: str, number: int, kind: type[_Copy]) -> _Copy | None:
        """The ``kind`` of copy (an ``Issue`` or a ``PullRequest``) kept from the item's last
        read, with the labels our own label writes left since; None when none is kept."""
        with self._lock:
            item = self._items.get(self._key(repo, number))
        if item is None or not isinstance(item.copy, kind):
            return None
        before: tuple[str, ...] = getattr(item.copy, "labels", ())
        labels = tuple(n for n in before if n in item.labels) + tuple(
            sorted(item.labels.difference(before))
        )
        return item.copy.model_copy(update={"labels": labels})

    def get(self, repo: str, number: int) -> SeenItem | None:
        with self._lock:
            return self._items.get(self._key(repo, number))

    def is_unchanged(self, repo: str, number: int, updated_at: datetime | None) -> bool:
        """Whether a listed ``updated_at`` is the one last read (unknown items have changed)."""
        if updated_at is None:
            return False
        with self._lock:
            item = self._items.get(self._key(repo, number))
            return item is not None and item.updated_at == updated_at

    def is_settled(
        self,
        repo: str,
        number: int,
        *,
        labels: Iterable[str],
        state: str,
        updated_at: datetime | None,
    ) -> bool:
        """Whether a listed item needs no reconcile: its ``updated_at`` is the one last read,
        or the last thing known of it is our own label write and it shows exactly what that
        write left (then the listed ``updated_at`` becomes the one seen)."""
        if updated_at is None:
            return False
        with self._lock:
            key = self._key(repo, number)
            item = self._items.get(key)
            if item is None:
                return False
            if item.updated_at == updated_at:
                return True
            if item.updated_at is None and item.labels == frozenset(labels) and item.state == state:
                self._items[key] = replace(item, updated_at=updated_at)
                return True
            return False

    def is_echo(
        self,
        repo: str,
        number: int,
        *,
        labels: Iterable[str],
        state: str,
        updated_at: datetime | None,
        shown_fields: Mapping[str, object] | None = None,
        state_delivered_apart: bool = False,
    ) -> bool:
        """Whether a delivered issue shows the labels and state last seen or written — and,
        while the issue as last read is kept, the same ``shown_fields`` (its title, body,
        assignees: an edit by the bot's account that this process did not make is news); if
        so its ``updated_at`` becomes the one seen.

        ``state_delivered_apart``: the delivery is not the state change itself (a comment,
        a label change), and a close or reopen has a delivery of its own, whose look reads
        the issue. A state other than the one seen then does not make it news a second
        time: it is an echo if its labels are, the kept copy (which predates the change) is
        dropped, and ``updated_at`` is left alone, so the resync still finds the change
        should the state's own delivery be lost."""
        with self._lock:
            key = self._key(repo, number)
            item = self._items.get(key)
            shown = frozenset(labels)
            if item is None:
                return False
            if item.state != state:
                if not state_delivered_apart:
                    return False
                self._items[key] = replace(item, copy=None)
                return item.labels == shown or shown in item.written
            if item.copy is not None and any(
                getattr(item.copy, name, value) != value
                for name, value in (shown_fields or {}).items()
            ):
                self._items[key] = replace(item, copy=None)
                return False
            if item.labels != shown:
                # An echo of an earlier write of ours, or of one whose answer is on its way.
                return shown in item.written
            if updated_at is not None:
                self._items[key] = replace(item, updated_at=updated_at)
            return True


def _remember(
    written: tuple[frozenset[str], ...], labels: frozenset[str]
) -> tuple[frozenset[str], ...]:
    return (*(w for w in written if w != labels), labels)[-_WRITTEN:]
