"""The HTTP layer under the Forgejo gateway: one request path, retries, paging, error mapping.

``ForgejoHttp`` is the base of ``reconciler.forgejo.gateway.ForgejoGateway`` (through the
operation groups in ``comments.py`` and ``pulls.py``); nothing else uses it directly. It

* sends requests through pyforgejo's HTTP client (``PyforgejoApi``: base URL, the
  ``Authorization: token`` header, timeouts, query encoding) with pyforgejo's own retry switched
  off on every call, because pyforgejo re-sends POSTs and retries 409s;
* parses each JSON body exactly once into the frozen models of ``reconciler.forgejo.types``.
  pyforgejo's typed models are not used: they reject the ``null`` list bodies real servers send,
  and every list call needs the paging headers anyway;
* follows pagination (``limit=50``, ``Link: rel="next"`` / ``X-Total-Count``);
* retries reads (and the few idempotent writes) on connection errors, timeouts, 5xx and 429,
  honouring ``Retry-After``; everything else is raised at once;
* maps failures onto ``reconciler.errors``' ``ForgejoError`` family.

Only the modules of ``reconciler/forgejo/`` import pyforgejo or httpx.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from pyforgejo import PyforgejoApi
from pyforgejo.core.http_client import HttpClient

from reconciler.errors import (
    ForgejoConflict,
    ForgejoError,
    ForgejoForbidden,
    ForgejoNotFound,
    ForgejoRateLimited,
    ForgejoServerError,
    WaitingError,
)
from reconciler.forgejo.pull_types import ChangedFile, Commit, PullRequest
from reconciler.forgejo.repo_types import RepoPermission
from reconciler.forgejo.seen import SeenItems
from reconciler.forgejo.transport import transport_for
from reconciler.forgejo.types import (
    ApiLimits,
    Comment,
    Issue,
    Label,
    MalformedResponse,
    Page,
    User,
    list_body,
)
from reconciler.text import describe_error

__all__ = [
    "MAX_RETRY_WAIT",
    "PAGE_SIZE",
    "WRITE_OPERATIONS",
    "ForgejoHttp",
    "IssueKind",
    "ListState",
    "WriteOutcome",
    "repo_path",
    "rfc3339",
    "seg",
    "split_repo",
    "state_params",
    "total_count",
    "unique_names",
]

PAGE_SIZE = 50
"""Forgejo's default ``[api] MAX_RESPONSE_ITEMS``: larger limits are silently clamped to it."""

MAX_RETRY_WAIT = 60.0
"""Longest ``Retry-After`` the gateway sleeps through; longer waits go back to the loop."""

BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0

ListState = Literal["open", "closed", "all"]
IssueKind = Literal["issues", "pulls"]
WriteOutcome = Literal["created", "edited", "unchanged"]

WRITE_OPERATIONS = frozenset(
    {
        "create_repo",
        "create_issue",
        "edit_issue",
        "create_label",
        "edit_label",
        "add_labels",
        "remove_label",
        "replace_labels",
        "create_comment",
        "edit_comment",
        "delete_comment",
        "create_pull",
        "merge_pull",
        "create_review",
        "create_status",
        "add_collaborator",
        "create_hook",
        "edit_hook",
        "create_file",
        "add_dependency",
        "remove_dependency",
        "create_wiki_page",
        "edit_wiki_page",
    }
)
"""Operation names (as passed to ``on_call``) whose HTTP call changes Forgejo."""

# Transport errors raised before any byte of the request left: the request surely did nothing.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_EXCERPT = 200

ModelT = TypeVar("ModelT")
ItemT = TypeVar("ItemT", Issue, PullRequest)
"""An item ``seen`` records and may keep: an issue or a pull request."""


def split_repo(repo: str) -> tuple[str, str]:
    owner, sep, name = repo.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"repository must be given as 'owner/name', got {repo!r}")
    return owner, name


def seg(value: str | int) -> str:
    return quote(str(value), safe="")


def repo_path(repo: str) -> str:
    owner, name = split_repo(repo)
    return f"repos/{seg(owner)}/{seg(name)}"


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"'since' must be timezone-aware, got naive {moment!r}")
    # Forgejo compares whole seconds with >=; cutting the fraction widens, never narrows.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_root(base_url: str) -> str:
    root = base_url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"Forgejo base URL must start with http:// or https://, got {base_url!r}")
    if root.endswith("/api/v1"):
        return root
    return f"{root}/api/v1"


