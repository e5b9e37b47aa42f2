"""How figures read for people: durations and retry times in CLI output, comments and logs.

Every place that shows a person a duration or when something is tried again formats it here,
so it reads the same in an issue comment, a wait reason, the CLI, the Matrix room and a log
line's human fields: :func:`format_duration` (``7.5 s``, ``3 min 5 s``), :func:`format_wait`
(``in 5 s`` for a short wait, ``at 07:23 UTC`` for a long one) and :func:`describe_error`
(an exception in people's words, without Python class names). Callers include the console
views, the registry, assignment, review and receipts controllers, placement, the ssh executor,
the loop and the pull worker.
"""

from __future__ import annotations

import re
import socket
from datetime import datetime

LONG_WAIT = 3600.0
"""Waits at least this long (seconds) read as a clock time (``at 07:23 UTC``), not ``in …``."""


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``7.5 s``, ``45 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``, for people.

    Under ten seconds one decimal is kept (dropped when it is zero); above, whole seconds,
    then the two largest units.
    """
    value = max(float(seconds), 0.0)
    if round(value, 1) < 10:
        tenths = round(value, 1)
        return f"{tenths:.0f} s" if tenths == int(tenths) else f"{tenths:.1f} s"
    whole = round(value)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_wait(until: datetime, *, now: datetime) -> str:
    """When something happens next: ``in 5 s`` for a short wait, ``at 07:23 UTC`` past an hour.

    ``now`` for a moment already past. Both datetimes are timezone-aware (UTC in the store).
    """
    seconds = (until - now).total_seconds()
    if seconds <= 0:
        return "now"
    if seconds < LONG_WAIT:
        return f"in {format_duration(seconds)}"
    return f"at {until:%H:%M} UTC"


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def describe_error(exc: BaseException) -> str:
    """An exception as people read it: its message, or a plain phrase when it has none.

    Python class names never appear: ``TimeoutError()`` reads ``timed out``, a connection
    error its OS reason, and an empty message of any other class a lower-case phrase made
    from the class name (``RuntimeError()`` → ``runtime failure``, ``ReadTimeout()`` →
    ``timed out``).
    """
    if isinstance(exc, TimeoutError | socket.timeout):
        return str(exc) or "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror.rstrip('.')}{where}"
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        return f"missing {exc.args[0]!r}"
    if text:
        return text
    name = type(exc).__name__.removesuffix("Error").removesuffix("Exception") or "unexpected"
    words = _CAMEL.sub(" ", name).lower()
    return "timed out" if words.endswith("timeout") else f"{words} failure"


__all__ = ["LONG_WAIT", "describe_error", "format_duration", "format_wait"]
