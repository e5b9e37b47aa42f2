"""The work queue: deduplication, one holder per key, schedules, backoff, shutdown."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.engine.workqueue import BackoffStore, WorkQueue
from reconciler.keys import Key, agent_key, issue_key

A = issue_key("acme/web", 1)
B = issue_key("acme/web", 2)
C = agent_key("builder-1")

JOIN_TIMEOUT = 5.0


class FakeTime:
    """A monotonic clock and a wall clock that move together only when a test says so.

    ``read`` is set whenever the monotonic clock is read, which lets a test know that a
    getter is inside ``get()`` (it reads the clock under the queue's lock just before it
    waits).
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
        self.read = threading.Event()

    def monotonic(self) -> float:
        self.read.set()
        return self.now

    def wall_clock(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


class FakeBackoffStore:
    """The state store's backoff table, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[Key, tuple[int, datetime]] = {}

    def get_backoff(self, key: Key) -> tuple[int, datetime] | None:
        return self.rows.get(key)

    def set_backoff(self, key: Key, *, attempts: int, not_before: datetime) -> None:
        self.rows[key] = (attempts, not_before)

    def clear_backoff(self, key: Key) -> None:
        self.rows.pop(key, None)

    def all_backoffs(self) -> list[tuple[Key, int, datetime]]:
        return [(key, attempts, nb) for key, (attempts, nb) in self.rows.items()]


def make_queue(
    fake: FakeTime,
    *,
    store: BackoffStore | None = None,
    backoff_initial: float = 1.0,
    backoff_max: float = 600.0,
) -> WorkQueue:
    """A queue on the fake clocks, without jitter so delays are exact."""
    return WorkQueue(
        clock=fake.monotonic,
        wall_clock=fake.wall_clock,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        backoff_jitter=0.0,
        backoff_store=store,
    )


def drain(queue: WorkQueue) -> list[Key]:
    """Take every ready key without blocking, marking each done."""
    taken: list[Key] = []
    while (key := queue.get(timeout=0)) is not None:
        taken.append(key)
        queue.done(key)
    return taken


# --- deduplication and one holder per key ----------------------------------------------------


def test_a_key_added_twice_is_handed_out_once() -> None:
    """Adding a key that is already waiting does not queue it a second time."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.add(A)
    assert len(queue) == 1
    assert queue.get(timeout=0) == A
    assert queue.get(timeout=0) is None


def test_a_key_added_while_processing_is_not_handed_out_until_done() -> None:
    """A key in work is withheld from other getters and comes back once after done()."""
    queue = make_queue(FakeTime())
    queue.add(A)
    assert queue.get(timeout=0) == A
    queue.add(A)
    assert queue.get(timeout=0) is None
    queue.done(A)
    assert queue.get(timeout=0) == A
    queue.done(A)
    assert queue.get(timeout=0) is None


def test_three_adds_while_processing_give_one_more_run() -> None:
    """However often a key is added during its run, it runs exactly once more afterwards."""
    queue = make_queue(FakeTime())
    queue.add(A)
    assert queue.get(timeout=0) == A
    for _ in range(3):
        queue.add(A)
    assert queue.depth() == 1
    queue.done(A)
    assert drain(queue) == [A]


def test_ready_keys_come_out_in_the_order_they_were_added() -> None:
    """Ready keys are handed out first in, first out."""
    queue = make_queue(FakeTime())
    for key in (B, C, A):
        queue.add(key)
    assert drain(queue) == [B, C, A]


def test_urgent_keys_go_ahead_of_the_other_ready_keys() -> None:
    """A follow-up of work under way goes ahead of keys that start new work, first in, first
    out among urgent keys; a key already waiting moves to the urgent ones, and runs once."""
    D, E = issue_key("acme/web", 4), issue_key("acme/web", 5)
    queue = make_queue(FakeTime())
    for key in (A, B, D):
        queue.add(key)
    queue.add_urgent(E)
    queue.add(D, urgent=True)
    queue.add_urgent(C)
    assert queue.depth() == 5
    assert drain(queue) == [E, D, C, A, B]
    queue.add_urgent(E)
    queue.add_urgent(D)
    assert drain(queue) == [E, D]


def test_new_work_that_waited_too_long_takes_turns_with_urgent_keys() -> None:
    """Once a key that starts new work has been ready for ``new_work_wait`` seconds, urgent
    keys no longer all go first: the two are handed out in turn while such a key waits."""
    D, E = issue_key("acme/web", 4), issue_key("acme/web", 5)
    clock = FakeTime()
    queue = WorkQueue(clock=clock.monotonic, wall_clock=clock.wall_clock, new_work_wait=10)
    for key in (A, B):
        queue.add(key)
    clock.advance(9)
    for key in (E, D, C):
        queue.add_urgent(key)
    assert queue.get(timeout=0) == E  # A has waited 9 s: urgent still first
    clock.advance(1)
    assert drain(queue) == [D, A, C, B]


def test_an_endless_stream_of_urgent_keys_does_not_starve_new_work() -> None:
    """An urgent key that comes back after every run still lets a waiting key through once
    that key has waited ``new_work_wait`` seconds."""
    clock = FakeTime()
    queue = WorkQueue(clock=clock.monotonic, wall_clock=clock.wall_clock, new_work_wait=10)
    queue.add(A)
    handed: list[Key] = []
    for _ in range(30):
        queue.add_urgent(B)
        key = queue.get(timeout=0)
        assert key is not None
        handed.append(key)
        queue.done(key)
        clock.advance(1)
        if key == A:
            break
    assert handed[-1] == A and 10 <= len(handed) <= 12, handed


def test_a_key_moved_to_the_urgent_ones_does_not_keep_its_old_place() -> None:
    """A waiting key moved to the urgent ones leaves its place among the others behind: added
    again after its run, it waits behind the keys that were ready before it."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.add(B)
    queue.add_urgent(A)
    assert queue.get(timeout=0) == A
    queue.done(A)
    queue.add(A)
    assert drain(queue) == [B, A]


def test_an_urgent_add_during_a_run_makes_the_next_run_urgent() -> None:
    """A key added as urgent while in work comes back at done() ahead of waiting keys."""
    queue = make_queue(FakeTime())
    queue.add(A)
    assert queue.get(timeout=0) == A
    queue.add(B)
    queue.add_urgent(A)
    queue.done(A)
    assert drain(queue) == [A, B]
    queue.add(B)
    queue.add(A)
    assert drain(queue) == [B, A]  # urgency is not remembered past that run


def test_urgent_keys_of_one_controller_do_not_jump_another_controllers_getter() -> None:
    """A getter of one controller sees its urgent keys first and never another's."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.add_urgent(C)
    queue.add_urgent(B)
    assert queue.get(timeout=0, controller=A.controller) == B
    assert queue.get(timeout=0, controller=A.controller) == A
    assert queue.get(timeout=0, controller=A.controller) is None
    assert queue.get(timeout=0, controller=C.controller) == C


def test_on_add_runs_for_fresh_looks_only() -> None:
    """``on_add`` hears every key added for a fresh look, before it is queued; never an
    urgent follow-up or a scheduled run."""
    heard: list[Key] = []
    queue = WorkQueue(clock=FakeTime().monotonic, on_add=heard.append)
    queue.add(A)
    queue.add(A)
    queue.add_urgent(B)
    queue.add_after(C, 5)
    assert heard == [A, A]


def test_no_key_is_ever_held_by_two_workers_at_once() -> None:
    """Eight workers and two adders hammering three keys never overlap on one key."""
    queue = WorkQueue()
    keys = (A, B, C)
    guard = threading.Lock()
    holders: dict[Key, int] = dict.fromkeys(keys, 0)
    overlaps: list[Key] = []
    runs = itertools.count()
    adds_per_adder = 1000

    def work() -> None:
        while (key := queue.get(timeout=JOIN_TIMEOUT)) is not None:
            with guard:
                holders[key] += 1
                if holders[key] > 1:
                    overlaps.append(key)
            # Hand the GIL to other threads while holding the key, so that a second
            # holder, if the queue allowed one, would get in here.
            time.sleep(0)
            with guard:
                holders[key] -= 1
            next(runs)
            queue.done(key)

    def add_repeatedly(offset: int) -> None:
        for i in range(adds_per_adder):
            queue.add(keys[(i + offset) % len(keys)])

    workers = [threading.Thread(target=work) for _ in range(8)]
    adders = [threading.Thread(target=add_repeatedly, args=(n,)) for n in range(2)]
    # Switch threads far more often than the default 5 ms, so interleavings actually happen.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in workers + adders:
            thread.start()
        for thread in adders:
            thread.join(JOIN_TIMEOUT)
        assert queue.shut_down_with_drain(JOIN_TIMEOUT)
        for thread in workers:
            thread.join(JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(switch_interval)

    assert not any(thread.is_alive() for thread in workers + adders)
    assert overlaps == []
    assert queue.processing() == 0
    # Deduplication merges adds, but the workers did real work on every key.
    assert next(runs) >= len(keys)


# --- schedules -----------------------------------------------------------------------------------


def test_a_delayed_key_is_ready_when_due_and_not_before() -> None:
    """add_after holds the key back until the injected clock reaches its due time."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add_after(A, 10)
    assert len(queue) == 1
    fake.advance(9.9)
    assert queue.get(timeout=0) is None
    fake.advance(0.1)
    assert queue.get(timeout=0) == A


def test_an_earlier_schedule_wins_over_a_later_one() -> None:
    """Of two schedules for one key, the earlier runs and the later is dropped."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add_after(A, 10)
    queue.add_after(A, 5)
    queue.add_after(A, 20)
    assert len(queue) == 1
    fake.advance(5)
    assert drain(queue) == [A]
    fake.advance(20)
    assert drain(queue) == []


def test_adding_a_key_now_cancels_its_later_schedule() -> None:
    """add() supersedes a pending add_after: the key runs now and not again at the due time."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add_after(A, 10)
    queue.add(A)
    assert drain(queue) == [A]
    fake.advance(10)
    assert drain(queue) == []
    assert len(queue) == 0


def test_a_schedule_for_a_key_already_waiting_is_dropped() -> None:
    """add_after for a key that already waits to run now adds no second run later."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add(A)
    queue.add_after(A, 10)
    assert drain(queue) == [A]
    fake.advance(10)
    assert drain(queue) == []


def test_a_key_scheduled_during_its_run_comes_back_after_done_when_due() -> None:
    """A requeue_after set while the key is in work takes effect after done()."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add(A)
    assert queue.get(timeout=0) == A
    queue.add_after(A, 30)
    fake.advance(30)
    assert queue.get(timeout=0) is None  # due, but still in work
    queue.done(A)
    assert drain(queue) == [A]


def test_due_keys_come_out_in_the_order_they_became_due() -> None:
    """Readiness order holds across immediate adds and schedules that came due."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add_after(A, 2)
    queue.add_after(B, 1)
    fake.advance(3)
    queue.add(C)
    assert drain(queue) == [B, A, C]


def test_a_timer_cancelled_many_times_still_fires_once_when_set_again() -> None:
    """Thousands of cancelled schedules leave no stray runs behind."""
    fake = FakeTime()
    queue = make_queue(fake)
    for _ in range(2000):
        queue.add_after(A, 600)
        queue.add(A)
        assert queue.get(timeout=0) == A
        queue.done(A)
    queue.add_after(B, 600)
    queue.add_after(A, 300)
    fake.advance(600)
    assert drain(queue) == [A, B]
    fake.advance(600)
    assert drain(queue) == []


def test_zero_or_negative_delay_adds_at_once() -> None:
    """add_after with a delay of zero or less queues the key immediately."""
    queue = make_queue(FakeTime())
    queue.add_after(A, 0)
    queue.add_after(B, -5)
    assert drain(queue) == [A, B]


def test_poll_wakes_a_getter_blocked_on_a_schedule_when_the_clock_moves() -> None:
    """After an injected clock moves past a due time, poll() releases the blocked getter."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add_after(A, 3600)
    got: list[Key | None] = []
    fake.read.clear()
    getter = threading.Thread(target=lambda: got.append(queue.get(timeout=JOIN_TIMEOUT)))
    getter.start()
    assert fake.read.wait(JOIN_TIMEOUT)
    fake.advance(3600)
    assert queue.poll() == 1
    getter.join(JOIN_TIMEOUT)
    assert got == [A]


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_up_to_max() -> None:
    """Consecutive failures wait 1, 2, 4, 8 … seconds, never more than backoff_max."""
    queue = make_queue(FakeTime(), backoff_initial=1.0, backoff_max=20.0)
    delays = [queue.backoff(A, "boom") for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert queue.attempts(A) == 7


def test_backoff_schedules_the_retry_after_the_delay() -> None:
    """A failed key is retried when its backoff delay has passed, not sooner."""
    fake = FakeTime()
    queue = make_queue(fake)
    queue.add(A)
    for delay in (1.0, 2.0):
        assert queue.get(timeout=0) == A
        assert queue.backoff(A, "forgejo 502") == delay
        queue.done(A)
        fake.advance(delay - 0.1)
        assert queue.get(timeout=0) is None
        fake.advance(0.1)
    assert drain(queue) == [A]


def test_forget_resets_the_backoff() -> None:
    """After a success the next failure starts again from backoff_initial."""
    queue = make_queue(FakeTime())
    queue.backoff(A)
    queue.backoff(A)
    queue.forget(A)
    assert queue.attempts(A) == 0
    assert queue.backoff(A) == 1.0


def test_backoff_jitter_stretches_the_delay_by_the_injected_random() -> None:
    """Jitter lengthens a delay by jitter × rand(), and the cap still holds."""
    fake = FakeTime()
    queue = WorkQueue(
        clock=fake.monotonic,
        wall_clock=fake.wall_clock,
        backoff_initial=10.0,
        backoff_max=25.0,
        backoff_jitter=0.2,
        rand=lambda: 0.5,
    )
    assert queue.backoff(A) == pytest.approx(11.0)
    assert queue.backoff(A) == pytest.approx(22.0)
    assert queue.backoff(A) == 25.0


def test_backoff_is_persisted_and_forget_clears_it_from_the_store() -> None:
    """The store holds attempts and the wall-clock retry time until the key succeeds."""
    fake = FakeTime()
    store = FakeBackoffStore()
    queue = make_queue(fake, store=store)
    queue.backoff(A, "boom")
    queue.backoff(A, "boom")
    assert store.rows == {A: (2, fake.wall + timedelta(seconds=2))}
    queue.forget(A)
    assert store.rows == {}


def test_backoff_state_shows_attempts_retry_time_and_error() -> None:
    """backoff_state tells status displays how often a key failed, why, and until when."""
    fake = FakeTime()
    queue = make_queue(fake)
    assert queue.backoff_state(A) is None
    queue.backoff(A, "forgejo 502")
    state = queue.backoff_state(A)
    assert state is not None
    assert (state.attempts, state.not_before, state.error) == (
        1,
        fake.wall + timedelta(seconds=1),
        "forgejo 502",
    )


def test_a_store_failure_during_backoff_still_schedules_the_retry() -> None:
    """If the store cannot be written, the error surfaces but the key is retried anyway."""

    class BrokenStore(FakeBackoffStore):
        def set_backoff(self, key: Key, *, attempts: int, not_before: datetime) -> None:
            raise OSError("disk full")

    fake = FakeTime()
    queue = make_queue(fake, store=BrokenStore())
    with pytest.raises(OSError, match="disk full"):
        queue.backoff(A)
    fake.advance(1)
    assert drain(queue) == [A]


def test_a_restarted_queue_waits_out_the_remaining_backoff_and_keeps_counting() -> None:
    """A new queue over the same store schedules the key for what remains, not from zero."""
    fake = FakeTime()
    store = FakeBackoffStore()
    first = make_queue(fake, store=store)
    for _ in range(3):
        first.backoff(A)  # third failure: retry in 4 s
    first.shut_down()

    fake.advance(1)
    fake.now = 50.0  # a new process: its monotonic clock has nothing to do with the old one
    second = make_queue(fake, store=store)
    assert len(second) == 1
    fake.advance(2.9)
    assert second.get(timeout=0) is None
    fake.advance(0.1)
    assert second.get(timeout=0) == A
    assert second.backoff(A) == 8.0


def test_a_restored_backoff_that_has_expired_runs_at_once() -> None:
    """A key whose retry time passed while the daemon was down is ready immediately."""
    fake = FakeTime()
    store = FakeBackoffStore()
    store.set_backoff(A, attempts=5, not_before=fake.wall - timedelta(minutes=10))
    queue = make_queue(fake, store=store)
    assert drain(queue) == [A]
    assert queue.attempts(A) == 5


def test_a_restored_backoff_never_waits_longer_than_backoff_max() -> None:
    """A stored retry time far in the future (wall clock set back) is capped at backoff_max."""
    fake = FakeTime()
    store = FakeBackoffStore()
    store.set_backoff(A, attempts=2, not_before=fake.wall + timedelta(days=3))
    queue = make_queue(fake, store=store, backoff_max=600.0)
    fake.advance(600)
    assert drain(queue) == [A]


def test_a_naive_stored_retry_time_is_refused() -> None:
    """A backoff row without a time zone is an error, not a silent guess."""
    store = FakeBackoffStore()
    store.set_backoff(A, attempts=1, not_before=datetime(2026, 11, 21, 12, 0))
    with pytest.raises(ValueError, match="time zone"):
        make_queue(FakeTime(), store=store)


# --- shutdown ------------------------------------------------------------------------------------


def test_shut_down_wakes_a_blocked_getter_with_none() -> None:
    """A getter blocked without a timeout returns None when the queue shuts down."""
    fake = FakeTime()
    queue = make_queue(fake)
    got: list[Key | None] = [A]
    fake.read.clear()

    def take() -> None:
        got[0] = queue.get()

    getter = threading.Thread(target=take)
    getter.start()
    assert fake.read.wait(JOIN_TIMEOUT)  # the getter is inside get(), about to wait
    queue.shut_down()
    getter.join(JOIN_TIMEOUT)
    assert not getter.is_alive()
    assert got == [None]


def test_a_shut_down_queue_hands_out_nothing_and_ignores_adds() -> None:
    """After shut_down, waiting keys are withheld and new adds are dropped."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.shut_down()
    queue.add(B)
    queue.add_after(C, 1)
    assert queue.get(timeout=0) is None
    assert queue.depth() == 1
    assert queue.shutting_down


def test_drain_times_out_with_false_while_a_key_is_in_work() -> None:
    """shut_down_with_drain reports False when its timeout passes before done()."""
    queue = make_queue(FakeTime())
    queue.add(A)
    assert queue.get(timeout=0) == A
    assert queue.shut_down_with_drain(timeout=0) is False
    assert queue.processing() == 1


def test_drain_stops_getters_and_returns_true_after_in_flight_keys_are_done() -> None:
    """During a drain get() returns None, and the drain ends once the in-flight key is done."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.add(B)
    assert queue.get(timeout=0) == A
    result: list[bool] = []
    drainer = threading.Thread(
        target=lambda: result.append(queue.shut_down_with_drain(JOIN_TIMEOUT))
    )
    drainer.start()
    # Returns once the drain has marked the queue as shutting down and is waiting.
    assert queue.get() is None
    assert drainer.is_alive()
    queue.done(A)
    drainer.join(JOIN_TIMEOUT)
    assert result == [True]
    assert queue.processing() == 0


# --- metrics and bad input -----------------------------------------------------------------------


def test_depth_counts_ready_and_scheduled_keys_and_processing_counts_in_work() -> None:
    """depth() is what waits (now or later); processing() is what is in work."""
    queue = make_queue(FakeTime())
    queue.add(A)
    queue.add(B)
    queue.add_after(C, 60)
    assert (queue.depth(), queue.processing()) == (3, 0)
    assert queue.get(timeout=0) == A
    assert (queue.depth(), queue.processing()) == (2, 1)
    assert bool(WorkQueue()) is True


def test_done_for_a_key_not_in_work_is_an_error() -> None:
    """done() without a matching get() points at a bug in the caller."""
    queue = make_queue(FakeTime())
    with pytest.raises(ValueError, match="not being processed"):
        queue.done(A)


def test_a_plain_tuple_is_not_a_key() -> None:
    """Only reconciler.keys.Key goes into the queue."""
    queue = make_queue(FakeTime())
    with pytest.raises(TypeError, match="Key"):
        queue.add(("assignment", "acme/web", "1"))  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [float("nan"), float("inf")])
def test_a_delay_that_is_not_a_finite_number_is_an_error(delay: float) -> None:
    """add_after refuses NaN and infinity instead of scheduling a key never or at once."""
    queue = make_queue(FakeTime())
    with pytest.raises(ValueError, match="finite"):
        queue.add_after(A, delay)


@pytest.mark.parametrize(
    ("initial", "maximum"),
    [(0.0, 10.0), (-1.0, 10.0), (10.0, 5.0)],
)
def test_backoff_settings_that_cannot_work_are_refused(initial: float, maximum: float) -> None:
    """backoff_initial must be positive and backoff_max at least as large."""
    with pytest.raises(ValueError, match="backoff_"):
        WorkQueue(backoff_initial=initial, backoff_max=maximum)


def test_a_getter_for_one_controller_takes_only_its_keys() -> None:
    """get(controller=…) hands out that controller's keys in order and nothing else;
    get(excluding=…) hands out only keys of the other controllers; get() takes the key
    ready longest, whichever controller's."""
    queue = WorkQueue()
    first, second = Key("registry", "", "a1"), Key("registry", "", "a2")
    issue, other = Key("assignment", "acme/web", "1"), Key("nobody", "acme/web", "1")
    for key in (issue, first, second, other):
        queue.add(key)
    assert queue.get(timeout=0, controller="registry") == first
    assert queue.get(timeout=0, controller="registry") == second
    assert queue.get(timeout=0, controller="registry") is None
    assert queue.get(timeout=0, excluding=("assignment", "registry")) == other
    assert queue.get(timeout=0) == issue
    for key in (first, second, other, issue):
        queue.done(key)


def test_a_getter_waiting_for_its_controller_wakes_when_its_key_comes() -> None:
    """A worker blocked on its controller's lane is woken by a key for it, not before."""
    queue = WorkQueue()
    taken: list[Key | None] = []
    waiter = threading.Thread(
        target=lambda: taken.append(queue.get(timeout=10, controller="review"))
    )
    waiter.start()
    queue.add(Key("assignment", "acme/web", "1"))
    queue.add(Key("review", "acme/web", "7"))
    waiter.join(timeout=10)
    assert taken == [Key("review", "acme/web", "7")]