def unique_names(names: Iterable[str]) -> list[str]:
    """Names in first-seen order without repeats; a bare string is refused (it is iterable)."""
    if isinstance(names, str):
        raise TypeError(f"expected a collection of names, got the string {names!r}")
    seen: dict[str, None] = {}
    for name in names:
        if not name:
            raise ValueError("label and event names must not be empty")
        seen.setdefault(name, None)
    return list(seen)


def state_params(state: ListState) -> dict[str, str | int]:
    if state not in ("open", "closed", "all"):
        raise ValueError(f"state must be open, closed or all, got {state!r}")
    return {"state": state}


def total_count(response: httpx.Response) -> int | None:
    value = response.headers.get("x-total-count", "").strip()
    return int(value) if value.isdigit() else None


def next_page(
    response: httpx.Response, *, page: int, count: int, seen: int, total: int | None
) -> int | None:
    """Where the next page is: ``Link: rel="next"`` when the server sent a Link header.

    Forgejo always sends Link when more pages exist; without it (a proxy may strip headers)
    ``X-Total-Count`` decides, and without either an empty page ends the listing. Only the
    ``page`` number of the next link is used, never its host: Forgejo builds it from its own
    ROOT_URL, which need not be the address this gateway talks to.
    """
    if count == 0:
        return None
    if "link" in response.headers:
        nxt = response.links.get("next", {}).get("url")
        if not nxt:
            return None
        value = httpx.URL(nxt).params.get("page", "")
        return int(value) if value.isdigit() and int(value) > page else None
    if total is not None:
        return page + 1 if seen < total else None
    return page + 1


