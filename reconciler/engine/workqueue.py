"""The reconcile work queue: deduplicated, delayed, rate-limited, and safe for many workers.

The loop's worker threads each ``get()`` a key, call the controller's ``reconcile(key)``, then
``done(key)``; after a failed reconcile they call ``backoff(key)``, after a good one
``forget(key)``. The webhook and the resync ``add`` keys; controllers' ``requeue_after`` and the
loop's timers (heartbeats, timeouts) become ``add_after``. The semantics follow client-go's
rate-limited delaying work queue:

* A key waits at most once: adding a waiting key again does nothing.
* A key is never handed to two workers at once. Adding a key that is being processed marks it
  dirty; ``done`` puts it back, so it runs exactly once more, after the current run.
* Each key has at most one next run. The earliest wins: a schedule for later than an already
  pending run is dropped, and adding a key now cancels its pending later schedule. This is safe
  because every reconcile declares its own follow-up (``requeue_after``, backoff) again.
* Ready keys come out in the order they became ready, except that *urgent* keys go ahead.
  ``add(key, urgent=True)`` is for follow-ups of work already under way — a controller that
  moved a task on asks the next controller to carry the change through (``Enqueue``), an agent
  took a task or handed in its receipt — while webhooks and resyncs add keys that start new
  observations. Finishing what is under way before starting more keeps a burst from queueing
  every task's next step behind every other task's first one (the time from a merge to
  ``status/done`` does not grow with the burst). New work is never starved by work under way:
  once a controller's oldest other key has been ready for ``new_work_wait`` seconds (30 by
  default), its urgent and other keys are handed out in turn until none has waited that long.
  A key already waiting that is added as urgent moves to the urgent ones. A getter may ask for one
  controller's keys only (``get(controller=...)``): the loop gives each controller its own
  workers, so a slow controller's keys never hold up another's.
* Failed keys are retried after ``initial * 2**(attempts-1)`` seconds, capped at ``max``. The
  attempt count and the wall-clock time of the next try are written to a ``BackoffStore`` so a
  restart continues the backoff instead of hammering a broken key from attempt one.

Time: schedules run on an injectable monotonic ``clock``; the store keeps wall-clock datetimes,
converted through an injectable ``wall_clock``. Nothing sleeps in a thread of its own: ``get``
waits on the queue's one condition for the next due time, and ``poll`` lets a test that moved
an injected clock wake blocked getters.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from reconciler.keys import Key

# How long new work waits behind follow-ups of work under way before they take turns.
NEW_WORK_WAIT = 30.0

# Past this exponent the delay is far beyond any sensible ``backoff_max``; capping it keeps
# ``2.0 ** n`` from overflowing for a key that has failed thousands of times.
_MAX_EXPONENT = 63


class BackoffStore(Protocol):
    """Where per-key backoff survives a restart (implemented by the state store)."""

    def get_backoff(self, key: Key) -> tuple[int, datetime] | None:
        """The key's failed attempts and the earliest time to try it again, if it has any."""
        ...

    def set_backoff(self, key: Key, *, attempts: int, not_before: datetime) -> None:
        """Record the key's failed attempts and the earliest time to try it again."""
        ...

    def clear_backoff(self, key: Key) -> None:
        """Forget the key's backoff after a successful reconcile."""
        ...

    def all_backoffs(self) -> list[tuple[Key, int, datetime]]:
        """Every key with a recorded backoff, for the queue to reschedule at startup."""
        ...


@dataclass(frozen=True, slots=True)
class BackoffState:
    """A failing key's retry bookkeeping, for logs and ``agent-fleet status``."""

    attempts: int
    not_before: datetime
    error: str = ""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_key(key: object) -> Key:
    # A plain tuple hashes and compares equal to a Key, so it would slip through and then
    # show up in logs and metrics without field names; refuse it at the door instead.
    if not isinstance(key, Key):
        raise TypeError(f"work-queue keys must be reconciler.keys.Key, got {key!r}")
    return key


def _check_seconds(name: str, value: float) -> float:
    if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


_Entry = tuple[int, Key, float]
"""A ready key's place in its lane: sequence number, key, and when it became ready."""


