"""The reconcile loop: outcomes by error class, backoff, requeue, one key per worker, shutdown."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.engine.loop import STALE_RETRY, Loop, Outcome
from reconciler.engine.metrics import Metrics
from reconciler.engine.reconcile import ActContext, Action, Actuator, Result
from reconciler.engine.workqueue import WorkQueue
from reconciler.errors import StaleStateError, StalledError, WaitingError
from reconciler.keys import Key

KEY = Key("fake", "acme/web", "12")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.now

    def wall_clock(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Note(Action):
    text: str

    def describe(self) -> str:
        return self.text

    def apply(self, ctx: ActContext) -> None:
        raise AssertionError("dry-run actuator must not apply")


@dataclass
class ScriptedController:
    """Raises or returns what its script says, in order; records the keys it saw."""

    script: list[object]
    name: str = "fake"
    seen: list[Key] = field(default_factory=list)
    actuator: Actuator = field(default_factory=lambda: Actuator(None, dry_run=True))

    def reconcile(self, key: Key) -> Result:
        self.seen.append(key)
        step = self.script.pop(0) if self.script else Result()
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Action):
            self.actuator.apply([step])
            return Result()
        assert isinstance(step, Result)
        return step


def make(
    script: list[object], clock: FakeClock, store: object | None = None
) -> tuple[Loop, ScriptedController]:
    queue = WorkQueue(
        clock=clock.monotonic,
        wall_clock=clock.wall_clock,
        backoff_initial=1.0,
        backoff_max=8.0,
        backoff_jitter=0.0,
        backoff_store=store,  # type: ignore[arg-type]
    )
    controller = ScriptedController(script)
    return Loop(
        (controller,), queue, workers=2, metrics=Metrics(), clock=clock.monotonic
    ), controller


def test_success_clears_backoff_and_reports_the_actions() -> None:
    """A reconcile that applies one action ends `ok` with that action in its summary."""
    clock = FakeClock()
    loop, _ = make([Note("add label status/todo")], clock)
    loop.queue.add(KEY)
    outcome = loop.process_one()
    assert outcome is not None
    assert (outcome.outcome, outcome.actions) == ("ok", ("add label status/todo",))
    assert loop.queue.attempts(KEY) == 0


def test_a_controller_that_raises_is_retried_with_growing_delays() -> None:
    """Unknown errors are transient: 1 s, 2 s, 4 s, 8 s, 8 s, and success resets the count."""
    clock = FakeClock()
    loop, controller = make([RuntimeError("boom")] * 5 + [Result()], clock)
    loop.queue.add(KEY)
    delays = []
    for _ in range(5):
        outcome = loop.process_one()
        assert outcome is not None and outcome.outcome == "error" and "boom" in outcome.error
        delays.append(outcome.retry_in)
        assert loop.process_one() is None, "retried before its delay"
        assert outcome.retry_in is not None
        clock.advance(outcome.retry_in)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    final = loop.process_one()
    assert final is not None and final.outcome == "ok"
    assert loop.queue.attempts(KEY) == 0 and len(controller.seen) == 6


class MemoryBackoffs:
    def __init__(self) -> None:
        self.rows: dict[Key, tuple[int, datetime]] = {}

    def get_backoff(self, key: Key) -> tuple[int, datetime] | None:
        return self.rows.get(key)

    def set_backoff(self, key: Key, *, attempts: int, not_before: datetime) -> None:
        self.rows[key] = (attempts, not_before)

    def clear_backoff(self, key: Key) -> None:
        self.rows.pop(key, None)

    def all_backoffs(self) -> list[tuple[Key, int, datetime]]:
        return [(k, a, t) for k, (a, t) in self.rows.items()]


def test_backoff_survives_a_restart_of_the_loop() -> None:
    """A key that failed three times is not retried early by a new process, nor reset to 1 s."""
    clock = FakeClock()
    backoffs = MemoryBackoffs()
    loop, _ = make([RuntimeError("down")] * 3, clock, backoffs)
    loop.queue.add(KEY)
    for attempt in range(3):
        outcome = loop.process_one()
        assert outcome is not None and outcome.retry_in is not None
        if attempt < 2:
            clock.advance(outcome.retry_in)
    assert backoffs.rows[KEY][0] == 3  # the third failure waits 4 s
    # "Restart": a new queue and loop over the same store, one second after the failure.
    clock.advance(1.0)
    restarted, controller = make([RuntimeError("still down")], clock, backoffs)
    assert restarted.process_one() is None, "the restored key ran before its not_before"
    clock.advance(3.0)
    restarted.queue.poll()
    outcome = restarted.process_one()
    assert outcome is not None and outcome.outcome == "error"
    assert outcome.retry_in == 8.0, "the fourth failure backs off 8 s, not 1 s"
    assert controller.seen == [KEY]


def test_waiting_requeues_after_its_delay_without_counting_a_failure() -> None:
    """WaitingError looks again after retry_after and does not grow the backoff."""
    clock = FakeClock()
    loop, _ = make([WaitingError("all agents busy", retry_after=30), Result()], clock)
    loop.queue.add(KEY)
    outcome = loop.process_one()
    assert outcome is not None and (outcome.outcome, outcome.retry_in) == ("waiting", 30)
    assert loop.queue.attempts(KEY) == 0
    clock.advance(29)
    assert loop.process_one() is None
    clock.advance(1)
    assert loop.process_one() is not None


def test_a_stale_write_is_looked_at_again_shortly_without_backoff() -> None:
    """A record written by someone else meanwhile is a race, not a failure: the loop looks again
    after STALE_RETRY, for every controller, and the backoff does not grow."""
    clock = FakeClock()
    loop, _ = make([StaleStateError("task 1 changed"), StaleStateError("again"), Result()], clock)
    loop.queue.add(KEY)
    for _ in range(2):
        outcome = loop.process_one()
        assert outcome is not None and (outcome.outcome, outcome.retry_in) == (
            "waiting",
            STALE_RETRY,
        )
        assert loop.queue.attempts(KEY) == 0
        assert loop.process_one() is None
        clock.advance(STALE_RETRY)
    last = loop.process_one()
    assert last is not None and last.outcome == "ok"


def test_stalled_is_not_retried_until_the_key_is_added_again() -> None:
    """StalledError stops retries; a new add (an input changed) runs it again."""
    clock = FakeClock()
    loop, controller = make([StalledError("repo archived"), Result()], clock)
    loop.queue.add(KEY)
    outcome = loop.process_one()
    assert outcome is not None and (outcome.outcome, outcome.error) == ("stalled", "repo archived")
    clock.advance(10_000)
    assert loop.process_one() is None
    loop.queue.add(KEY)
    assert loop.process_one() is not None and len(controller.seen) == 2


def test_requeue_after_schedules_the_key_again() -> None:
    """Result(requeue_after=s) brings the key back after s seconds."""
    clock = FakeClock()
    loop, _ = make([Result(requeue_after=60)], clock)
    loop.queue.add(KEY)
    outcome = loop.process_one()
    assert outcome is not None and outcome.outcome == "requeued"
    clock.advance(60)
    assert loop.process_one() is not None


def test_a_key_for_an_unknown_controller_is_dropped_with_an_error() -> None:
    """A key naming no controller is reported, not retried forever."""
    clock = FakeClock()
    loop, _ = make([], clock)
    loop.queue.add(Key("nope", "", "1"))
    outcome = loop.process_one()
    assert outcome is not None and outcome.outcome == "unknown_controller"
    assert loop.process_one() is None


def test_metrics_count_reconciles_by_controller_and_outcome() -> None:
    """/metrics shows each reconcile under its controller and outcome."""
    clock = FakeClock()
    loop, _ = make([RuntimeError("x"), Result()], clock)
    loop.queue.add(KEY)
    loop.process_one()
    clock.advance(1)
    loop.process_one()
    text = loop._metrics.render().decode()  # type: ignore[union-attr]
    assert 'agent_fleet_reconciles_total{controller="fake",outcome="error"} 1.0' in text
    assert 'agent_fleet_reconciles_total{controller="fake",outcome="ok"} 1.0' in text


def test_the_same_key_never_runs_on_two_workers_at_once() -> None:
    """Workers hammering a few keys re-added constantly never overlap on one key."""
    holders: dict[Key, int] = defaultdict(int)
    overlaps: list[Key] = []
    lock = threading.Lock()
    runs = 0
    enough = threading.Event()
    keys = [Key("fake", "acme/web", str(n)) for n in range(3)]
    queue = WorkQueue(backoff_jitter=0.0)

    class Slowish:
        name = "fake"

        def reconcile(self, key: Key) -> Result:
            nonlocal runs
            with lock:
                holders[key] += 1
                if holders[key] > 1:
                    overlaps.append(key)
                runs += 1
                if runs >= 200:
                    enough.set()
            # Give other workers every chance to take the same key while this one holds it.
            for _ in range(200):
                queue.add(key)
            with lock:
                holders[key] -= 1
            return Result()

    loop = Loop((Slowish(),), queue, workers=8)
    loop.start()
    for _ in range(300):
        for key in keys:
            queue.add(key)
    assert enough.wait(timeout=30), f"only {runs} reconciles ran"
    assert loop.stop(grace=5)
    assert overlaps == []


def test_on_outcome_callbacks_see_every_reconcile() -> None:
    """The demo and tests observe each reconcile through on_outcome."""
    clock = FakeClock()
    loop, _ = make([Result()], clock)
    seen: list[Outcome] = []
    loop.on_outcome(seen.append)
    loop.queue.add(KEY)
    loop.process_one()
    assert [o.key for o in seen] == [KEY]


def test_duplicate_controller_names_are_refused() -> None:
    """Controllers are found by name, so two with one name is a wiring error."""
    queue = WorkQueue()
    with pytest.raises(ValueError, match="unique"):
        Loop((ScriptedController([]), ScriptedController([])), queue)


def test_backoff_kept_in_the_real_store_survives_a_restart(tmp_path: object) -> None:
    """The same restart, with the TinyDB store on disk closed and reopened in between."""
    from pathlib import Path

    from reconciler.store import Store

    path = Path(str(tmp_path)) / "state"
    clock = FakeClock()
    with Store.open(path) as store:
        loop, _ = make([RuntimeError("down")] * 2, clock, store)
        loop.queue.add(KEY)
        first = loop.process_one()
        assert first is not None and first.retry_in is not None
        clock.advance(first.retry_in)
        second = loop.process_one()
        assert second is not None and second.retry_in == 2.0
    with Store.open(path) as store:
        restarted, controller = make([RuntimeError("still down")], clock, store)
        assert restarted.process_one() is None, "ran before the stored not_before"
        clock.advance(2.0)
        restarted.queue.poll()
        third = restarted.process_one()
        assert third is not None and third.retry_in == 4.0
        assert controller.seen == [KEY]


class Blocking:
    """A controller whose every reconcile waits until released (a hung ssh call, say)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def reconcile(self, key: Key) -> Result:
        self.entered.release()
        self.release.wait(30)
        return Result()


