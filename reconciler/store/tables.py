"""The store's small tables: the outbox (messages waiting to be delivered), per-key backoff of
the work queue, and named metadata values. :class:`~reconciler.store.store.Store` has them
through :class:`SmallTables`; callers use them as ``store.enqueue(...)``, ``store.set_backoff(...)``,
``store.get_meta(...)``, under the store's one lock like every other method.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.errors import StoreError
from reconciler.keys import Key
from reconciler.store.storage import STATE_FILE, KeyedTable

# The table names of these tables in the TinyDB database (state.json and its journal).
_OUTBOX = "outbox"
_BACKOFF = "backoff"
_META = "meta"

JsonValue: TypeAlias = "str | int | float | bool | None | list[JsonValue] | dict[str, JsonValue]"


class Backoff(NamedTuple):
    """How often a key has failed in a row, and when it may be tried again."""

    attempts: int
    not_before: datetime


class OutboxMessage(BaseModel):
    """One outgoing message waiting to be delivered (a Matrix notice, a pull worker's receipt).

    ``id`` is stable across retries, so a receiver can deduplicate (Matrix uses it as the
    transaction id). ``seq`` orders the pending messages.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    topic: str = Field(min_length=1, description="who delivers it: 'matrix', 'receipts', ...")
    payload: dict[str, Any]
    enqueued_at: datetime
    seq: int = Field(ge=0)

    @field_validator("enqueued_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a time zone")
        return value


def encode_backoff_key(key: tuple[str, str, str]) -> str:
    """A stable text form of a work-queue key (controller, repo, id): the JSON array of its parts."""
    if (
        not isinstance(key, tuple)
        or len(key) != 3
        or not all(isinstance(part, str) for part in key)
    ):
        raise ValueError(
            f"a backoff key is a tuple of three strings (controller, repo, id), not {key!r}"
        )
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _json_roundtrip(value: Any, *, what: str) -> Any:
    """``value`` as it will read back from JSON; a clear error for what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data: {exc}") from exc


_Model = TypeVar("_Model", bound=BaseModel)


class SmallTables:
    """The outbox, backoff and metadata operations of :class:`~reconciler.store.store.Store`."""

    if TYPE_CHECKING:
        # Provided by Store: its directory, its one lock, its tables and its record loader.
        path: Path

        def _locked(self) -> AbstractContextManager[None]: ...

        def _table(self, name: str) -> KeyedTable: ...

        def _load(self, model: type[_Model], doc: Mapping[str, Any], *, where: str) -> _Model: ...

    # --- the outbox -------------------------------------------------------------------------

    def enqueue(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        now: datetime,
        message_id: str | None = None,
    ) -> OutboxMessage:
        """Queue a message durably; it stays pending until :meth:`ack`.

        Enqueueing an id that is already pending returns the pending message unchanged, so a
        caller that retries after a crash does not queue it twice.
        """
        with self._locked():
            outbox = self._table(_OUTBOX)
            if message_id is not None:
                existing = outbox.get_doc(message_id)
                if existing is not None:
                    return self._load(OutboxMessage, existing, where=f"outbox/{message_id}")
            last = max((int(doc["seq"]) for _, doc in outbox.docs()), default=-1)
            try:
                message = OutboxMessage(
                    id=message_id or uuid.uuid4().hex,
                    topic=topic,
                    payload=_json_roundtrip(payload, what="an outbox payload"),
                    enqueued_at=now,
                    seq=last + 1,
                )
            except ValidationError as exc:
                raise ValueError(f"cannot enqueue the message: {exc}") from exc
            outbox.put_doc(message.id, _dump(message))
            return message

    def pending(self, *, topic: str | None = None, limit: int | None = None) -> list[OutboxMessage]:
        """Messages not yet acknowledged, oldest first; reading does not remove them."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be zero or more, not {limit}")
        with self._locked():
            docs = sorted(
                (
                    doc
                    for _, doc in self._table(_OUTBOX).docs()
                    if topic in (None, doc.get("topic"))
                ),
                key=lambda doc: int(doc["seq"]),
            )
            return [
                self._load(OutboxMessage, doc, where=f"outbox/{doc.get('id')}")
                for doc in docs[:limit]
            ]

    def ack(self, message_id: str) -> bool:
        """Mark a message delivered (remove it); return whether it was pending."""
        with self._locked():
            return self._table(_OUTBOX).delete_docs([message_id]) == 1

    # --- per-key backoff --------------------------------------------------------------------

    def get_backoff(self, key: tuple[str, str, str]) -> Backoff | None:
        encoded = encode_backoff_key(key)
        with self._locked():
            doc = self._table(_BACKOFF).get_doc(encoded)
            return None if doc is None else self._load_backoff(doc, where=f"backoff/{encoded}")

    def set_backoff(
        self, key: tuple[str, str, str], *, attempts: int, not_before: datetime
    ) -> None:
        encoded = encode_backoff_key(key)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError(f"attempts must be a non-negative integer, not {attempts!r}")
        if not_before.tzinfo is None:
            raise ValueError("not_before must carry a time zone")
        doc = {"key": list(key), "attempts": attempts, "not_before": not_before.isoformat()}
        with self._locked():
            self._table(_BACKOFF).put_doc(encoded, doc)

    def clear_backoff(self, key: tuple[str, str, str]) -> None:
        encoded = encode_backoff_key(key)
        with self._locked():
            table = self._table(_BACKOFF)
            # Clearing is called after every success: skip the write when there is nothing.
            if table.get_doc(encoded) is not None:
                table.delete_docs([encoded])

    def all_backoffs(self) -> list[tuple[Key, int, datetime]]:
        """Every key with a recorded backoff; the work queue reschedules them at start."""
        with self._locked():
            found: list[tuple[Key, int, datetime]] = []
            for doc_id, doc in self._table(_BACKOFF).docs():
                backoff = self._load_backoff(doc, where=f"backoff/{doc_id}")
                found.append((Key(*doc["key"]), backoff.attempts, backoff.not_before))
            return found

    def _load_backoff(self, doc: Mapping[str, Any], *, where: str) -> Backoff:
        try:
            key = doc["key"]
            if not isinstance(key, list):
                raise TypeError("key must be a list of three strings")
            encode_backoff_key(tuple(key))  # raises ValueError when the key is malformed
            attempts = doc["attempts"]
            not_before = datetime.fromisoformat(doc["not_before"])
            if not isinstance(attempts, int) or not_before.tzinfo is None:
                raise ValueError("attempts must be an integer and not_before carry a time zone")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path / STATE_FILE}: {where} is invalid: {exc!r}") from exc
        return Backoff(attempts, not_before)

    # --- metadata ---------------------------------------------------------------------------

    def get_meta(self, name: str) -> JsonValue:
        """A small named value (e.g. ``last_resync:org/repo``), or None when never set."""
        with self._locked():
            doc = self._table(_META).get_doc(name)
            return None if doc is None else doc["value"]

    def set_meta(self, name: str, value: JsonValue) -> None:
        if not name:
            raise ValueError("a metadata name must not be empty")
        doc = {"value": _json_roundtrip(value, what=f"metadata {name!r}")}
        with self._locked():
            self._table(_META).put_doc(name, doc)
