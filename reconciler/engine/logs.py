"""Logging set-up: structlog with dotted event names and typed fields.

Called once by the CLI before a long-running command starts. Events are dotted names with
fields (``label.added``, ``task.assigned``). On a terminal the output is readable console
lines; otherwise (a service manager, a container) it is one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure_logging(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's root logger.

    ``json=None`` picks JSON when ``stream`` is not a terminal.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    renderer = _writable(
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False),
        encoding=getattr(stream, "encoding", None) or "utf-8",
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (waitress, httpx) go to the same stream.
    logging.basicConfig(stream=stream, level=max(numeric, logging.WARNING), force=True)


def _writable(renderer: structlog.typing.Processor, *, encoding: str) -> structlog.typing.Processor:
    """``renderer`` whose lines always encode in ``encoding``.

    Text from outside (a webhook's repository name, an error quoting it) can hold characters
    the stream cannot encode, such as a lone surrogate; printing such a line raises
    UnicodeEncodeError in whichever thread logs. They are written as backslash escapes.
    """

    def render(logger: Any, name: str, event_dict: Any) -> Any:
        line = renderer(logger, name, event_dict)
        if isinstance(line, str) and not line.isascii():
            return line.encode(encoding, "backslashreplace").decode(encoding)
        return line

    return render
