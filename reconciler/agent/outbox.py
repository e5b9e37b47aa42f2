"""The pull worker's receipt outbox: receipts on disk until the daemon acknowledges them.

:class:`~reconciler.agent.worker.Worker` puts a receipt here when a run is done — it is in the
worker's own :class:`~reconciler.store.Store` (``--state-dir``) before anything is sent — and
its outbox thread calls :meth:`ReceiptOutbox.deliver_once`, which sends each due receipt to
``POST /api/v1/receipts`` and retries with exponential backoff until the daemon answers. The
receipt id is chosen once, when it is queued, and the daemon answers a receipt it already has
with its first answer: a worker or daemon restart at any point delivers every receipt exactly
once. A receipt the daemon refuses for good (its lease is stale, the task is gone) is dropped
with an error in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from pydantic import ValidationError

from reconciler.errors import NotFoundError, RefusedError, TransientError, UnauthenticatedError
from reconciler.fleet.api import ReceiptAnswer, ReceiptRequest
from reconciler.store import Store

log = structlog.get_logger(__name__)

RECEIPTS_TOPIC = "receipts"


class ReceiptOutbox:
    """Receipts waiting for the daemon's acknowledgement, and their delivery with backoff.

    ``send`` hands one receipt to the daemon (``AgentApi.submit_receipt``); ``on_settled`` is
    called when a receipt leaves the outbox, delivered or dropped.
    """

    def __init__(
        self,
        store: Store,
        *,
        send: Callable[[ReceiptRequest], ReceiptAnswer],
        monotonic: Callable[[], float],
        retry_initial: float,
        retry_max: float,
        on_settled: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._send = send
        self._monotonic = monotonic
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._on_settled = on_settled
        self._retry: dict[str, tuple[int, float]] = {}  # receipt id → (attempts, next try)
        self.delivered: list[str] = []  # receipt ids the daemon acknowledged

    def put(self, receipt: ReceiptRequest) -> str:
        """Queue a receipt (its ``receipt_id`` is the message id); on disk when this returns."""
        self._store.enqueue(
            RECEIPTS_TOPIC,
            receipt.model_dump(mode="json"),
            now=datetime.now(UTC),
            message_id=receipt.receipt_id,
        )
        return receipt.receipt_id

    def pending(self) -> list[tuple[str, ReceiptRequest | None]]:
        """(receipt id, receipt) of every receipt not yet acknowledged, oldest first; None for
        one that cannot be read back as a receipt."""
        found: list[tuple[str, ReceiptRequest | None]] = []
        for message in self._store.pending(topic=RECEIPTS_TOPIC):
            try:
                found.append((message.id, ReceiptRequest.model_validate(message.payload)))
            except ValidationError:
                found.append((message.id, None))
        return found

    def ack(self, receipt_id: str) -> None:
        self._store.ack(receipt_id)
        self._retry.pop(receipt_id, None)

    def deliver_once(self, *, force: bool = False) -> float | None:
        """Send every receipt whose retry is due (all of them with ``force``); acknowledged
        ones leave the outbox. Seconds until the next retry is due, or None when none waits."""
        now = self._monotonic()
        next_due: float | None = None
        for receipt_id, receipt in self.pending():
            attempts, due = self._retry.get(receipt_id, (0, now))
            if due > now and not force:
                next_due = due - now if next_due is None else min(next_due, due - now)
                continue
            if receipt is None:
                log.error(
                    "receipt.unreadable",
                    receipt=receipt_id,
                    message="the stored receipt is not a receipt; it is dropped",
                )
                self._settle(receipt_id)
                continue
            try:
                answer = self._send(receipt)
            except (TransientError, UnauthenticatedError) as exc:
                # Unauthenticated: the token changed under us; the heartbeat registers again.
                delay = min(self._retry_initial * 2**attempts, self._retry_max)
                self._retry[receipt_id] = (attempts + 1, now + delay)
                next_due = delay if next_due is None else min(next_due, delay)
                log.warning(
                    "receipt.retry", receipt=receipt_id, error=str(exc), retry_in=round(delay, 2)
                )
                continue
            except (RefusedError, NotFoundError) as exc:
                log.error(
                    "receipt.refused",
                    receipt=receipt_id,
                    task=receipt.task_id,
                    error=str(exc),
                    message="the daemon will never accept this receipt; it is dropped",
                )
            else:
                log.info(
                    "receipt.delivered",
                    receipt=receipt_id,
                    task=answer.task_id,
                    task_state=answer.task_state,
                )
                self.delivered.append(receipt_id)
            self._settle(receipt_id)
        if next_due is None and self._store.pending(topic=RECEIPTS_TOPIC):
            next_due = 0.0
        return next_due

    def _settle(self, receipt_id: str) -> None:
        self.ack(receipt_id)
        self._on_settled()


__all__ = ["RECEIPTS_TOPIC", "ReceiptOutbox"]
