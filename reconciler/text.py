"""How figures read for people: durations and retry times in CLI output, comments and logs.

Every place that shows a person a duration or when something is tried again formats it here,
so it reads the same in an issue comment, a wait reason, the CLI, the Matrix room and a log
line's human fields: :func:`format_duration` (``7.5 s``, ``3 min 5 s``), :func:`format_wait`
(``in 5 s`` for a short wait, ``at 07:23 UTC`` for a long one) and :func:`describe_error`
(an exception in people's words, without Python class names); and :func:`sanitize`, which
takes out of text from issues, comments and agents what a reader in Forgejo would not see,
before it reaches a prompt or the fleet's records. Callers include the console
views, the registry, assignment, review and receipts controllers, placement, the ssh executor,
the loop and the pull worker.
"""

from __future__ import annotations

import re
import socket
import unicodedata
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


def one_line(text: str, *, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# --- sanitising ---------------------------------------------------------------------------

# An HTML comment, closed the HTML5 ways (`-->`, `--!>`, the abrupt `<!-->` and `<!--->`).
# An unclosed one hides the rest of the document when rendered, so it is cut to the end.
_HTML_COMMENT = re.compile(r"<!--(?:-?>|.*?--!?>|.*\Z)", re.DOTALL)
# Markdown's "comment" idiom: a link reference definition to `#` or `<>`, never rendered.
_MARKDOWN_COMMENT = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(?:#|<>|<#>)(?:[ \t].*)?$", re.MULTILINE)
# Terminal control sequences: CSI (colours, cursor moves), OSC (titles, hyperlinks), others.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Characters outside the "C" categories that still show nothing: variation selectors (also
# used to smuggle data after an emoji), fillers, the combining grapheme joiner, braille blank.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
    "\U000e0100-\U000e01ef]"
)
_BLANK_RUN = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def sanitize(text: str) -> str:
    """``text`` without what a reader in Forgejo would not see.

    Removes HTML comments, Markdown comment lines, terminal escape sequences, control and
    format characters (zero-width characters, bidi overrides and isolates, tag characters,
    the BOM, soft hyphens), private-use and unassigned code points and other invisible
    characters; turns other Unicode spaces into plain spaces and line separators into
    newlines; keeps tabs and newlines, and at most one blank line in a row.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HTML_COMMENT.sub("", text)
    text = _MARKDOWN_COMMENT.sub("", text)
    text = _ANSI.sub("", text)
    text = _INVISIBLE.sub("", text)
    text = "".join(_visible(char) for char in text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUN.sub("\n\n", text).strip()


def _visible(char: str) -> str:
    if char in "\n\t":
        return char
    category = unicodedata.category(char)
    if category[0] == "C":  # Cc control, Cf format, Cs surrogate, Co private use, Cn unassigned
        return ""
    if category == "Zs":
        return " "
    if category in ("Zl", "Zp"):
        return "\n"
    return char


__all__ = ["LONG_WAIT", "describe_error", "format_duration", "format_wait", "one_line", "sanitize"]