def test_a_controller_stuck_in_every_worker_does_not_hold_up_another() -> None:
    """Each controller has workers of its own: with every worker of one blocked, the other
    controller's keys are still reconciled."""
    slow, quick = Blocking("slow"), ScriptedController([], name="quick")
    queue = WorkQueue(backoff_jitter=0.0)
    loop = Loop((slow, quick), queue, workers={"slow": 2, "quick": 1})
    done = threading.Event()
    loop.on_outcome(lambda outcome: done.set() if outcome.key.controller == "quick" else None)
    loop.start()
    try:
        for n in range(6):
            queue.add(Key("slow", "acme/web", str(n)))
        assert slow.entered.acquire(timeout=10) and slow.entered.acquire(timeout=10)
        queue.add(Key("quick", "acme/web", "1"))
        assert done.wait(timeout=10), "the quick controller waited for the stuck one"
        assert quick.seen == [Key("quick", "acme/web", "1")]
    finally:
        slow.release.set()
        assert loop.stop(grace=10)


def test_a_key_of_no_controller_is_reported_while_every_worker_is_busy() -> None:
    """A key naming no controller of the loop is taken by a worker of its own and reported,
    not left waiting behind the controllers' keys."""
    slow = Blocking("slow")
    queue = WorkQueue(backoff_jitter=0.0)
    loop = Loop((slow,), queue, workers=1)
    seen: list[Outcome] = []
    reported = threading.Event()

    def note(outcome: Outcome) -> None:
        seen.append(outcome)
        if outcome.outcome == "unknown_controller":
            reported.set()

    loop.on_outcome(note)
    loop.start()
    try:
        queue.add(Key("slow", "acme/web", "1"))
        assert slow.entered.acquire(timeout=10)
        queue.add(Key("nobody", "acme/web", "1"))
        assert reported.wait(timeout=10)
        assert [o.key.controller for o in seen] == ["nobody"]
    finally:
        slow.release.set()
        assert loop.stop(grace=10)
