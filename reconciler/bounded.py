"""Memory kept in bounded dicts: the newest entries stay, the oldest are forgotten first."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(kept: dict[K, V], key: K, value: V, *, limit: int) -> None:
    """Keep ``value`` under ``key`` in ``kept`` (a dict in insertion order) and forget the
    oldest entries beyond ``limit``; a key written again counts as the newest. The caller
    holds whatever lock guards ``kept``."""
    kept.pop(key, None)
    while kept and len(kept) >= limit:
        kept.pop(next(iter(kept)))
    kept[key] = value
