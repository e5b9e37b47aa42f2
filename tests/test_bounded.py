"""The bounded memory the gateway, the sandbox and the controllers keep."""

from __future__ import annotations

from reconciler.bounded import remember


def test_the_oldest_entries_go_first_and_a_rewritten_key_counts_as_the_newest() -> None:
    kept: dict[str, int] = {}
    for n, key in enumerate("abc"):
        remember(kept, key, n, limit=3)
    remember(kept, "a", 10, limit=3)  # rewritten: now the newest
    remember(kept, "d", 3, limit=3)  # the oldest, b, goes
    assert kept == {"c": 2, "a": 10, "d": 3}
    assert list(kept) == ["c", "a", "d"]
    remember(kept, "e", 4, limit=1)
    assert kept == {"e": 4}