class WorkQueue:
    """Keys waiting to be reconciled, keys being reconciled, and keys scheduled for later."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
        backoff_initial: float = 1.0,
        backoff_max: float = 600.0,
        backoff_jitter: float = 0.1,
        rand: Callable[[], float] = random.random,
        backoff_store: BackoffStore | None = None,
        on_add: Callable[[Key], None] | None = None,
        new_work_wait: float = NEW_WORK_WAIT,
    ) -> None:
        """Create the queue; with a ``backoff_store``, reschedule every key it holds.

        ``on_add(key)`` runs for every key added for a fresh look (``add`` without ``urgent``:
        a webhook, the resync, a person's command), before it is queued; the daemon drops what
        it kept of the key's issue there, so that look reads it.

        ``backoff_jitter`` stretches each delay by up to that fraction (``rand()`` in [0, 1)
        times it), so keys that failed together do not all retry in the same instant.

        ``new_work_wait``: how long a key that starts new work may wait behind urgent ones
        before the two are handed out in turn (see the module's text).
        """
        backoff_initial = _check_seconds("backoff_initial", backoff_initial)
        backoff_max = _check_seconds("backoff_max", backoff_max)
        backoff_jitter = _check_seconds("backoff_jitter", backoff_jitter)
        if backoff_initial <= 0:
            raise ValueError(f"backoff_initial must be positive, got {backoff_initial}")
        if backoff_max < backoff_initial:
            raise ValueError(
                f"backoff_max ({backoff_max}) must not be below backoff_initial ({backoff_initial})"
            )
        if not 0 <= backoff_jitter < 1:
            raise ValueError(f"backoff_jitter must be in [0, 1), got {backoff_jitter}")
        self._new_work_wait = _check_seconds("new_work_wait", new_work_wait)
        self._clock = clock
        self._wall_clock = wall_clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff_jitter = backoff_jitter
        self._rand = rand
        self._store = backoff_store
        self._on_add = on_add

        self._lock = threading.RLock()
        # Getters of any key wait here; shut_down_with_drain too.
        self._cond = threading.Condition(self._lock)
        # Getters of one controller's keys wait on its lane, on the same lock.
        self._lanes: dict[str, threading.Condition] = {}
        # Keys ready to hand out, per controller, each in the order they became ready (with a
        # sequence number, so a getter of any key takes the one ready longest). Never holds a
        # key that is being processed: such a key only becomes ready again in done().
        self._ready: dict[str, deque[_Entry]] = {}
        # Urgent keys, per controller, handed out before any of _ready. A key may have an entry
        # in both (moved to the front when added as urgent while waiting): only the entry
        # named in _live is, the other one is skipped (and dropped when it comes to the head).
        self._urgent: dict[str, deque[_Entry]] = {}
        # Each ready key's live entry (its sequence number) in _ready or _urgent.
        self._live: dict[Key, int] = {}
        # Keys being processed that were added as urgent meanwhile: urgent again at done().
        self._urgent_later: set[Key] = set()
        # Per controller (None: getters of any key), whether its last key handed out was an
        # urgent one while another had waited past new_work_wait: then the next is that one.
        self._took_urgent: dict[str | None, bool] = {}
        self._ready_seq = itertools.count()
        # Keys that need a run: everything in _ready, plus processing keys added meanwhile.
        # A key in _dirty is never in _scheduled (the earlier run wins).
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        # Pending later runs: key -> (due, seq). The heap may hold superseded entries; an
        # entry is live only while it matches _scheduled, so cancelling is O(1).
        self._scheduled: dict[Key, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._backoffs: dict[Key, BackoffState] = {}
        self._shutting_down = False

        if backoff_store is not None:
            self.restore(backoff_store.all_backoffs())

    # --- adding ------------------------------------------------------------------------

    def add(self, key: Key, *, urgent: bool = False) -> None:
        """Queue ``key`` now; a no-op if it already waits, deferred to ``done`` if it is in work.

        Cancels a pending later schedule of the key: the run this causes comes sooner and
        declares its own follow-ups. Ignored once the queue is shutting down. ``urgent``: the
        key goes before its controller's other ready keys (a waiting key moves there).
        """
        _check_key(key)
        if not urgent and self._on_add is not None:
            self._on_add(key)
        with self._cond:
            waiting = key in self._dirty and key not in self._processing
            self._add_locked(key, urgent=urgent)
            if urgent and waiting:
                self._push_ready_locked(key, urgent=True)
            elif urgent and key in self._processing:
                self._urgent_later.add(key)

    def add_urgent(self, key: Key) -> None:
        """``add(key, urgent=True)``: a follow-up of work under way (see the module's text)."""
        self.add(key, urgent=True)

    def add_after(self, key: Key, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds of the queue's clock (at once if ``delay <= 0``).

        If the key already has an earlier run pending (waiting, dirty, or scheduled sooner),
        this schedule is dropped; if it has a later one, this replaces it.
        """
        _check_key(key)
        delay = _check_seconds("delay", delay)
        with self._cond:
            self._add_after_locked(key, delay)

    # --- working -----------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        *,
        controller: str | None = None,
        excluding: Collection[str] = (),
    ) -> Key | None:
        """Take the next ready key and mark it as in work; ``None`` on timeout or shutdown.

        With ``controller``, only that controller's keys; with ``excluding``, no key of those
        controllers (the loop's worker for keys no controller of its own takes). Blocks until a
        key is ready, for at most ``timeout`` real seconds (``None``: no limit, ``0``: do not
        block). The caller must call ``done(key)`` when it is finished.
        """
        deadline: float | None = None
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)
            if timeout < 0:
                raise ValueError(f"timeout must not be negative, got {timeout}")
            # The timeout is real waiting time, measured like Condition.wait measures it,
            # independent of the injected scheduling clock (a test's fake clock stands still).
            deadline = time.monotonic() + timeout
        with self._lock:
            cond = self._cond if controller is None else self._lane_locked(controller)
            while True:
                if self._shutting_down:
                    return None
                self._promote_due_locked(self._clock())
                key = self._pop_ready_locked(controller, excluding)
                if key is not None:
                    self._dirty.discard(key)
                    self._processing.add(key)
                    # More than one key may have come due at once; pass the wake-up on.
                    self._wake_locked(controller)
                    return key
                wait = self._seconds_until_next_due_locked()
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                cond.wait(wait)

    def done(self, key: Key) -> None:
        """Mark ``key``'s run as finished; queue it again if it was added during the run."""
        _check_key(key)
        with self._cond:
            if key not in self._processing:
                raise ValueError(f"done({key}) called for a key that is not being processed")
            self._processing.remove(key)
            urgent = key in self._urgent_later
            self._urgent_later.discard(key)
            if key in self._dirty:
                self._push_ready_locked(key, urgent=urgent)
            if not self._processing:
                # shut_down_with_drain waits for this.
                self._cond.notify_all()

    def poll(self) -> int:
        """Move every scheduled key that is due by the clock to the ready keys; return how many.

        ``get`` does this itself. It exists for an injected clock: after moving it forward,
        ``poll`` wakes getters that are blocked waiting for a due time that has now passed.
        """
        with self._cond:
            moved = self._promote_due_locked(self._clock())
            if moved:
                self._notify_all_locked()
            return moved

    # --- backoff -----------------------------------------------------------------------

    def backoff(self, key: Key, error: str = "") -> float:
        """Schedule ``key`` for a retry after a failed reconcile; return the delay in seconds.

        The delay doubles with each consecutive failure from ``backoff_initial`` up to
        ``backoff_max``. The attempt count and the retry time are persisted to the backoff
        store (if any) before this returns; a store error propagates, with the retry already
        scheduled in memory. Still persisted, but not scheduled, while shutting down.
        ``error`` is kept for ``backoff_state`` (what ``agent-fleet status`` shows).
        """
        _check_key(key)
        with self._cond:
            previous = self._backoffs.get(key)
            attempts = (previous.attempts if previous else 0) + 1
            exponent = min(attempts - 1, _MAX_EXPONENT)
            stretch = 1.0 + self._backoff_jitter * self._rand()
            delay = min(self._backoff_initial * 2.0**exponent * stretch, self._backoff_max)
            not_before = self._wall_clock() + timedelta(seconds=delay)
            self._backoffs[key] = BackoffState(attempts, not_before, error)
            self._add_after_locked(key, delay)
            # The store is written under the lock so that its rows change in the same order
            # as the in-memory state; it happens only on failures, so the lock is rarely
            # held across a write.
            if self._store is not None:
                self._store.set_backoff(key, attempts=attempts, not_before=not_before)
        return delay

    def forget(self, key: Key) -> None:
        """Clear ``key``'s failed attempts after a successful reconcile (here and in the store).

        A key that was not backing off costs nothing: the store is only written when there
        was something to clear.
        """
        _check_key(key)
        with self._cond:
            if self._backoffs.pop(key, None) is not None and self._store is not None:
                self._store.clear_backoff(key)

    def backoff_state(self, key: Key) -> BackoffState | None:
        """The key's consecutive failures and next retry time, or ``None`` if it is not failing."""
        with self._cond:
            return self._backoffs.get(key)

    def attempts(self, key: Key) -> int:
        """How many times in a row ``key`` has failed (0 if it is not backing off)."""
        state = self.backoff_state(key)
        return state.attempts if state else 0

    def restore(self, backoffs: Iterable[tuple[Key, int, datetime]]) -> int:
        """Reschedule keys whose backoff was persisted before a restart; return how many.

        Each key is scheduled for what remains until its stored ``not_before`` (at once if
        that has passed), and its attempt count carries on. The constructor calls this with
        the backoff store's contents; the store itself is not written.
        """
        now = self._wall_clock()
        # Check every row before touching the queue, so a bad row leaves no half-restore.
        entries: list[tuple[Key, int, datetime, float]] = []
        for key, attempts, not_before in backoffs:
            _check_key(key)
            if not isinstance(attempts, int) or attempts < 1:
                raise ValueError(f"backoff for {key}: attempts must be >= 1, got {attempts!r}")
            if not_before.tzinfo is None:
                raise ValueError(
                    f"backoff for {key}: not_before {not_before.isoformat()} has no time "
                    "zone; the backoff store must keep timezone-aware datetimes"
                )
            remaining = (not_before - now).total_seconds()
            # If the wall clock was set back while the daemon was down, the stored time can
            # lie far in the future; never wait longer than one maximal backoff.
            entries.append((key, attempts, not_before, min(remaining, self._backoff_max)))
        with self._cond:
            for key, attempts, not_before, remaining in entries:
                self._backoffs[key] = BackoffState(attempts, not_before)
                self._add_after_locked(key, remaining)
        return len(entries)

    # --- shutting down -----------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop handing out keys: every ``get``, blocked or future, returns ``None``."""
        with self._cond:
            self._shutting_down = True
            self._notify_all_locked()

    def shut_down_with_drain(self, timeout: float | None = None) -> bool:
        """Shut down, then wait up to ``timeout`` real seconds for in-flight keys to be done.

        Returns True once nothing is being processed, False if the timeout passed first.
        Keys still waiting or scheduled are dropped: the next start's resync finds them again.
        """
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)
            if timeout < 0:
                raise ValueError(f"timeout must not be negative, got {timeout}")
        with self._cond:
            self._shutting_down = True
            self._notify_all_locked()
            return self._cond.wait_for(lambda: not self._processing, timeout)

    @property
    def shutting_down(self) -> bool:
        """Whether ``shut_down`` or ``shut_down_with_drain`` has been called."""
        with self._cond:
            return self._shutting_down

    # --- metrics -----------------------------------------------------------------------

    def depth(self) -> int:
        """Keys waiting for a run: ready now, dirty while in work, or scheduled for later."""
        with self._cond:
            return len(self._dirty) + len(self._scheduled)

    def processing(self) -> int:
        """Keys being reconciled right now."""
        with self._cond:
            return len(self._processing)

    def __len__(self) -> int:
        return self.depth()

    def __bool__(self) -> bool:
        # With __len__ alone an empty queue would be falsy, and `if queue:` would quietly
        # mean "has work" where callers mean "has a queue".
        return True

    # --- internals (the caller holds self._cond) ---------------------------------------

    def _add_locked(self, key: Key, *, urgent: bool = False) -> None:
        if self._shutting_down:
            return
        # Keys that came due before this one keep their place ahead of it.
        self._promote_due_locked(self._clock())
        self._scheduled.pop(key, None)
        self._enqueue_locked(key, urgent=urgent)

    def _add_after_locked(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self._add_locked(key)
            return
        if self._shutting_down or key in self._dirty:
            return
        due = self._clock() + delay
        pending = self._scheduled.get(key)
        if pending is not None and pending[0] <= due:
            return
        seq = next(self._seq)
        self._scheduled[key] = (due, seq)
        heapq.heappush(self._heap, (due, seq, key))
        self._compact_heap_locked()
        # A getter may be sleeping until a later due time; let every getter recompute.
        self._notify_all_locked()

    def _enqueue_locked(self, key: Key, *, urgent: bool = False) -> bool:
        """Mark ``key`` as needing a run; return True if it became ready to hand out."""
        if key in self._dirty:
            return False
        self._dirty.add(key)
        if key in self._processing:
            return False
        self._push_ready_locked(key, urgent=urgent)
        return True

    def _push_ready_locked(self, key: Key, *, urgent: bool = False) -> None:
        """``key`` is ready: behind its controller's ready (or urgent) keys, and a getter is
        woken (one wake-up is enough: a woken getter takes a key and passes the wake-up on)."""
        lanes = self._urgent if urgent else self._ready
        seq = next(self._ready_seq)
        self._live[key] = seq
        lanes.setdefault(key.controller, deque()).append((seq, key, self._clock()))
        self._wake_locked(key.controller)

    def _head_locked(self, lane: deque[_Entry] | None) -> _Entry | None:
        """The lane's first live entry (dropping the dead ones before it), or None."""
        while lane:
            entry = lane[0]
            if self._live.get(entry[1]) == entry[0]:
                return entry
            lane.popleft()
        return None

    def _pop_ready_locked(self, controller: str | None, excluding: Collection[str]) -> Key | None:
        urgent = self._oldest_locked(self._urgent, controller, excluding)
        other = self._oldest_locked(self._ready, controller, excluding)
        # Urgent first; in turn with the others while one of those has waited too long.
        overdue = other is not None and self._overdue_locked(other)
        if urgent is not None and not (overdue and self._took_urgent.get(controller)):
            self._took_urgent[controller] = overdue
            lane: deque[_Entry] | None = urgent
        else:
            self._took_urgent[controller] = False
            lane = other
        if lane is None:
            return None
        key = lane.popleft()[1]
        del self._live[key]
        return key

    def _overdue_locked(self, lane: deque[_Entry]) -> bool:
        """Whether the lane's first live key has been ready for ``new_work_wait`` or longer."""
        head = self._head_locked(lane)
        return head is not None and self._clock() - head[2] >= self._new_work_wait

    def _oldest_locked(
        self,
        lanes: dict[str, deque[_Entry]],
        controller: str | None,
        excluding: Collection[str],
    ) -> deque[_Entry] | None:
        """The lane (of ``controller``, or of any not excluded) whose live head is oldest."""
        if controller is not None:
            lane = lanes.get(controller)
            return lane if self._head_locked(lane) is not None else None
        heads = [
            (head[0], lane)
            for name, lane in lanes.items()
            if name not in excluding and (head := self._head_locked(lane)) is not None
        ]
        return min(heads, key=lambda item: item[0])[1] if heads else None

    def _wake_locked(self, controller: str | None) -> None:
        """Wake a getter for a ready key of ``controller`` (of any, for None), if one is
        ready: one getter of any key and one of that controller's lane."""
        for lanes in (self._urgent, self._ready):
            for name, lane in lanes.items():
                if lane and (controller is None or name == controller):
                    self._cond.notify()
                    if name in self._lanes:
                        self._lanes[name].notify()

    def _lane_locked(self, controller: str) -> threading.Condition:
        lane = self._lanes.get(controller)
        if lane is None:
            lane = self._lanes[controller] = threading.Condition(self._lock)
        return lane

    def _notify_all_locked(self) -> None:
        self._cond.notify_all()
        for lane in self._lanes.values():
            lane.notify_all()

    def _promote_due_locked(self, now: float) -> int:
        moved = 0
        while self._heap and self._heap[0][0] <= now:
            due, seq, key = heapq.heappop(self._heap)
            if self._scheduled.get(key) != (due, seq):
                continue  # superseded by an earlier schedule or by add()
            del self._scheduled[key]
            self._enqueue_locked(key)
            moved += 1
        return moved

    def _seconds_until_next_due_locked(self) -> float | None:
        while self._heap:
            due, seq, key = self._heap[0]
            if self._scheduled.get(key) == (due, seq):
                return max(0.0, due - self._clock())
            heapq.heappop(self._heap)
        return None

    def _compact_heap_locked(self) -> None:
        # Superseded entries stay in the heap until they reach the top. A key whose long
        # timer is cancelled over and over by add() would pile them up; rebuild when most
        # of the heap is dead.
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [(due, seq, key) for key, (due, seq) in self._scheduled.items()]
            heapq.heapify(self._heap)
