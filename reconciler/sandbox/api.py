"""The sandbox forge's REST API: Bottle routes under ``/api/v1`` in Forgejo's JSON shapes.

``ForgejoSandbox`` builds the app with ``build_app``; clients reach it over loopback or in
process through httpx's ``WSGITransport``. Each request is authenticated, runs one ``state``
operation and renders the result under the state lock, and maps refusals to Forgejo's error
bodies. List endpoints page like Forgejo (``limit`` <= 0 -> 30, > 50 -> 50) and answer with
``X-Total-Count`` and an RFC 5988 ``Link`` header. The instance behaves as one configured with
``REQUIRE_SIGNIN_VIEW = true``: only ``/version`` and ``/settings/api`` answer without a token.
"""

from __future__ import annotations

import functools
import json
import math
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import hooks, shapes
from reconciler.sandbox.gitstore import StorageClosed
from reconciler.sandbox.state import (
    Access,
    ForgeRefusal,
    ForgeState,
    Invalid,
    NotFound,
    Repo,
    Unauthorized,
    User,
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


class ForgeApi:
    """Route handlers over one ``ForgeState``; ``app`` is the WSGI application."""

    def __init__(self, state: ForgeState, *, app_url: Callable[[], str]) -> None:
        self.state = state
        self._app_url = app_url
        self.app = bottle.Bottle()
        self.app.default_error_handler = self._unrouted
        self._routes()

    # -- plumbing --

    @property
    def base(self) -> str:
        """Forgejo's ROOT_URL: absolute links in answers start with it."""
        return self._app_url()

    def _error(self, status: int, message: str) -> bottle.HTTPResponse:
        swagger = f"{self.base}api/swagger"
        if status == 404:
            return json_response(
                {"errors": [message], "message": "The target couldn't be found.", "url": swagger},
                404,
            )
        return json_response({"message": message, "url": swagger}, status)

    def _unrouted(self, error: bottle.HTTPError) -> bytes:
        # Unknown routes and methods answer in Forgejo's JSON error shape, not Bottle's HTML.
        message = "no such API route" if error.status_code == 404 else error.status_line
        answer = self._error(error.status_code, message)
        error.content_type = _JSON_TYPE
        return bytes(answer.body)

    def _actor(self) -> User:
        header = bottle.request.get_header("Authorization", "") or ""
        scheme, _, credential = header.strip().partition(" ")
        token = ""
        if scheme.lower() in ("token", "bearer"):
            token = credential.strip()
        elif not header:
            token = bottle.request.query.get("token", "") or bottle.request.query.get(
                "access_token", ""
            )
        if not token:
            raise Unauthorized("token is required")
        return self.state.user_by_token(token)

    def _route(
        self, method: str, path: str, *, public: bool = False
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            @functools.wraps(handler)
            def wrapped(**params: Any) -> bottle.HTTPResponse:
                try:
                    with self.state.lock:
                        if public:
                            return handler(**params)
                        return handler(self._actor(), **params)
                except ForgeRefusal as refusal:
                    return self._error(refusal.status, refusal.message)
                except StorageClosed as closed:
                    return self._error(503, str(closed))

            self.app.route(f"/api/v1{path}", method, wrapped)
            return handler

        return register

    def _repo(self, actor: User, owner: str, repo: str) -> Repo:
        return self.state.repo(f"{owner}/{repo}", actor)

    def _list(
        self,
        items: Sequence[Any],
        render: Callable[[Any], Any],
        *,
        link: bool = True,
        commit_headers: bool = False,
    ) -> bottle.HTTPResponse:
        paging = Paging(bottle.request)
        page = paging.slice(items)
        headers = paging.headers(
            len(items),
            app_url=self.base,
            request=bottle.request,
            link=link,
            commit_headers=commit_headers,
        )
        return json_response([render(item) for item in page], 200, headers)

    # -- routes --

    def _routes(self) -> None:
        state = self.state
        route = self._route

        @route("GET", "/version", public=True)
        def version() -> bottle.HTTPResponse:
            return json_response({"version": shapes.VERSION})

        @route("GET", "/settings/api", public=True)
        def settings_api() -> bottle.HTTPResponse:
            return json_response(
                {
                    "max_response_items": MAX_RESPONSE_ITEMS,
                    "default_paging_num": DEFAULT_PAGING_NUM,
                    "default_git_trees_per_page": 1000,
                    "default_max_blob_size": 10485760,
                }
            )

        @route("GET", "/user")
        def current_user(actor: User) -> bottle.HTTPResponse:
            return json_response(shapes.user(self.base, actor))

        @route("GET", "/user/repos")
        def my_repos(actor: User) -> bottle.HTTPResponse:
            repos = [r for r in state.repos.values() if state.access(r, actor) >= Access.WRITE]
            return self._list(
                sorted(repos, key=lambda r: r.id),
                lambda r: shapes.repository(self.base, state, r, viewer=actor),
            )

        @route("POST", "/user/repos")
        def create_repo(actor: User) -> bottle.HTTPResponse:
            body = Body(bottle.request)
            repo = state.create_repo(
                actor,
                body.text("name", required=True),
                description=body.text("description"),
                private=body.flag("private"),
                default_branch=body.text("default_branch"),
                auto_init=body.flag("auto_init"),
            )
            return json_response(shapes.repository(self.base, state, repo, viewer=actor), 201)

        @route("GET", "/repos/<owner>/<repo>")
        def get_repo(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(shapes.repository(self.base, state, found, viewer=actor))

        # -- issues --

        @route("GET", "/repos/<owner>/<repo>/issues")
        def list_issues(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            query = bottle.request.query
            names = [n.strip() for n in (query.get("labels") or "").split(",") if n.strip()]
            issues = state.list_issues(
                found,
                state=query.get("state") or "open",
                kind=query.get("type") or "",
                label_names=names,
                since=parse_time("since", query.get("since")),
                before=parse_time("before", query.get("before")),
            )
            return self._list(issues, lambda i: shapes.issue(self.base, state, i))

        @route("POST", "/repos/<owner>/<repo>/issues")
        def create_issue(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            assignees = body.strings("assignees")
            if body.has("assignee"):
                assignees = [body.text("assignee"), *assignees]
            issue = state.create_issue(
                found,
                actor,
                title=body.text("title", required=True),
                body=body.text("body"),
                label_ids=body.ids("labels"),
                assignees=assignees,
                closed=body.flag("closed"),
            )
            return json_response(shapes.issue(self.base, state, issue), 201)

        @route("GET", "/repos/<owner>/<repo>/issues/<index:int>")
        def get_issue(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(shapes.issue(self.base, state, state.issue(found, index)))

        @route("PATCH", "/repos/<owner>/<repo>/issues/<index:int>")
        def edit_issue(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            assignees: list[str] | None = None
            if "assignees" in body.data or "assignee" in body.data:
                assignees = body.strings("assignees")
                if body.text("assignee"):
                    assignees = [body.text("assignee"), *assignees]
            issue = state.edit_issue(
                found,
                actor,
                index,
                title=body.optional_text("title"),
                body=body.optional_text("body"),
                state=body.optional_text("state"),
                assignees=assignees,
            )
            # Forgejo answers an issue edit with 201.
            return json_response(shapes.issue(self.base, state, issue), 201)

        # -- labels --

        @route("GET", "/repos/<owner>/<repo>/labels")
        def list_labels(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            labels = sorted(found.labels.values(), key=lambda x: (x.name, x.id))
            return self._list(labels, lambda x: shapes.label(self.base, found, x), link=False)

        @route("POST", "/repos/<owner>/<repo>/labels")
        def create_label(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            label = state.create_label(
                found,
                actor,
                name=body.text("name", required=True),
                color=body.text("color", required=True),
                description=body.text("description"),
                exclusive=body.flag("exclusive"),
                is_archived=body.flag("is_archived"),
            )
            return json_response(shapes.label(self.base, found, label), 201)

        @route("GET", "/repos/<owner>/<repo>/labels/<label_id:int>")
        def get_label(actor: User, owner: str, repo: str, label_id: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(shapes.label(self.base, found, state.label(found, label_id)))

        @route("PATCH", "/repos/<owner>/<repo>/labels/<label_id:int>")
        def edit_label(actor: User, owner: str, repo: str, label_id: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            fields = {
                "name": body.optional_text("name"),
                "color": body.optional_text("color"),
                "description": body.optional_text("description"),
                "exclusive": body.flag("exclusive") if body.has("exclusive") else None,
                "is_archived": body.flag("is_archived") if body.has("is_archived") else None,
            }
            label = state.edit_label(found, actor, label_id, **fields)
            return json_response(shapes.label(self.base, found, label))

        @route("DELETE", "/repos/<owner>/<repo>/labels/<label_id:int>")
        def delete_label(actor: User, owner: str, repo: str, label_id: int) -> bottle.HTTPResponse:
            state.delete_label(self._repo(actor, owner, repo), actor, label_id)
            return empty_response()

        # -- issue labels --

        def issue_labels(found: Repo, index: int) -> bottle.HTTPResponse:
            issue = state.issue(found, index)
            return json_response([shapes.label(self.base, found, x) for x in issue.labels])

        @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def get_issue_labels(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            return issue_labels(self._repo(actor, owner, repo), index)

        @route("POST", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def add_issue_labels(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            state.add_labels(found, actor, index, Body(bottle.request).items("labels"))
            return issue_labels(found, index)

        @route("PUT", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def replace_issue_labels(
            actor: User, owner: str, repo: str, index: int
        ) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            state.replace_labels(found, actor, index, Body(bottle.request).items("labels"))
            return issue_labels(found, index)

        @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def clear_issue_labels(
            actor: User, owner: str, repo: str, index: int
        ) -> bottle.HTTPResponse:
            state.clear_labels(self._repo(actor, owner, repo), actor, index)
            return empty_response()

        @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/labels/<identifier:path>")
        def remove_issue_label(
            actor: User, owner: str, repo: str, index: int, identifier: str
        ) -> bottle.HTTPResponse:
            state.remove_label(self._repo(actor, owner, repo), actor, index, identifier)
            return empty_response()

        # -- comments --

        @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/comments")
        def list_comments(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            query = bottle.request.query
            comments = state.list_comments(
                found,
                index,
                since=parse_time("since", query.get("since")),
                before=parse_time("before", query.get("before")),
            )
            return json_response(
                [shapes.comment(self.base, c) for c in comments],
                200,
                {
                    "X-Total-Count": str(len(comments)),
                    "Access-Control-Expose-Headers": "X-Total-Count",
                },
            )

        @route("POST", "/repos/<owner>/<repo>/issues/<index:int>/comments")
        def create_comment(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            comment = state.create_comment(
                found, actor, index, body=body.text("body", required=True)
            )
            return json_response(shapes.comment(self.base, comment), 201)

        @route("GET", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def get_comment(actor: User, owner: str, repo: str, comment_id: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(shapes.comment(self.base, state.comment(found, comment_id)))

        @route("PATCH", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def edit_comment(
            actor: User, owner: str, repo: str, comment_id: int
        ) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            comment = state.edit_comment(
                found, actor, comment_id, body=body.text("body", required=True)
            )
            return json_response(shapes.comment(self.base, comment))

        @route("DELETE", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def delete_comment(
            actor: User, owner: str, repo: str, comment_id: int
        ) -> bottle.HTTPResponse:
            state.delete_comment(self._repo(actor, owner, repo), actor, comment_id)
            return empty_response()

        # -- pull requests --

        def pull_json(issue: Any) -> Any:
            return shapes.pull_request(self.base, state, issue)

        @route("GET", "/repos/<owner>/<repo>/pulls")
        def list_pulls(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            wanted = bottle.request.query.get("state") or "open"
            return self._list(state.list_pulls(found, state=wanted), pull_json)

        @route("POST", "/repos/<owner>/<repo>/pulls")
        def create_pull(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            assignees = body.strings("assignees")
            if body.has("assignee"):
                assignees = [body.text("assignee"), *assignees]
            issue = state.create_pull(
                found,
                actor,
                head=body.text("head", required=True),
                base=body.text("base"),
                title=body.text("title", required=True),
                body=body.text("body"),
                label_ids=body.ids("labels"),
                assignees=assignees,
            )
            return json_response(pull_json(issue), 201)

        @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>")
        def get_pull(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(pull_json(state.pull(found, index)))

        @route("PATCH", "/repos/<owner>/<repo>/pulls/<index:int>")
        def edit_pull(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            state.pull(found, index)
            body = Body(bottle.request)
            assignees: list[str] | None = None
            if "assignees" in body.data or "assignee" in body.data:
                assignees = body.strings("assignees")
                if body.text("assignee"):
                    assignees = [body.text("assignee"), *assignees]
            if body.has("base"):
                raise Invalid("the sandbox does not implement changing a pull request's base")
            if "labels" in body.data:
                state.replace_labels(found, actor, index, body.ids("labels"))
            issue = state.edit_issue(
                found,
                actor,
                index,
                title=body.optional_text("title"),
                body=body.optional_text("body"),
                state=body.optional_text("state"),
                assignees=assignees,
            )
            # Forgejo answers a pull request edit with 201.
            return json_response(pull_json(issue), 201)

        @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/commits")
        def pull_commits(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            commits = state.pull_commits(found, state.pull(found, index))
            return self._list(
                commits, lambda c: shapes.commit(self.base, state, found, c), commit_headers=True
            )

        @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/files")
        def pull_files(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            issue = state.pull(found, index)
            head = state.pull_head_sha(found, issue)
            return self._list(
                state.pull_files(found, issue),
                lambda f: shapes.changed_file(self.base, found, head, f),
                commit_headers=True,
            )

        @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/merge")
        def is_merged(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            issue = state.pull(self._repo(actor, owner, repo), index)
            assert issue.pull is not None
            if not issue.pull.merged:
                raise NotFound("pull request has not been merged")
            return empty_response()

        @route("POST", "/repos/<owner>/<repo>/pulls/<index:int>/merge")
        def merge(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            if body.flag("merge_when_checks_succeed"):
                raise Invalid("the sandbox does not implement merge_when_checks_succeed")
            title = body.text("MergeTitleField")
            message = body.text("MergeMessageField")
            state.merge_pull(
                found,
                actor,
                index,
                style=body.text("Do", required=True),
                message=f"{title}\n\n{message}".strip() if message else title,
                head_commit_id=body.text("head_commit_id"),
                delete_branch=body.flag("delete_branch_after_merge"),
            )
            return empty_response(200)

        @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/reviews")
        def list_reviews(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            issue = state.pull(self._repo(actor, owner, repo), index)
            assert issue.pull is not None
            return self._list(issue.pull.reviews, lambda r: shapes.review(self.base, issue, r))

        @route("POST", "/repos/<owner>/<repo>/pulls/<index:int>/reviews")
        def create_review(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            if body.data.get("comments"):
                raise Invalid("the sandbox does not implement line comments in reviews")
            review = state.create_review(
                found,
                actor,
                index,
                event=body.text("event", required=True),
                body=body.text("body"),
                commit_id=body.text("commit_id"),
            )
            return json_response(shapes.review(self.base, state.pull(found, index), review))

        @route("GET", "/repos/<owner>/<repo>/pulls/<base>/<head:path>")
        def pull_by_branches(
            actor: User, owner: str, repo: str, base: str, head: str
        ) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(pull_json(state.pull_by_branches(found, base=base, head=head)))

        # -- branches, commits, statuses --

        @route("GET", "/repos/<owner>/<repo>/branches")
        def list_branches(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            names = sorted(found.git.branches)
            return self._list(
                names, lambda n: shapes.branch(self.base, found, n, state.branch_head(found, n))
            )

        @route("GET", "/repos/<owner>/<repo>/branches/<branch:path>")
        def get_branch(actor: User, owner: str, repo: str, branch: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            head = state.branch_head(found, branch)
            return json_response(shapes.branch(self.base, found, branch, head))

        @route("GET", "/repos/<owner>/<repo>/commits")
        def list_commits(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            if not found.git.branches:
                return json_response(
                    {"message": "Git Repository is empty.", "url": f"{self.base}api/swagger"},
                    409,
                )
            ref = bottle.request.query.get("sha") or found.default_branch
            head = state.commit_at(found, ref)
            return self._list(
                found.git.log(head.sha),
                lambda c: shapes.commit(self.base, state, found, c),
                commit_headers=True,
            )

        @route("GET", "/repos/<owner>/<repo>/git/commits/<sha>")
        def get_commit(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            return json_response(
                shapes.commit(self.base, state, found, state.commit_at(found, sha))
            )

        def status_list(found: Repo, ref: str) -> bottle.HTTPResponse:
            return self._list(
                state.statuses(found, ref), lambda s: shapes.commit_status(self.base, found, s)
            )

        @route("POST", "/repos/<owner>/<repo>/statuses/<sha>")
        def create_status(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            status = state.create_status(
                found,
                actor,
                sha,
                state=body.text("state", required=True),
                context=body.text("context"),
                description=body.text("description"),
                target_url=body.text("target_url"),
            )
            return json_response(shapes.commit_status(self.base, found, status), 201)

        @route("GET", "/repos/<owner>/<repo>/statuses/<sha>")
        def list_statuses(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
            return status_list(self._repo(actor, owner, repo), sha)

        @route("GET", "/repos/<owner>/<repo>/commits/<ref:path>/statuses")
        def list_ref_statuses(actor: User, owner: str, repo: str, ref: str) -> bottle.HTTPResponse:
            return status_list(self._repo(actor, owner, repo), ref)

        @route("GET", "/repos/<owner>/<repo>/commits/<ref:path>/status")
        def combined_status(actor: User, owner: str, repo: str, ref: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            sha = state.commit_at(found, ref).sha
            latest = state.latest_statuses(found, ref)
            if not latest:
                # Forgejo answers the zero value of api.CombinedStatus, without a count header.
                return json_response(shapes.empty_combined_status(), 200)
            return json_response(
                shapes.combined_status(self.base, state, found, sha, latest),
                200,
                {
                    "X-Total-Count": str(len(latest)),
                    "Access-Control-Expose-Headers": "X-Total-Count",
                },
            )

        # -- hooks --

        def hook_json(repo: Repo, hook: Any) -> Any:
            events = hooks.subscribed_events(hook.events)
            return shapes.hook(self.base, repo, hook, events=events)

        @route("GET", "/repos/<owner>/<repo>/hooks")
        def list_hooks(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            state.require(found, actor, Access.ADMIN)
            return self._list(
                sorted(found.hooks.values(), key=lambda h: h.id),
                lambda h: hook_json(found, h),
                link=False,
            )

        @route("POST", "/repos/<owner>/<repo>/hooks")
        def create_hook(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            config = body.mapping("config")
            if config is None:
                raise Invalid("[Config]: Required")
            hook = state.create_hook(
                found,
                actor,
                type=body.text("type", required=True),
                config=config,
                events=body.strings("events"),
                active=body.flag("active"),
                branch_filter=body.text("branch_filter"),
                authorization_header=body.text("authorization_header"),
            )
            return json_response(hook_json(found, hook), 201)

        @route("GET", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
        def get_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            state.require(found, actor, Access.ADMIN)
            return json_response(hook_json(found, state.hook(found, hook_id)))

        @route("PATCH", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
        def edit_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            body = Body(bottle.request)
            hook = state.edit_hook(
                found,
                actor,
                hook_id,
                config=body.mapping("config"),
                events=body.strings("events") if "events" in body.data else None,
                active=body.flag("active") if body.has("active") else None,
                branch_filter=body.optional_text("branch_filter"),
                authorization_header=body.optional_text("authorization_header"),
            )
            return json_response(hook_json(found, hook))

        @route("DELETE", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
        def delete_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
            state.delete_hook(self._repo(actor, owner, repo), actor, hook_id)
            return empty_response()

        # -- collaborators --

        @route("GET", "/repos/<owner>/<repo>/collaborators/<login>/permission")
        def permission(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            user = state.user_named(login)
            return json_response(shapes.permission(self.base, user, state.access(found, user)))

        @route("GET", "/repos/<owner>/<repo>/collaborators/<login>")
        def is_collaborator(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            user = state.user_named(login)
            if user.login not in found.collaborators:
                raise NotFound(f"user {login} is not a collaborator")
            return empty_response()

        @route("PUT", "/repos/<owner>/<repo>/collaborators/<login>")
        def add_collaborator(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self._repo(actor, owner, repo)
            permission = Body(bottle.request).text("permission", "write")
            state.add_collaborator(found, actor, login, permission=permission)
            return empty_response()
