"""Group commit: callers that each need a durable write at the same moment share one.

Used by :class:`reconciler.fleet.queue.PullQueue`, whose dequeues each assign a task: one durable
write of the live state per assignment serialises a burst of agents behind each other's
``fsync``. :class:`GroupCommit` batches them, leader/follower style:

* a caller submits its request (:meth:`GroupCommit.submit`) and waits;
* when no batch is being committed, the caller becomes the *leader*: it takes every request
  waiting (its own among them), runs the commit function on them once — one durable write —
  and wakes the callers with their answers;
* callers arriving while a batch is committed queue up; when it is done, one of them leads
  the next batch, holding everything that queued meanwhile.

An idle queue adds no latency: a lone request is its own batch at once. No answer is given
before its batch's commit function returned, and a commit that raises fails every request of
its batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class _Waiter(Generic[Request, Answer]):
    """One submitted request and, once its batch is committed, its answer or its error."""

    __slots__ = ("answer", "error", "request", "settled")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.settled = False
        self.answer: Answer | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Request, Answer]):
    """Batch concurrent requests into single calls of ``commit``.

    ``commit`` gets the batch's requests in arrival order and returns one outcome per request,
    in the same order: the answer, or an :class:`Exception` instance for that request alone
    (each caller raises its own; one exception object is never raised in two threads). If
    ``commit`` raises, the leader raises that error and every other caller of the batch a
    :class:`RuntimeError` chained to it: nothing of the batch was acknowledged.
    """

    def __init__(self, commit: Callable[[Sequence[Request]], Sequence[Answer | Exception]]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        # Waiters of a batch being committed wait on ``_settled``; ``_arrived`` is for
        # observers of the queue (wait_for_waiting), so arrivals never wake the waiters.
        self._settled = threading.Condition(self._lock)
        self._arrived = threading.Condition(self._lock)
        self._waiting: list[_Waiter[Request, Answer]] = []
        self._leading = False
        self._batches = 0

    @property
    def batches(self) -> int:
        """How many batches were committed (or failed) so far."""
        with self._lock:
            return self._batches

    @property
    def waiting(self) -> int:
        """How many requests wait for the next batch (not counting one being committed)."""
        with self._lock:
            return len(self._waiting)

    def wait_for_waiting(self, count: int, *, timeout: float) -> bool:
        """Block until at least ``count`` requests wait for the next batch, or ``timeout``
        seconds pass; whether they do. For tests and benches that need a batch formed."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._waiting) >= count, timeout)

    def submit(self, request: Request) -> Answer:
        """Commit ``request`` with whatever else is submitted meanwhile; its answer once the
        batch holding it is durable."""
        waiter: _Waiter[Request, Answer] = _Waiter(request)
        batch: list[_Waiter[Request, Answer]] = []
        with self._lock:
            self._waiting.append(waiter)
            self._arrived.notify_all()
            while self._leading and not waiter.settled:
                self._settled.wait()
            if not waiter.settled:
                # No batch in progress: lead the next one, with everything queued so far.
                self._leading = True
                batch, self._waiting = self._waiting, []
        if batch:
            self._lead(batch, leader=waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.answer  # type: ignore[return-value]  # settled without error: an Answer

    def _lead(
        self, batch: list[_Waiter[Request, Answer]], *, leader: _Waiter[Request, Answer]
    ) -> None:
        """Commit ``batch``, settle every waiter in it and hand the lead on; a failed commit
        fails the whole batch and is raised to the leader."""
        try:
            outcomes = self._commit([waiter.request for waiter in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"the group commit answered {len(outcomes)} of {len(batch)} requests"
                )
        except BaseException as exc:
            self._settle(
                batch,
                [exc if waiter is leader else _follower_error(exc, batch) for waiter in batch],
            )
            raise
        self._settle(batch, outcomes)

    def _settle(
        self,
        batch: list[_Waiter[Request, Answer]],
        outcomes: Sequence[Answer | BaseException],
    ) -> None:
        with self._lock:
            for waiter, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    waiter.error = outcome
                else:
                    waiter.answer = outcome
                waiter.settled = True
            self._batches += 1
            self._leading = False
            self._settled.notify_all()


def _follower_error(failure: BaseException, batch: Sequence[object]) -> RuntimeError:
    error = RuntimeError(
        f"the batch of {len(batch)} requests this one was committed in failed: {failure!r}"
    )
    error.__cause__ = failure
    return error


__all__ = ["GroupCommit"]
