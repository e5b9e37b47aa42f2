"""How figures read for people: short durations in CLI output, comments and logs.

The console views (``reconciler/console/views.py``) and the registry and receipts controllers
(``controllers/registry.py``, ``controllers/receipts.py``) format durations with
:func:`format_duration`, so a duration reads the same wherever it is shown.
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h10m``, ``3d04h``: short, and exact enough for people."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


__all__ = ["format_duration"]
