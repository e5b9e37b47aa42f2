"""Delivers the Matrix outbox to the homeserver, oldest first, at least once, seen once.

The Matrix thread (:mod:`reconciler.matrix.client`) calls :meth:`Deliverer.drain` after each
notifier scan; the demo never delivers. Each outbox message is sent with its own id as the
transaction id, so a send repeated after a crash or a lost answer is de-duplicated by the
homeserver (Synapse does so for the same access token and device: the bot keeps one token).

A message names what it relates to by *slot* (``task:<id>``, ``agent:<id>``), not by event id:
the event id a slot was posted as is recorded in the store's metadata after the send and
before the acknowledgement. A kill in between sends the same transaction again on restart,
and the homeserver answers with the same event id — nothing shows twice.

Failures: a 429 waits ``retry_after_ms``; a connection error, 5xx, or an auth/room error keeps
the message and backs off (the outbox grows during an outage and drains when the homeserver
returns); a request the homeserver refuses as malformed (other 4xx) is dropped and logged,
so one bad message cannot block the room for ever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from reconciler.matrix import format as fmt
from reconciler.matrix.notifier import SLOT_META_PREFIX, TOPIC, slot_event
from reconciler.store import OutboxMessage, Store

log = structlog.get_logger(__name__)


class SendError(Exception):
    """A send that did not land. ``retry_after``: seconds the homeserver asked us to wait
    (429); ``permanent``: the request itself is refused and resending cannot help."""

    def __init__(self, reason: str, *, retry_after: float | None = None, permanent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.permanent = permanent


class Transport(Protocol):
    """Sends one ``m.room.message`` under a transaction id; returns the event id."""

    def __call__(self, content: dict[str, Any], txn_id: str) -> Awaitable[str]: ...


@dataclass(frozen=True)
class DrainResult:
    delivered: int
    retry_after: float | None  # None: the outbox is empty (or only dropped messages)
    error: str = ""


def build_content(store: Store, message: OutboxMessage) -> tuple[dict[str, Any] | None, str | None]:
    """The event content for ``message`` now, and the slot to record its event id under.

    None content means there is nothing to send (a ``post`` whose slot was already posted,
    an ``update`` of a slot never posted).
    """
    payload = message.payload
    op = payload["op"]
    notice = fmt.Notice.from_payload(payload["notice"])
    slot: str | None = payload.get("slot")
    content = notice.content()
    if op in ("post", "upsert", "update"):
        existing = slot_event(store, slot) if slot else None
        if existing is None:
            if op == "update":
                return None, None
            return content, slot
        if op == "post":
            return None, None
        return _edit(notice, existing), None
    if op == "reply":
        thread_slot: str | None = payload.get("thread")
        root = payload.get("thread_event") or (
            slot_event(store, thread_slot) if thread_slot else None
        )
        if root:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": root},
            }
        return content, None
    raise ValueError(f"outbox message {message.id} has an unknown op {op!r}")


def _edit(notice: fmt.Notice, original: str) -> dict[str, Any]:
    return {
        "msgtype": "m.notice",
        "body": f"* {notice.plain}",
        "format": "org.matrix.custom.html",
        "formatted_body": f"* {notice.html}",
        "m.new_content": notice.content(),
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        # An edit never pings again: only the first version's mentions count.
        "m.mentions": {},
    }


class Deliverer:
    """Sends pending Matrix outbox messages in order; see the module docstring."""

    def __init__(
        self,
        store: Store,
        send: Transport,
        *,
        on_result: Callable[[str], None] = lambda result: None,
        after_send: Callable[[OutboxMessage, str], None] = lambda message, event_id: None,
    ) -> None:
        self._store = store
        self._send = send
        self._on_result = on_result
        # A test hook: runs between the send and its record (where a kill must not duplicate).
        self._after_send = after_send

    def depth(self) -> int:
        return len(self._store.pending(topic=TOPIC))

    async def drain(self, *, batch: int = 50) -> DrainResult:
        delivered = 0
        while True:
            pending = self._store.pending(topic=TOPIC, limit=batch)
            if not pending:
                return DrainResult(delivered, None)
            for message in pending:
                content, slot = build_content(self._store, message)
                if content is None:
                    self._store.ack(message.id)
                    self._on_result("skipped")
                    continue
                try:
                    event_id = await self._send(content, message.id)
                except SendError as exc:
                    if exc.permanent:
                        log.error("matrix.message_dropped", id=message.id, error=exc.reason)
                        self._store.ack(message.id)
                        self._on_result("dropped")
                        continue
                    self._on_result("rate_limited" if exc.retry_after is not None else "failed")
                    return DrainResult(delivered, exc.retry_after or 0.0, exc.reason)
                self._after_send(message, event_id)
                if slot is not None:
                    self._store.set_meta(SLOT_META_PREFIX + slot, event_id)
                self._store.ack(message.id)
                self._on_result("delivered")
                delivered += 1
