"""The reconcile loop: worker threads taking keys from the work queue to their controller.

The loop owns everything controllers must not do themselves: queueing, deduplication,
concurrency (one key never on two workers, guaranteed by the queue), retries with per-key
backoff, and crash handling. What happens after a reconcile depends only on how it ended:

* returned ``Result()`` → the key's backoff is cleared;
* returned ``Result(requeue_after=s)`` → cleared, and the key is looked at again in ``s`` seconds;
* raised ``WaitingError`` → looked at again after its ``retry_after``, logged at info;
* raised ``StalledError`` → not retried until something enqueues the key again;
* raised anything else → retried with exponential backoff (kept in the store across restarts).

Each controller has worker threads of its own (``workers``: one count for all, or a count per
controller name), taking only its keys from the shared queue: a controller whose reconciles are
slow holds up its own keys, never another's.

Each reconcile ends with one summary log line: controller, key, outcome, actions, duration.
The daemon, ``agent-fleet reconcile --once`` and the demo drive it.

A worker outlives anything a reconcile raises, its own logging included (a log line that
cannot be written is dropped, never fatal). Each worker keeps a liveness record — alive, and
since when it is on its current key — that :meth:`Loop.health` reports and the daemon's
``/readyz`` checks, so a dead or stuck worker makes the process not ready.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from reconciler.engine.metrics import Metrics
from reconciler.engine.reconcile import Controller, recording
from reconciler.engine.workqueue import WorkQueue
from reconciler.errors import StaleStateError, StalledError, WaitingError
from reconciler.keys import Key
from reconciler.text import describe_error, format_duration

STALE_RETRY = 0.5
"""Seconds before a key whose write met a newer record (``StaleStateError``) is looked at again."""

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one reconcile ended; returned by :meth:`Loop.process_one` for callers and tests."""

    key: Key
    outcome: str  # ok, requeued, waiting, stalled, error, unknown_controller
    actions: tuple[str, ...]
    duration: float
    error: str = ""
    retry_in: float | None = None


@dataclass(frozen=True)
class LoopHealth:
    """What :meth:`Loop.health` finds: workers started and alive, and the ones stuck."""

    started: bool
    workers: int
    alive: int
    stuck: tuple[tuple[str, Key, float], ...]  # (worker, key, seconds on it)

    @property
    def ok(self) -> bool:
        return self.started and self.alive == self.workers and not self.stuck

    def describe(self) -> str:
        if not self.started:
            return "the reconcile loop has not started"
        parts = [f"{self.alive} of {self.workers} workers alive"]
        parts += [f"{name} on {key} for {format_duration(age)}" for name, key, age in self.stuck]
        return "; ".join(parts)


