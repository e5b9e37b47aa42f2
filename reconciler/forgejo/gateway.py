"""The Forgejo gateway: every call agent-fleet makes to the Forgejo REST API goes through here.

Controllers, the loop, the CLI and the resync bench hold one ``ForgejoGateway`` and call its
named operations (``list_issues``, ``add_labels``, ``upsert_marker_comment`` …). The gateway

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

This is the only module of the project that imports pyforgejo or httpx.
"""

from __future__ import annotations

import base64
import email.utils
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
)
from reconciler.forgejo.types import (
    ApiLimits,
    Branch,
    ChangedFile,
    CombinedStatus,
    Comment,
    Commit,
    CommitState,
    CommitStatus,
    Hook,
    Issue,
    Label,
    LabelSpec,
    MalformedResponse,
    Page,
    PullRequest,
    Repo,
    RepoPermission,
    Review,
    ReviewState,
    User,
    list_body,
)

__all__ = [
    "PAGE_SIZE",
    "WRITE_OPERATIONS",
    "ForgejoGateway",
    "IssueKind",
    "ListState",
    "MergeStyle",
    "WriteOutcome",
    "has_marker",
    "marker_tag",
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
MergeStyle = Literal["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"]

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
        "create_pull",
        "merge_pull",
        "create_review",
        "create_status",
        "add_collaborator",
        "create_hook",
        "edit_hook",
        "create_file",
    }
)
"""Operation names (as passed to ``on_call``) whose HTTP call changes Forgejo."""

# Forgejo's precedence when it combines statuses (modules/structs/commit_status.go): worst wins.
_STATE_RANK: Mapping[CommitState, int] = {
    CommitState.ERROR: 0,
    CommitState.FAILURE: 1,
    CommitState.WARNING: 2,
    CommitState.PENDING: 3,
    CommitState.SUCCESS: 4,
    CommitState.SKIPPED: 5,
}

_MARKER = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_EXCERPT = 200

ModelT = TypeVar("ModelT")


def marker_tag(marker: str) -> str:
    """The hidden HTML comment that identifies one of the bot's comments: ``<!-- agent-fleet:x -->``."""
    if not _MARKER.match(marker):
        raise ValueError(
            f"comment marker must be letters, digits and . _ : / - only, got {marker!r}"
        )
    return f"<!-- agent-fleet:{marker} -->"


def has_marker(body: str, marker: str) -> bool:
    """True when a comment body carries the hidden marker ``marker``."""
    return marker_tag(marker) in body


def _same_text(left: str, right: str) -> bool:
    # Browsers and some servers turn "\n" into "\r\n" and trim the end; neither is a change.
    return left.replace("\r\n", "\n").rstrip() == right.replace("\r\n", "\n").rstrip()


def _split_repo(repo: str) -> tuple[str, str]:
    owner, sep, name = repo.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"repository must be given as 'owner/name', got {repo!r}")
    return owner, name


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _repo_path(repo: str) -> str:
    owner, name = _split_repo(repo)
    return f"repos/{_seg(owner)}/{_seg(name)}"


def _rfc3339(moment: datetime) -> str:
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