class ForgejoHttp:
    """Typed, retrying, paginating HTTP access to one Forgejo instance with one token.

    ``transport`` is an optional httpx transport (tests pass ``httpx.WSGITransport``; by
    default :func:`~reconciler.forgejo.transport.transport_for` chooses);
    ``on_call(operation, status)`` runs after every HTTP attempt (status 0 when no response
    came); ``sleep`` and ``clock`` are injected so retry waits can be tested without waiting.
    Shared by the loop's worker threads (httpx's client is thread-safe; the gateway's own
    small caches tolerate concurrent refreshes, and its record of writes in doubt is locked).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: object | None = None,
        read_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        on_call: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_retry_wait: float = MAX_RETRY_WAIT,
        settle_after: float | None = None,
        permission_cache: float = 0.0,
    ) -> None:
        if not token:
            raise ValueError("a Forgejo API token is required")
        if read_retries < 0:
            raise ValueError(f"read_retries must be >= 0, got {read_retries}")
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx transport, got {type(transport).__name__}")
        self.base_url = _api_root(base_url).removesuffix("/api/v1")
        self._token = token
        self._read_retries = read_retries
        self._sleep = sleep
        self._on_call = on_call
        self._clock = clock
        self._max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            transport=transport if transport is not None else transport_for(base_url),
            timeout=timeout,
            follow_redirects=True,
        )
        api = PyforgejoApi(
            base_url=_api_root(base_url), api_key=token, httpx_client=self._http, timeout=timeout
        )
        # pyforgejo's typed clients sit on this wrapper; using it directly keeps its base URL,
        # auth header and query encoding while the JSON is parsed here into our own models.
        self._client: HttpClient = api._client_wrapper.httpx_client
        self.calls = 0
        """HTTP calls made (every attempt, including retries and failures)."""
        self.writes = 0
        """HTTP calls that change Forgejo (operations in ``WRITE_OPERATIONS``)."""
        self._labels: dict[str, dict[str, Label]] = {}
        self._me: User | None = None
        self.seen = SeenItems()
        """The ``updated_at`` of each issue and pull request last read one by one."""
        self.settle_after = 2 * timeout if settle_after is None else settle_after
        """How long a write whose outcome is unknown may still land (a request held up on
        the way): the same write is not repeated before it has passed. Twice the timeout."""
        self._in_doubt: dict[tuple[str, int, str], float] = {}
        """Marker comments (and marked issues, issue 0) whose last write had an unknown
        outcome, by (repo, issue, tag):
        when that write was sent (``clock`` seconds). Shared by the threads using this
        gateway, hence the lock."""
        self._doubt_lock = threading.Lock()
        self.permission_cache = permission_cache
        """Seconds a permission read answers ``get_permission`` again (0: never)."""
        self._permissions: dict[tuple[str, str], tuple[float, RepoPermission]] = {}
        self._merged_pulls: dict[tuple[str, int], PullRequest] = {}
        """Pull requests last read as merged (``get_pull(merged_kept=True)``), oldest first."""
        self._pull_changes: dict[
            tuple[str, int, str, str], tuple[tuple[Commit, ...], tuple[ChangedFile, ...]]
        ] = {}
        """``pull_changes`` answers by (repo, number, head, merge base), oldest first."""
        self._markers: dict[tuple[str, int], dict[str, Comment]] = {}
        """The bot's marker comments on each issue, by marker tag, as this process last listed
        or wrote them: complete for the issue (a tag missing is a comment that does not
        exist), so a later upsert writes without listing again. Kept in memory only (a
        restarted process lists once) and dropped for an issue after any failed write."""

    def _doubt_sent(self, doubt: tuple[str, int, str], *, what: str) -> float | None:
        """When the last write of ``doubt`` with an unknown outcome was sent (None: there is
        none in doubt); ``WaitingError`` while it may still land (``settle_after``)."""
        with self._doubt_lock:
            sent = self._in_doubt.get(doubt)
        if sent is not None:
            waited = self._clock() - sent
            if waited < self.settle_after:
                raise WaitingError(
                    f"the last write of {what} has an unknown outcome and may still land; it "
                    "is looked at again once that has settled",
                    retry_after=self.settle_after - waited,
                )
        return sent

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one request path ----------------------------------------------------------------

    def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        idempotent: bool = False,
    ) -> httpx.Response:
        """Send one request; retry it only when ``idempotent`` (every GET, a few writes)."""
        attempts = 1 + (self._read_retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._client.request(
                    path,
                    method=method,
                    params=dict(params) if params else None,
                    json=body,
                    request_options={"max_retries": 0},
                )
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, …
                self._count(operation, 0)
                if last:
                    raise ForgejoServerError(
                        f"{operation}: no response from Forgejo at {self.base_url} "
                        f"({describe_error(exc)})",
                        operation=operation,
                        # A connection never made cannot have changed anything.
                        outcome_unknown=not isinstance(exc, _NOT_SENT),
                    ) from exc
                self._sleep(self._backoff(attempt))
                continue
            except httpx.HTTPError as exc:  # too many redirects, an undecodable body, …
                self._count(operation, 0)
                raise ForgejoServerError(
                    f"{operation}: unusable answer from Forgejo at {self.base_url} "
                    f"({describe_error(exc)})",
                    operation=operation,
                ) from exc
            self._count(operation, response.status_code)
            if response.status_code < 400:
                return response
            if response.status_code in _RETRYABLE_STATUS and not last:
                wait = self._retry_after(response)
                if wait is None:
                    wait = self._backoff(attempt)
                if wait <= self._max_retry_wait:
                    self._sleep(wait)
                    continue
            raise self._error(operation, response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _count(self, operation: str, status: int) -> None:
        self.calls += 1
        if operation in WRITE_OPERATIONS:
            self.writes += 1
        if self._on_call is not None:
            self._on_call(operation, status)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(BACKOFF_BASE * 2**attempt, BACKOFF_CAP))

    def _retry_after(self, response: httpx.Response) -> float | None:
        """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` if absent/bad."""
        value = response.headers.get("retry-after", "").strip()
        if not value:
            return None
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - self._clock())

    def _error(self, operation: str, response: httpx.Response) -> ForgejoError:
        status = response.status_code
        excerpt = self._excerpt(response)
        message = f"{operation}: Forgejo answered {status}"
        if excerpt:
            message = f"{message}: {excerpt}"
        if status == 404:
            return ForgejoNotFound(message, status=status, operation=operation, body=excerpt)
        # 405 is how the merge endpoint says "not mergeable / already merged": a state conflict.
        if status in (405, 409, 422):
            return ForgejoConflict(message, status=status, operation=operation, body=excerpt)
        if status in (401, 403):
            return ForgejoForbidden(message, status=status, operation=operation, body=excerpt)
        if status == 429:
            return ForgejoRateLimited(
                message,
                retry_after=self._retry_after(response),
                status=status,
                operation=operation,
                body=excerpt,
            )
        if status >= 500:
            return ForgejoServerError(message, status=status, operation=operation, body=excerpt)
        return ForgejoError(message, status=status, operation=operation, body=excerpt)

    def _excerpt(self, response: httpx.Response) -> str:
        text = response.text
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, Mapping) and isinstance(data.get("message"), str):
            text = data["message"]
        text = " ".join(text.split())
        # A server echoing the request could put the token into a log line; never let it.
        text = text.replace(self._token, "***")
        return text[:_EXCERPT] + ("…" if len(text) > _EXCERPT else "")

    def _json(self, operation: str, response: httpx.Response) -> object:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ForgejoError(
                f"{operation}: response is not JSON: {self._excerpt(response)}",
                status=response.status_code,
                operation=operation,
            ) from exc

    def _parse(
        self, operation: str, response: httpx.Response, parse: Callable[[object], ModelT]
    ) -> ModelT:
        raw = self._json(operation, response)
        try:
            return parse(raw)
        except (MalformedResponse, ValidationError, ValueError) as exc:
            raise ForgejoError(
                f"{operation}: unexpected response shape: {exc}",
                status=response.status_code,
                operation=operation,
            ) from exc

    def _get(
        self,
        operation: str,
        path: str,
        parse: Callable[[object], ModelT],
        *,
        params: Mapping[str, str | int] | None = None,
    ) -> ModelT:
        return self._parse(
            operation, self._request(operation, "GET", path, params=params, idempotent=True), parse
        )

    def _get_item(
        self, operation: str, path: str, kind: type[ItemT], repo: str, number: int, *, kept: bool
    ) -> ItemT:
        """An issue or pull request read one by one and noted in ``seen`` (kept there, unless
        something invalidated it while it was read); with ``kept``, the copy kept from the
        last read when there is one (see ``get_issue``)."""
        if kept:
            copy = self.seen.kept(repo, number, kind)
            if copy is not None:
                return copy
        generation = self.seen.generation(repo, number)
        item = self._get(operation, path, kind.from_api)
        self.seen.note(
            repo,
            item.number,
            item.updated_at,
            labels=item.labels,
            state=str(item.state),
            copy=item,
            generation=generation,
        )
        return item

    def _write(
        self,
        operation: str,
        method: str,
        path: str,
        parse: Callable[[object], ModelT],
        *,
        body: object = None,
        idempotent: bool = False,
    ) -> ModelT:
        response = self._request(operation, method, path, body=body, idempotent=idempotent)
        return self._parse(operation, response, parse)

    # --- pagination --------------------------------------------------------------------------

    def _page(
        self,
        operation: str,
        path: str,
        parse: Callable[[object], ModelT],
        *,
        params: Mapping[str, str | int],
        page: int,
        limit: int,
        seen_before: int | None = None,
    ) -> Page[ModelT]:
        if page < 1 or limit < 1:
            raise ValueError(f"page and limit start at 1, got page={page} limit={limit}")
        response = self._request(
            operation, "GET", path, params={**params, "page": page, "limit": limit}, idempotent=True
        )
        items = self._parse(
            operation, response, lambda raw: tuple(parse(item) for item in list_body(raw, path))
        )
        total = total_count(response)
        seen = (seen_before if seen_before is not None else (page - 1) * limit) + len(items)
        return Page[ModelT](
            page=page,
            limit=limit,
            items=items,
            total_count=total,
            next_page=next_page(response, page=page, count=len(items), seen=seen, total=total),
        )

    def _pages(
        self,
        operation: str,
        path: str,
        parse: Callable[[object], ModelT],
        *,
        params: Mapping[str, str | int] | None = None,
        limit: int = PAGE_SIZE,
    ) -> Iterator[ModelT]:
        page: int | None = 1
        seen = 0
        while page is not None:
            current = self._page(
                operation,
                path,
                parse,
                params=params or {},
                page=page,
                limit=limit,
                seen_before=seen,
            )
            seen += len(current.items)
            yield from current.items
            page = current.next_page

    def _list(
        self,
        operation: str,
        path: str,
        parse: Callable[[object], ModelT],
        *,
        params: Mapping[str, str | int] | None = None,
    ) -> tuple[ModelT, ...]:
        return tuple(self._pages(operation, path, parse, params=params))

    # --- instance ----------------------------------------------------------------------------

    def whoami(self) -> User:
        """The account the token belongs to (``GET /user``); remembered for marker comments."""
        self._me = self._get("whoami", "user", User.from_api)
        return self._me

    def bot_login(self) -> str:
        """The token's login, fetched once per gateway."""
        if self._me is None:
            return self.whoami().login
        return self._me.login

    def version(self) -> str:
        """The server version string, e.g. ``11.0.0-dev-617-1d1e0ced3e+gitea-1.22.0``."""
        return self._get("version", "version", version_string)

    def api_settings(self) -> ApiLimits:
        """The instance's paging limits (``GET /settings/api``)."""
        return self._get("api_settings", "settings/api", ApiLimits.from_api)


def version_string(raw: object) -> str:
    if isinstance(raw, Mapping) and isinstance(raw.get("version"), str) and raw["version"]:
        return str(raw["version"])
    raise MalformedResponse(f"version: expected {{'version': '…'}}, got {raw!r}")
