"""Request and answer plumbing of the sandbox forge's REST API: Go-compatible JSON answers,
Forgejo's paging (``limit`` <= 0 -> 30, > 50 -> 50, ``X-Total-Count``, RFC 5988 ``Link``) and
reading request bodies with Forgejo's refusals. The routes (``api.py``, ``api_pulls.py``) use it.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox.state import (
    Invalid,
)

DEFAULT_PAGING_NUM = 30
MAX_RESPONSE_ITEMS = 50
_JSON_TYPE = "application/json;charset=utf-8"

T = TypeVar("T")
Handler = Callable[..., bottle.HTTPResponse]


def go_json(value: Any) -> bytes:
    """Compact JSON with Go's HTML escaping, as Forgejo's API writes it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    return text.encode()


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> bottle.HTTPResponse:
    """A JSON answer."""
    answer = bottle.HTTPResponse(body=go_json(value), status=status, headers=headers or {})
    answer.content_type = _JSON_TYPE
    return answer


def empty_response(status: int = 204) -> bottle.HTTPResponse:
    """An answer without a body (204, or the 200 of a merge)."""
    return bottle.HTTPResponse(body=b"", status=status)


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 query parameter (``since``/``before``), 422 when malformed."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid(f"parsing time {raw!r} as RFC 3339: invalid {name}") from None
    if moment.tzinfo is None:
        raise Invalid(f"parsing time {raw!r} as RFC 3339: {name} needs a time zone")
    return moment


class Paging:
    """Forgejo's ``page``/``limit`` handling and its response headers."""

    def __init__(self, request: bottle.BaseRequest) -> None:
        self.page = max(_int_param(request, "page"), 1)
        limit = _int_param(request, "limit")
        self.limit = DEFAULT_PAGING_NUM if limit <= 0 else min(limit, MAX_RESPONSE_ITEMS)

    def slice(self, items: Sequence[T]) -> list[T]:
        """This page's items."""
        start = (self.page - 1) * self.limit
        return list(items[start : start + self.limit])

    def headers(
        self,
        total: int,
        *,
        app_url: str,
        request: bottle.BaseRequest,
        link: bool = True,
        commit_headers: bool = False,
    ) -> dict[str, str]:
        """``X-Total-Count``, ``Link`` (next, last, first, prev) and, for git lists, X-Page..."""
        headers = {"X-Total-Count": str(total)}
        exposed = []
        pages = max(math.ceil(total / self.limit), 1)
        current = min(self.page, pages)
        if link:
            links = []
            for rel, target, wanted in (
                ("next", current + 1, current < pages),
                ("last", pages, current < pages),
                ("first", 1, current > 1),
                ("prev", current - 1, current > 1),
            ):
                if wanted:
                    links.append(f'<{self._url(app_url, request, target)}>; rel="{rel}"')
            if links:
                headers["Link"] = ",".join(links)
                exposed.append("Link")
        exposed.append("X-Total-Count")
        if commit_headers:
            headers.update(
                {
                    "X-Page": str(self.page),
                    "X-PerPage": str(self.limit),
                    "X-PageCount": str(pages),
                    "X-HasMore": "true" if self.page < pages else "false",
                }
            )
            exposed += ["X-Page", "X-PerPage", "X-PageCount", "X-HasMore"]
        headers["Access-Control-Expose-Headers"] = ", ".join(exposed)
        return headers

    @staticmethod
    def _url(app_url: str, request: bottle.BaseRequest, page: int) -> str:
        query = [(k, v) for k, v in request.query.allitems() if k != "page"]
        query.append(("page", str(page)))
        # Go's url.Values.Encode sorts by key.
        encoded = urllib.parse.urlencode(sorted(query, key=lambda kv: kv[0]))
        path = urllib.parse.quote(request.path.lstrip("/"), safe="/:@!$&'()*+,;=-._~")
        return f"{app_url}{path}?{encoded}"


def _int_param(request: bottle.BaseRequest, name: str) -> int:
    try:
        return int(request.query.get(name, "0") or "0")
    except ValueError:
        return 0  # Forgejo's FormInt reads a malformed number as 0


class Body:
    """A request's JSON object with typed, validated field access."""

    def __init__(self, request: bottle.BaseRequest) -> None:
        raw = request.body.read()
        if not raw.strip():
            self.data: dict[str, Any] = {}
            return
        try:
            parsed = json.loads(raw)
        except ValueError as bad:
            raise Invalid(f"invalid JSON body: {bad}") from None
        if not isinstance(parsed, dict):
            raise Invalid("the request body must be a JSON object")
        self.data = parsed

    def has(self, name: str) -> bool:
        """Whether the field is present and not null."""
        return self.data.get(name) is not None

    def text(self, name: str, default: str = "", *, required: bool = False) -> str:
        """A string field."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise Invalid(f"[{name.capitalize()}]: Required")
            return default
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string")
        return value

    def optional_text(self, name: str) -> str | None:
        """A string field that may be absent."""
        return self.text(name) if self.has(name) else None

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean field."""
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise Invalid(f"{name} must be a boolean")
        return value

    def ids(self, name: str) -> list[int]:
        """A list of integer ids."""
        value = self.data.get(name) or []
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise Invalid(f"{name} must be a list of integer ids")
        return value

    def strings(self, name: str) -> list[str]:
        """A list of strings."""
        value = self.data.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid(f"{name} must be a list of strings")
        return value

    def assignees(self) -> list[str]:
        """``assignees`` with the older single ``assignee`` first, as Forgejo reads them."""
        names = self.strings("assignees")
        return [self.text("assignee"), *names] if self.has("assignee") else names

    def items(self, name: str) -> list[object]:
        """A list of ids or names (label identifiers)."""
        value = self.data.get(name) or []
        if not isinstance(value, list):
            raise Invalid(f"{name} must be a list")
        return value

    def mapping(self, name: str) -> dict[str, str] | None:
        """A string-to-string object field, None when absent."""
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise Invalid(f"{name} must be an object of strings")
        return value
