"""The durable local state store; see :mod:`reconciler.store.store` and docs/state.md.

Import from here: ``from reconciler.store import Store``.
"""

from reconciler.store.schema import SCHEMA_VERSION, StoreVersionError
from reconciler.store.store import Store
from reconciler.store.tables import Backoff, JsonValue, OutboxMessage, encode_backoff_key

__all__ = [
    "SCHEMA_VERSION",
    "Backoff",
    "JsonValue",
    "OutboxMessage",
    "Store",
    "StoreVersionError",
    "encode_backoff_key",
]