class ForgejoGateway:
    """Typed, retrying, paginating access to one Forgejo instance with one token.

    ``transport`` is an optional httpx transport (tests pass ``httpx.WSGITransport``);
    ``on_call(operation, status)`` runs after every HTTP attempt (status 0 when no response
    came); ``sleep`` and ``clock`` are injected so retry waits can be tested without waiting.
    Not thread-safe: each worker thread uses its own gateway.
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
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)
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
                        f"({type(exc).__name__}: {exc})",
                        operation=operation,
                    ) from exc
                self._sleep(self._backoff(attempt))
                continue
            except httpx.HTTPError as exc:  # too many redirects, an undecodable body, …
                self._count(operation, 0)
                raise ForgejoServerError(
                    f"{operation}: unusable answer from Forgejo at {self.base_url} "
                    f"({type(exc).__name__}: {exc})",
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
        total = _total_count(response)
        seen = (seen_before if seen_before is not None else (page - 1) * limit) + len(items)
        return Page[ModelT](
            page=page,
            limit=limit,
            items=items,
            total_count=total,
            next_page=_next_page(response, page=page, count=len(items), seen=seen, total=total),
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
        return self._get("version", "version", _version)

    def api_settings(self) -> ApiLimits:
        """The instance's paging limits (``GET /settings/api``)."""
        return self._get("api_settings", "settings/api", ApiLimits.from_api)

    # --- repositories ------------------------------------------------------------------------

    def get_repo(self, repo: str) -> Repo:
        """One repository; ``ForgejoNotFound`` if it does not exist or is hidden from the token."""
        return self._get("get_repo", _repo_path(repo), Repo.from_api)

    def create_repo(
        self,
        name: str,
        *,
        owner: str | None = None,
        default_branch: str = "main",
        auto_init: bool = True,
        private: bool = False,
        description: str = "",
    ) -> Repo:
        """Create a repository for the token's user, or in organisation ``owner``.

        Not retried: a retry after a lost response would answer 409 for the repo just made.
        """
        body = {
            "name": name,
            "default_branch": default_branch,
            "auto_init": auto_init,
            "private": private,
            "description": description,
        }
        path = "user/repos" if owner is None else f"orgs/{_seg(owner)}/repos"
        return self._write("create_repo", "POST", path, Repo.from_api, body=body)

    def get_permission(self, repo: str, login: str) -> RepoPermission:
        """What ``login`` may do in ``repo`` (``read``, ``write``, ``admin``, ``owner``, ``none``)."""
        return self._get(
            "get_permission",
            f"{_repo_path(repo)}/collaborators/{_seg(login)}/permission",
            lambda raw: RepoPermission.from_api(raw, login=login),
        )

    def add_collaborator(self, repo: str, login: str, *, permission: str = "write") -> None:
        """Give ``login`` ``permission`` (read, write, admin) on ``repo``. A PUT: idempotent,
        so retried like a read."""
        self._request(
            "add_collaborator",
            "PUT",
            f"{_repo_path(repo)}/collaborators/{_seg(login)}",
            body={"permission": permission},
            idempotent=True,
        )

    # --- issues ------------------------------------------------------------------------------

    def _issue_params(
        self,
        *,
        state: ListState,
        since: datetime | None,
        labels: Iterable[str],
        kind: IssueKind | None,
    ) -> dict[str, str | int]:
        if state not in ("open", "closed", "all"):
            raise ValueError(f"state must be open, closed or all, got {state!r}")
        if kind not in (None, "issues", "pulls"):
            raise ValueError(f"kind must be None, 'issues' or 'pulls', got {kind!r}")
        params: dict[str, str | int] = {"state": state}
        if kind is not None:
            params["type"] = kind
        names = [name for name in labels]
        if any("," in name for name in names):
            raise ValueError(f"label names in a filter cannot contain ',': {names!r}")
        if names:
            params["labels"] = ",".join(names)
        if since is not None:
            params["since"] = _rfc3339(since)
        return params

    def list_issues(
        self,
        repo: str,
        *,
        state: ListState = "open",
        since: datetime | None = None,
        labels: Iterable[str] = (),
        kind: IssueKind | None = None,
    ) -> tuple[Issue, ...]:
        """Every issue matching the filters, all pages.

        ``labels`` keeps issues carrying ALL the given names, and Forgejo silently drops names
        that are not labels of the repo (if none exist, the filter disappears and every issue
        matches). Callers that need ANY of several labels list without ``labels`` and filter
        client-side. ``kind=None`` includes pull requests (``Issue.is_pull``). ``since`` compares
        with the issue's ``updated_at`` (>=, whole seconds).
        """
        params = self._issue_params(state=state, since=since, labels=labels, kind=kind)
        return self._list(
            "list_issues", f"{_repo_path(repo)}/issues", Issue.from_api, params=params
        )

    def list_issues_page(
        self,
        repo: str,
        *,
        page: int = 1,
        limit: int = PAGE_SIZE,
        state: ListState = "open",
        since: datetime | None = None,
        labels: Iterable[str] = (),
        kind: IssueKind | None = None,
    ) -> Page[Issue]:
        """One page of ``list_issues``, with the paging facts the server sent."""
        params = self._issue_params(state=state, since=since, labels=labels, kind=kind)
        return self._page(
            "list_issues",
            f"{_repo_path(repo)}/issues",
            Issue.from_api,
            params=params,
            page=page,
            limit=limit,
        )

    def get_issue(self, repo: str, number: int) -> Issue:
        """One issue (or the issue view of a pull request)."""
        return self._get("get_issue", f"{_repo_path(repo)}/issues/{number}", Issue.from_api)

    def create_issue(
        self, repo: str, *, title: str, body: str = "", labels: Iterable[str] = ()
    ) -> Issue:
        """Open an issue; label names are resolved to ids (unknown names are an error).

        Not retried: a retry after a lost response would open a second issue.
        """
        if not title.strip():
            raise ValueError("an issue needs a title")
        payload: dict[str, object] = {"title": title, "body": body}
        names = _unique(labels)
        if names:
            payload["labels"] = self._label_ids(repo, names, operation="create_issue")
        return self._write(
            "create_issue", "POST", f"{_repo_path(repo)}/issues", Issue.from_api, body=payload
        )

    def edit_issue(
        self,
        repo: str,
        number: int,
        *,
        state: Literal["open", "closed"] | None = None,
        title: str | None = None,
        body: str | None = None,
    ) -> Issue:
        """Change an issue's state, title or body. Retried: a PATCH to fixed values is idempotent."""
        payload: dict[str, object] = {}
        if state is not None:
            if state not in ("open", "closed"):
                raise ValueError(f"state must be 'open' or 'closed', got {state!r}")
            payload["state"] = state
        if title is not None:
            payload["title"] = title
        if body is not None:
            payload["body"] = body
        if not payload:
            raise ValueError("edit_issue needs at least one of state, title, body")
        return self._write(
            "edit_issue",
            "PATCH",
            f"{_repo_path(repo)}/issues/{number}",
            Issue.from_api,
            body=payload,
            idempotent=True,
        )

    # --- comments ----------------------------------------------------------------------------

    def list_comments(
        self, repo: str, number: int, *, since: datetime | None = None
    ) -> tuple[Comment, ...]:
        """All comments of an issue or PR, oldest first (this endpoint is not paginated)."""
        params: dict[str, str | int] = {}
        if since is not None:
            params["since"] = _rfc3339(since)
        return self._get(
            "list_comments",
            f"{_repo_path(repo)}/issues/{number}/comments",
            lambda raw: tuple(Comment.from_api(item) for item in list_body(raw, "comments")),
            params=params,
        )

    def get_comment(self, repo: str, comment_id: int) -> Comment:
        """One comment by id."""
        return self._get(
            "get_comment", f"{_repo_path(repo)}/issues/comments/{comment_id}", Comment.from_api
        )

    def create_comment(self, repo: str, number: int, body: str) -> Comment:
        """Post a comment. Not retried: a retry after a lost response would post it twice."""
        return self._write(
            "create_comment",
            "POST",
            f"{_repo_path(repo)}/issues/{number}/comments",
            Comment.from_api,
            body={"body": body},
        )

    def edit_comment(self, repo: str, comment_id: int, body: str) -> Comment:
        """Replace a comment's text. Retried: idempotent."""
        return self._write(
            "edit_comment",
            "PATCH",
            f"{_repo_path(repo)}/issues/comments/{comment_id}",
            Comment.from_api,
            body={"body": body},
            idempotent=True,
        )

    def upsert_marker_comment(
        self,
        repo: str,
        number: int,
        *,
        marker: str,
        body: str,
        comments: Sequence[Comment] | None = None,
    ) -> tuple[Comment, WriteOutcome]:
        """Keep exactly one bot comment per ``marker`` on an issue, with text ``body``.

        The comment is found by its hidden marker (``marker_tag``) among the bot's own comments
        (``comments`` when the caller already fetched them, else one list call). It is created
        if missing, edited only when the text differs, and left alone otherwise — so a second
        call with the same body makes no write.
        """
        tag = marker_tag(marker)
        text = f"{tag}\n{body}"
        existing = comments if comments is not None else self.list_comments(repo, number)
        mine = None
        if existing:  # only then does it matter who the bot is (one call, once per process)
            login = self.bot_login()
            mine = next((c for c in existing if c.author == login and tag in c.body), None)
        if mine is None:
            return self.create_comment(repo, number, text), "created"
        if _same_text(mine.body, text):
            return mine, "unchanged"
        return self.edit_comment(repo, mine.id, text), "edited"

    # --- labels ------------------------------------------------------------------------------

    def list_labels(self, repo: str) -> tuple[Label, ...]:
        """All labels of the repository; refreshes the gateway's label cache for it."""
        labels = self._list("list_labels", f"{_repo_path(repo)}/labels", Label.from_api)
        self._labels[repo] = {label.name: label for label in labels}
        return labels

    def get_label(self, repo: str, label_id: int) -> Label:
        """One label by id."""
        return self._get("get_label", f"{_repo_path(repo)}/labels/{label_id}", Label.from_api)

    def ensure_labels(self, repo: str, specs: Iterable[LabelSpec]) -> tuple[Label, ...]:
        """Make the repository's labels match ``specs``; returns all the repo's labels after.

        One list call, then a create for each missing label and an edit for each whose colour,
        description or exclusivity drifted; labels not in ``specs`` are left alone. Neither write
        is retried by the gateway: a create is not idempotent and the caller's next pass fixes
        what a failed edit left.
        """
        wanted = list(specs)
        names = [spec.name for spec in wanted]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names in specs: {sorted(names)}")
        current = {label.name: label for label in self.list_labels(repo)}
        for spec in wanted:
            have = current.get(spec.name)
            if have is None:
                current[spec.name] = self._write(
                    "create_label",
                    "POST",
                    f"{_repo_path(repo)}/labels",
                    Label.from_api,
                    body=_label_body(spec, name=True),
                )
            elif not have.matches(spec):
                current[spec.name] = self._write(
                    "edit_label",
                    "PATCH",
                    f"{_repo_path(repo)}/labels/{have.id}",
                    Label.from_api,
                    body=_label_body(spec, name=False),
                    idempotent=True,
                )
        self._labels[repo] = dict(current)
        return tuple(current.values())

    def _label_ids(self, repo: str, names: Sequence[str], *, operation: str) -> list[int]:
        cache = self._labels.get(repo)
        if cache is None or any(name not in cache for name in names):
            # A label made since the last look (by a person or another pass): look once more.
            self.list_labels(repo)
            cache = self._labels[repo]
        missing = [name for name in names if name not in cache]
        if missing:
            raise ForgejoNotFound(
                f"{operation}: {repo} has no label named {', '.join(map(repr, missing))}",
                operation=operation,
            )
        return [cache[name].id for name in names]

    def add_labels(
        self,
        repo: str,
        number: int,
        names: Iterable[str],
        *,
        current: Iterable[str] | None = None,
    ) -> tuple[str, ...]:
        """Add labels to an issue or PR; returns the label names it carries afterwards.

        When ``current`` (the labels the caller observed on the issue) is given, only names not
        already there are sent, and nothing at all when none are new. Forgejo applies exclusive
        scopes itself: adding ``status/doing`` removes ``status/todo``, which the returned names
        show. Retried on 5xx: adding labels twice leaves the same set.
        """
        wanted = _unique(names)
        present = None if current is None else tuple(current)
        to_send = [name for name in wanted if present is None or name not in present]
        if not to_send:
            if present is None:
                raise ValueError("add_labels needs at least one label name")
            return present
        ids = self._label_ids(repo, to_send, operation="add_labels")
        result = self._send_labels("add_labels", "POST", repo, number, ids)
        if any(name not in result for name in to_send):
            # A name missing from the answer may mean our cached id is stale (the label was
            # deleted and made again); Forgejo ignores unknown ids. Refresh once and resend.
            stale = self._labels.get(repo, {})
            fresh = {label.name: label for label in self.list_labels(repo)}
            if any(n in fresh and n in stale and fresh[n].id != stale[n].id for n in to_send):
                ids = self._label_ids(repo, to_send, operation="add_labels")
                result = self._send_labels("add_labels", "POST", repo, number, ids)
        return result

    def replace_labels(self, repo: str, number: int, names: Iterable[str]) -> tuple[str, ...]:
        """Set an issue's labels to exactly ``names``; returns what it carries afterwards.

        Retried on 5xx: a PUT of a fixed set is idempotent.
        """
        wanted = _unique(names)
        ids = self._label_ids(repo, wanted, operation="replace_labels") if wanted else []
        return self._send_labels("replace_labels", "PUT", repo, number, ids)

    def remove_label(self, repo: str, number: int, name: str) -> None:
        """Remove one label from an issue or PR. Removing an absent label is not an error.

        Retried on 5xx: deleting a label that is already gone answers 204 again.
        """
        cache = self._labels.get(repo)
        if cache is None or name not in cache:
            self.list_labels(repo)
            cache = self._labels[repo]
        label = cache.get(name)
        if label is None:
            return  # no such label in the repo, so it cannot be on the issue
        self._request(
            "remove_label",
            "DELETE",
            f"{_repo_path(repo)}/issues/{number}/labels/{label.id}",
            idempotent=True,
        )

    def _send_labels(
        self, operation: str, method: str, repo: str, number: int, ids: list[int]
    ) -> tuple[str, ...]:
        return self._write(
            operation,
            method,
            f"{_repo_path(repo)}/issues/{number}/labels",
            lambda raw: tuple(Label.from_api(item).name for item in list_body(raw, "labels")),
            body={"labels": ids},
            idempotent=True,
        )

    # --- pull requests -----------------------------------------------------------------------

    def list_pulls(self, repo: str, *, state: ListState = "open") -> tuple[PullRequest, ...]:
        """Every pull request in ``state``, all pages."""
        return self._list(
            "list_pulls", f"{_repo_path(repo)}/pulls", PullRequest.from_api, params=_state(state)
        )

    def list_pulls_page(
        self, repo: str, *, page: int = 1, limit: int = PAGE_SIZE, state: ListState = "open"
    ) -> Page[PullRequest]:
        """One page of ``list_pulls``, with the paging facts the server sent."""
        return self._page(
            "list_pulls",
            f"{_repo_path(repo)}/pulls",
            PullRequest.from_api,
            params=_state(state),
            page=page,
            limit=limit,
        )

    def get_pull(self, repo: str, number: int) -> PullRequest:
        """One pull request."""
        return self._get("get_pull", f"{_repo_path(repo)}/pulls/{number}", PullRequest.from_api)

    def find_pull_by_head(
        self, repo: str, branch: str, *, base: str | None = None
    ) -> PullRequest | None:
        """The pull request whose head is ``branch`` of ``repo`` itself (not a fork), if any.

        An open one wins; otherwise the most recent closed or merged one. The ``head``/``base``
        query filters narrow the listing on servers that support them and are checked again
        here for those that ignore them.
        """
        params: dict[str, str | int] = {"state": "all", "head": branch}
        if base is not None:
            params["base"] = base
        candidates = [
            pull
            for pull in self._pages(
                "find_pull_by_head",
                f"{_repo_path(repo)}/pulls",
                PullRequest.from_api,
                params=params,
            )
            # A PR from a fork (or from a deleted fork: ``head_repo`` None) is never the
            # task's: task branches live in the repository itself.
            if pull.head_branch == branch
            and pull.head_repo is not None
            and pull.head_repo.lower() == repo.lower()
            and (base is None or pull.base_branch == base)
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.state == "open", p.number))

    def create_pull(self, repo: str, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """Open a pull request from branch ``head`` into ``base``. Not retried (not idempotent)."""
        return self._write(
            "create_pull",
            "POST",
            f"{_repo_path(repo)}/pulls",
            PullRequest.from_api,
            body={"head": head, "base": base, "title": title, "body": body},
        )

    def is_merged(self, repo: str, number: int) -> bool:
        """True when the PR is merged (204); Forgejo answers 404 for unmerged or unknown PRs."""
        try:
            self._request(
                "is_merged", "GET", f"{_repo_path(repo)}/pulls/{number}/merge", idempotent=True
            )
        except ForgejoNotFound:
            return False
        return True

    def merge_pull(
        self,
        repo: str,
        number: int,
        *,
        style: MergeStyle = "merge",
        message: str | None = None,
        delete_branch: bool = False,
    ) -> None:
        """Merge a pull request. ``ForgejoConflict`` when it cannot be merged (or already was).

        Not retried: a retry after a lost response answers 405 for the PR just merged.
        """
        payload: dict[str, object] = {"Do": style, "delete_branch_after_merge": delete_branch}
        if message is not None:
            payload["MergeMessageField"] = message
        self._request(
            "merge_pull", "POST", f"{_repo_path(repo)}/pulls/{number}/merge", body=payload
        )

    def list_reviews(self, repo: str, number: int) -> tuple[Review, ...]:
        """Every review of a pull request, oldest first."""
        return self._list(
            "list_reviews", f"{_repo_path(repo)}/pulls/{number}/reviews", Review.from_api
        )

    def create_review(
        self,
        repo: str,
        number: int,
        *,
        event: ReviewState | str,
        body: str,
        commit_id: str | None = None,
    ) -> Review:
        """Submit a review (``APPROVED``, ``REQUEST_CHANGES`` or ``COMMENT``). Not retried.

        Forgejo refuses (``ForgejoConflict``) an approval or change request by the PR's author.
        """
        state = ReviewState(event)
        if state not in (ReviewState.APPROVED, ReviewState.REQUEST_CHANGES, ReviewState.COMMENT):
            raise ValueError(
                f"review event must be APPROVED, REQUEST_CHANGES or COMMENT: {event!r}"
            )
        payload: dict[str, object] = {"event": state.value, "body": body}
        if commit_id is not None:
            payload["commit_id"] = commit_id
        return self._write(
            "create_review",
            "POST",
            f"{_repo_path(repo)}/pulls/{number}/reviews",
            Review.from_api,
            body=payload,
        )

    def list_pull_commits(self, repo: str, number: int) -> tuple[Commit, ...]:
        """The commits of a pull request."""
        return self._list(
            "list_pull_commits",
            f"{_repo_path(repo)}/pulls/{number}/commits",
            Commit.from_api,
            # Verification and file lists cost the server git work nobody here reads.
            params={"verification": "false", "files": "false"},
        )

    def list_pull_files(self, repo: str, number: int) -> tuple[ChangedFile, ...]:
        """The files a pull request changes."""
        return self._list(
            "list_pull_files", f"{_repo_path(repo)}/pulls/{number}/files", ChangedFile.from_api
        )

    # --- commits, statuses, branches ---------------------------------------------------------

    def get_commit(self, repo: str, sha: str) -> Commit:
        """One commit by sha."""
        return self._get(
            "get_commit",
            f"{_repo_path(repo)}/git/commits/{_seg(sha)}",
            Commit.from_api,
            params={"stat": "false", "verification": "false", "files": "false"},
        )

    def combined_status(self, repo: str, ref: str) -> CombinedStatus:
        """The combined CI state of a commit (or branch/tag) with every status, all pages.

        Forgejo answers an empty object (``state`` None here) for a commit without statuses.
        It pages the latest status per context (50 a page) and puts the number of contexts in
        ``X-Total-Count``; past one page the combined state is recomputed over all of them.
        """
        path = f"{_repo_path(repo)}/commits/{_seg(ref)}/status"
        pages: list[CombinedStatus] = []
        total = 0
        page = 1
        while True:
            response = self._request(
                "combined_status",
                "GET",
                path,
                params={"page": page, "limit": PAGE_SIZE},
                idempotent=True,
            )
            current = self._parse("combined_status", response, CombinedStatus.from_api)
            pages.append(current)
            total = max(total, _total_count(response) or 0, current.total_count)
            seen = sum(len(p.statuses) for p in pages)
            # Bounded by the page count the total implies, in case a server ignores ``page``.
            if not current.statuses or seen >= total or page * PAGE_SIZE >= total:
                break
            page += 1
        first = pages[0]
        if len(pages) == 1:
            return first
        statuses = tuple(s for p in pages for s in p.statuses)
        worst = min((s.state for s in statuses), key=_STATE_RANK.__getitem__)
        return first.model_copy(
            update={"statuses": statuses, "state": worst, "total_count": len(statuses)}
        )

    def create_status(
        self,
        repo: str,
        sha: str,
        *,
        context: str,
        state: CommitState | str,
        description: str = "",
        target_url: str = "",
    ) -> CommitStatus:
        """Report a CI status on a commit. Not retried: each POST adds a row to its history."""
        payload = {
            "context": context,
            "state": CommitState(state).value,
            "description": description,
            "target_url": target_url,
        }
        return self._write(
            "create_status",
            "POST",
            f"{_repo_path(repo)}/statuses/{_seg(sha)}",
            CommitStatus.from_api,
            body=payload,
        )

    def get_branch(self, repo: str, branch: str) -> Branch | None:
        """A branch and its tip, or ``None`` when it does not exist."""
        try:
            return self._get(
                "get_branch",
                f"{_repo_path(repo)}/branches/{quote(branch, safe='/')}",
                Branch.from_api,
            )
        except ForgejoNotFound:
            return None

    def list_branch_commits(
        self, repo: str, branch: str, *, limit: int = PAGE_SIZE
    ) -> tuple[Commit, ...]:
        """The newest ``limit`` commits reachable from ``branch``, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        params: dict[str, str | int] = {
            "sha": branch,
            "stat": "false",
            "verification": "false",
            "files": "false",
        }
        commits: list[Commit] = []
        for commit in self._pages(
            "list_branch_commits",
            f"{_repo_path(repo)}/commits",
            Commit.from_api,
            params=params,
            limit=min(limit, PAGE_SIZE),
        ):
            commits.append(commit)
            if len(commits) >= limit:
                break
        return tuple(commits)

    def create_file(
        self,
        repo: str,
        path: str,
        *,
        content: bytes,
        message: str,
        branch: str,
        new_branch: str | None = None,
    ) -> str:
        """Commit one new file on ``branch`` (or on ``new_branch`` cut from it); returns the sha.

        Not retried: a second try answers 422 because the file exists by then.
        """
        if not path or path.startswith("/"):
            raise ValueError(f"file path must be relative to the repository root, got {path!r}")
        payload: dict[str, object] = {
            "content": base64.b64encode(content).decode("ascii"),
            "message": message,
            "branch": branch,
        }
        if new_branch is not None:
            payload["new_branch"] = new_branch
        return self._write(
            "create_file",
            "POST",
            f"{_repo_path(repo)}/contents/{quote(path, safe='/')}",
            _file_commit_sha,
            body=payload,
        )

    # --- webhooks ----------------------------------------------------------------------------

    def list_hooks(self, repo: str) -> tuple[Hook, ...]:
        """Every webhook of the repository."""
        return self._list("list_hooks", f"{_repo_path(repo)}/hooks", Hook.from_api)

    def ensure_webhook(
        self,
        repo: str,
        *,
        url: str,
        secret: str,
        events: Iterable[str],
        content_type: Literal["json", "form"] = "json",
        rewrite_secret: bool = False,
    ) -> tuple[Hook, WriteOutcome]:
        """Make sure one active Forgejo webhook posts ``events`` to ``url``.

        Finds the first hook with that URL; creates it if missing, edits it when its events,
        content type or active flag drifted, and otherwise makes no write. Forgejo never returns
        a hook's secret, so a changed secret cannot be seen: pass ``rewrite_secret=True`` (for
        example once at start-up) to write it regardless.
        """
        if not secret:
            raise ValueError("a webhook secret is required: deliveries are verified with it")
        wanted_events = _unique(events)
        if not wanted_events:
            raise ValueError("a webhook needs at least one event")
        hook = next((h for h in self.list_hooks(repo) if h.url == url), None)
        config = {"url": url, "content_type": content_type, "secret": secret}
        if hook is None:
            created = self._write(
                "create_hook",
                "POST",
                f"{_repo_path(repo)}/hooks",
                Hook.from_api,
                body={"type": "forgejo", "config": config, "events": wanted_events, "active": True},
            )
            return created, "created"
        drifted = (
            _events_drifted(hook.events, wanted_events)
            or hook.content_type != content_type
            or not hook.active
        )
        if not drifted and not rewrite_secret:
            return hook, "unchanged"
        edited = self._write(
            "edit_hook",
            "PATCH",
            f"{_repo_path(repo)}/hooks/{hook.id}",
            Hook.from_api,
            body={"config": config, "events": wanted_events, "active": True},
            idempotent=True,
        )
        return edited, "edited"


# --- helpers private to the gateway -----------------------------------------------------------


def _unique(names: Iterable[str]) -> list[str]:
    """Names in first-seen order without repeats; a bare string is refused (it is iterable)."""
    if isinstance(names, str):
        raise TypeError(f"expected a collection of names, got the string {names!r}")
    seen: dict[str, None] = {}
    for name in names:
        if not name:
            raise ValueError("label and event names must not be empty")
        seen.setdefault(name, None)
    return list(seen)


def _state(state: ListState) -> dict[str, str | int]:
    if state not in ("open", "closed", "all"):
        raise ValueError(f"state must be open, closed or all, got {state!r}")
    return {"state": state}


def _label_body(spec: LabelSpec, *, name: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "color": f"#{spec.color}",
        "description": spec.description,
        "exclusive": spec.exclusive,
    }
    if name:
        body["name"] = spec.name
    return body


# What a subscription name implies (Forgejo routers/api/v1/utils/hook.go): a hook created with
# "issues" is listed back with every issue sub-event, "pull_request" with every PR one.
_IMPLIED_EVENTS: Mapping[str, frozenset[str]] = {
    "issues": frozenset({"issue_assign", "issue_label", "issue_milestone", "issue_comment"}),
    "pull_request": frozenset(
        {
            "pull_request_assign",
            "pull_request_label",
            "pull_request_milestone",
            "pull_request_comment",
            "pull_request_review_approved",
            "pull_request_review_rejected",
            "pull_request_review_comment",
            "pull_request_review_request",
            "pull_request_sync",
        }
    ),
    "pull_request_review": frozenset(
        {
            "pull_request_review_approved",
            "pull_request_review_rejected",
            "pull_request_review_comment",
        }
    ),
}


def _events_drifted(have: Sequence[str], wanted: Sequence[str]) -> bool:
    """True unless the hook covers every wanted event and lists nothing those do not imply.

    A group name (``pull_request_review``) may be listed back only as its sub-events, so it
    counts as covered when any of them is there; the table errs wide so that a server listing
    an implied event this table forgot does not look like drift on every pass.
    """
    listed = set(have)
    implied = set(wanted).union(*(_IMPLIED_EVENTS.get(name, frozenset()) for name in wanted))
    missing = [
        name
        for name in wanted
        if name not in listed and not (_IMPLIED_EVENTS.get(name, frozenset()) & listed)
    ]
    return bool(missing) or bool(listed - implied)


def _version(raw: object) -> str:
    if isinstance(raw, Mapping) and isinstance(raw.get("version"), str) and raw["version"]:
        return str(raw["version"])
    raise MalformedResponse(f"version: expected {{'version': '…'}}, got {raw!r}")


def _file_commit_sha(raw: object) -> str:
    commit = raw.get("commit") if isinstance(raw, Mapping) else None
    sha = commit.get("sha") if isinstance(commit, Mapping) else None
    if not isinstance(sha, str) or not sha:
        raise MalformedResponse("file response: no commit.sha")
    return sha


def _total_count(response: httpx.Response) -> int | None:
    value = response.headers.get("x-total-count", "").strip()
    return int(value) if value.isdigit() else None


def _next_page(
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
