"""Reading untrusted request input without ever raising anything but a clean refusal.

Called by every HTTP surface that reads headers or bodies: the agent API
(``webhook/agents_api.py``), the pull agents' task API (``webhook/tasks_api.py``) and the
webhook receiver (``webhook/receiver.py``, for its JSON parse). Every function here either
returns well-formed data or raises :class:`InputError`, which the surfaces turn into a 4xx
JSON answer; nothing a client sends can turn into a 500.

* Headers are read from the WSGI environ as the latin-1 text PEP 3333 gives, never through
  Bottle's ``request.headers``, which re-decodes values as UTF-8 and raises on any other byte.
* A bearer token is visible ASCII or it is refused (401 ``malformed_token``); its value never
  appears in an answer or a log line.
* A body is refused by its declared ``Content-Length`` before a byte of it is read (413), and
  read from ``wsgi.input`` with a hard cap whatever the client declared.
* JSON is parsed with a nesting limit (:data:`MAX_JSON_DEPTH`), and text that is not valid
  Unicode (a lone surrogate, from an escape such as ``"\\ud800"``) is refused: what passes is
  safe to store, log and send on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# The deepest JSON any endpoint accepts. The deepest legitimate body (a receipt's artifacts)
# is 3 levels; the limit keeps a hostile body far from Python's recursion limit anywhere
# (json, pydantic, logging) while leaving room for clients that wrap what they send.
MAX_JSON_DEPTH = 32

_READ_CHUNK = 64 * 1024


class InputError(Exception):
    """A request refused for what the client sent: ``status`` and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


def header(environ: Mapping[str, Any], name: str) -> str:
    """The header ``name`` as the server received it (latin-1 text), ``""`` when absent."""
    key = name.upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "HTTP_" + key
    value = environ.get(key, "")
    return value if isinstance(value, str) else ""


def is_visible_ascii(text: str) -> bool:
    """Whether ``text`` is non-empty and only printable ASCII without spaces (token syntax)."""
    return bool(text) and all("!" <= ch <= "~" for ch in text)


def bearer_token(environ: Mapping[str, Any]) -> str | None:
    """The request's bearer token; None when there is none.

    Raises :class:`InputError` (401 ``malformed_token``) for a token with a byte outside
    visible ASCII: no issued token, operator token or enrolment secret can hold one, and the
    value is not repeated anywhere.
    """
    value = header(environ, "Authorization").strip()
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if not is_visible_ascii(token):
        raise InputError(
            401,
            "malformed_token",
            "the bearer token holds characters no token has (only visible ASCII is used)",
        )
    return token


def declared_length(environ: Mapping[str, Any]) -> int | None:
    """The declared ``Content-Length``; None when absent. 400 when it is not a length."""
    declared = header(environ, "Content-Length").strip()
    if not declared:
        return None
    if not declared.isascii() or not declared.isdigit():
        raise InputError(
            400, "bad_content_length", f"Content-Length {declared[:20]!r} is not a length"
        )
    return int(declared)


def read_body(environ: Mapping[str, Any], *, max_bytes: int) -> bytes:
    """The raw body: 413 by its declared length before reading, and never more than
    ``max_bytes`` read whatever was declared; a body that ends early is 400."""
    too_large = InputError(413, "body_too_large", f"the body is over {max_bytes} bytes")
    length = declared_length(environ)
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if length is not None:
        if length > max_bytes:
            raise too_large
        body = read_at_most(stream, length)
        if len(body) < length:
            raise InputError(
                400,
                "bad_content_length",
                f"the body ended after {len(body)} of the {length} bytes announced",
            )
        return body
    if not environ.get("wsgi.input_terminated"):
        # No length and a stream that may never end (PEP 3333): the body counts as empty.
        return b""
    body = read_at_most(stream, max_bytes + 1)
    if len(body) > max_bytes:
        raise too_large
    return body


def read_at_most(stream: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes from a WSGI input stream, in bounded reads."""
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        part = stream.read(min(remaining, _READ_CHUNK))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def parse_json(document: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``document`` parsed, or :class:`InputError` 400 ``malformed_json`` saying why.

    Refuses nesting deeper than ``max_depth`` (checked before parsing, so a deep document
    never reaches a recursive parser) and text that is not valid Unicode.
    """
    if _nesting_exceeds(document, max_depth):
        raise InputError(
            400, "malformed_json", f"the JSON is nested deeper than {max_depth} levels"
        )
    try:
        # From bytes json detects UTF-8/16/32 itself; a bad encoding is a ValueError too.
        data = json.loads(document)
    except (ValueError, RecursionError) as exc:
        raise InputError(400, "malformed_json", f"the body is not JSON: {_short(exc)}") from None
    if _may_hold_lone_surrogates(document) and not _valid_text(data):
        raise InputError(
            400,
            "malformed_json",
            "the JSON holds text that is not valid Unicode (a lone surrogate)",
        )
    return data


def _short(exc: Exception) -> str:
    return str(exc)[:200]


def _nesting_exceeds(document: str | bytes, max_depth: int) -> bool:
    """Whether brackets outside strings nest deeper than ``max_depth``.

    A scan that only a document with that many opening brackets needs to finish: the common
    case (few brackets) costs two ``count`` calls.
    """
    text = document if isinstance(document, str) else document.decode("latin-1")
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif ch in "]}":
            depth -= 1
    return False


# A lone surrogate reaches parsed JSON only through a ``\uD800``–``\uDFFF`` escape (bytes
# that decode as UTF-8 never hold one): a document without such an escape needs no walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_lone_surrogates(document: str | bytes) -> bool:
    """Whether parsing ``document`` may give text that is not valid Unicode: it has a
    surrogate escape (an escaped backslash before ``ud800`` counts too: a walk decides), or
    it is text that already holds a surrogate."""
    if isinstance(document, bytes):
        if b"\x00" in document or document[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return True  # UTF-16 or UTF-32, which json.loads reads too: the escape is wider
        return _SURROGATE_ESCAPE_BYTES.search(document) is not None
    return _SURROGATE_ESCAPE.search(document) is not None or not _encodes(document)


def _valid_text(data: object) -> bool:
    """Whether every string (key or value) in ``data`` encodes as UTF-8; iterative."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return False
        elif isinstance(item, dict):
            for key, value in item.items():
                if not _encodes(key):
                    return False
                pending.append(value)
        elif isinstance(item, list):
            pending.extend(item)
    return True


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