class Loop:
    def __init__(
        self,
        controllers: Sequence[Controller],
        queue: WorkQueue,
        *,
        workers: int | Mapping[str, int] = 4,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [c.name for c in controllers]
        if len(set(names)) != len(names):
            raise ValueError(f"controller names must be unique, got {names}")
        counts = {
            name: workers if isinstance(workers, int) else workers.get(name, 1) for name in names
        }
        if any(count < 1 for count in counts.values()):
            raise ValueError(f"every controller needs at least one worker, got {counts}")
        self._controllers = {c.name: c for c in controllers}
        self.queue = queue
        self._workers = counts
        self._metrics = metrics
        self._clock = clock
        self._threads: list[threading.Thread] = []
        # worker name → (key, when it took it) while it reconciles; the liveness record.
        self._busy: dict[str, tuple[Key, float]] = {}
        self._ids = itertools.count(1)
        self._on_outcome: list[Callable[[Outcome], None]] = []
        if metrics is not None:
            metrics.bind_queue(lambda: float(queue.depth()), lambda: float(queue.processing()))

    @property
    def controller_names(self) -> tuple[str, ...]:
        return tuple(self._controllers)

    def on_outcome(self, callback: Callable[[Outcome], None]) -> None:
        """Call ``callback`` after every reconcile (the demo prints them; tests observe them)."""
        self._on_outcome.append(callback)

    # --- running ------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the loop is already running")
        for name, count in self._workers.items():
            for n in range(count):
                thread = threading.Thread(
                    target=self._work, args=(name,), name=f"reconcile-{name}-{n + 1}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        # Keys no controller here takes (a kind nobody runs) are reported, not left waiting.
        thread = threading.Thread(
            target=self._work, args=(None,), name="reconcile-unknown", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        _safe(log.info, "loop.started", workers=self._workers, controllers=list(self._controllers))

    def stop(self, *, grace: float) -> bool:
        """Stop taking keys, let in-flight reconciles finish (up to ``grace`` seconds).

        Returns True when every worker finished in time.
        """
        drained = self.queue.shut_down_with_drain(grace)
        deadline = self._clock() + max(grace, 0.0)
        for thread in self._threads:
            thread.join(timeout=max(deadline - self._clock(), 0.1))
        finished = drained and not any(t.is_alive() for t in self._threads)
        _safe(log.info, "loop.stopped", drained=finished)
        return finished

    def health(self, *, stuck_after: float) -> LoopHealth:
        """Whether every worker is alive and none has been on one key over ``stuck_after`` s."""
        now = self._clock()
        stuck = tuple(
            (name, key, now - since)
            for name, (key, since) in sorted(self._busy.items())
            if now - since > stuck_after
        )
        alive = sum(1 for t in self._threads if t.is_alive())
        return LoopHealth(
            started=bool(self._threads), workers=len(self._threads), alive=alive, stuck=stuck
        )

    def _work(self, controller: str | None) -> None:
        name = threading.current_thread().name
        while True:
            if controller is None:
                key = self.queue.get(timeout=None, excluding=tuple(self._controllers))
            else:
                key = self.queue.get(timeout=None, controller=controller)
            if key is None:
                return
            self._busy[name] = (key, self._clock())
            try:
                self._run(key)
            except Exception:  # noqa: BLE001 -- a worker must outlive whatever a key does
                # _run has marked the key done; a failure here is in the loop's own
                # bookkeeping or logging, and the key comes back with the next resync.
                _safe(log.error, "loop.worker_error", key=str(key), exc_info=True)
            finally:
                self._busy.pop(name, None)

    def process_one(self, *, timeout: float | None = 0.0) -> Outcome | None:
        """Take one ready key and reconcile it in the calling thread (one-shot runs, tests)."""
        key = self.queue.get(timeout=timeout)
        if key is None:
            return None
        return self._run(key)

    def drain(self, *, limit: int = 100_000) -> list[Outcome]:
        """Reconcile every ready key in the calling thread until none is ready."""
        outcomes: list[Outcome] = []
        while len(outcomes) < limit:
            outcome = self.process_one(timeout=0.0)
            if outcome is None:
                break
            outcomes.append(outcome)
        return outcomes

    # --- one reconcile ------------------------------------------------------------------

    def _run(self, key: Key) -> Outcome:
        reconcile_id = next(self._ids)
        bound = log.bind(controller=key.controller, key=str(key), reconcile_id=reconcile_id)
        controller = self._controllers.get(key.controller)
        started = self._clock()
        error = ""
        retry_in: float | None = None
        actions: list[str] = []
        try:
            bound = bound.bind(attempt=self.queue.attempts(key) + 1)
            if controller is None:
                outcome = "unknown_controller"
                self.queue.forget(key)
                _safe(bound.error, "reconcile.unknown_controller", known=list(self._controllers))
            else:
                with recording() as actions:
                    try:
                        result = controller.reconcile(key)
                    except WaitingError as exc:
                        outcome, error, retry_in = "waiting", exc.reason, exc.retry_after
                        self.queue.forget(key)
                        self.queue.add_after(key, exc.retry_after)
                    except StaleStateError as exc:
                        # Someone else wrote the record meanwhile (another controller, a run,
                        # an agent): a race that clears by itself. Look again shortly, with
                        # the new state, at info level rather than as a failure.
                        outcome, error, retry_in = "waiting", str(exc), STALE_RETRY
                        self.queue.forget(key)
                        self.queue.add_after(key, STALE_RETRY)
                    except StalledError as exc:
                        outcome, error = "stalled", exc.reason
                        self.queue.forget(key)
                    except Exception as exc:  # noqa: BLE001 -- unknown errors count as transient
                        outcome, error = "error", describe_error(exc)
                        retry_in = self.queue.backoff(key, error)
                        _safe(
                            bound.warning,
                            "reconcile.failed",
                            error=error,
                            error_type=type(exc).__name__,
                            retry_in=round(retry_in, 3),
                            exc_info=True,
                        )
                    else:
                        self.queue.forget(key)
                        if result.requeue_after is not None:
                            outcome, retry_in = "requeued", result.requeue_after
                            self.queue.add_after(key, result.requeue_after)
                        else:
                            outcome = "ok"
        finally:
            self.queue.done(key)
        duration = self._clock() - started
        summary = Outcome(
            key=key,
            outcome=outcome,
            actions=tuple(actions),
            duration=duration,
            error=error,
            retry_in=retry_in,
        )
        level = bound.warning if outcome == "stalled" else bound.info
        _safe(
            level,
            "reconcile.done",
            outcome=outcome,
            actions=len(actions),
            duration_ms=round(duration * 1000, 2),
            **({"reason": error} if error and outcome != "error" else {}),
            **({"retry_in": round(retry_in, 3)} if retry_in is not None else {}),
        )
        if self._metrics is not None:
            self._metrics.reconciles.labels(controller=key.controller, outcome=outcome).inc()
            self._metrics.reconcile_duration.labels(controller=key.controller).observe(duration)
        for callback in self._on_outcome:
            callback(summary)
        return summary


def _safe(emit: Callable[..., object], event: str, **fields: object) -> None:
    """Log, and never raise: a line that cannot be written is dropped, not fatal."""
    try:
        emit(event, **fields)
    except Exception:  # noqa: BLE001 -- logging must not take a worker down
        with contextlib.suppress(Exception):
            log.error("log.write_failed", dropped=event.encode("ascii", "replace").decode())
