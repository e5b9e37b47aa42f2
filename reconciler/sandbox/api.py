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
from collections.abc import Callable, Sequence
from typing import Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import shapes
from reconciler.sandbox.api_contents import add_contents_routes
from reconciler.sandbox.api_links import add_link_routes
from reconciler.sandbox.api_pulls import add_pull_routes
from reconciler.sandbox.api_wiki import add_wiki_routes
from reconciler.sandbox.gitstore import StorageClosed
from reconciler.sandbox.rest import (
    _JSON_TYPE,
    DEFAULT_PAGING_NUM,
    MAX_RESPONSE_ITEMS,
    Body,
    Handler,
    Paging,
    empty_response,
    json_response,
    parse_time,
)
from reconciler.sandbox.state import (
    Access,
    ForgeRefusal,
    ForgeState,
    NotFound,
    Repo,
    Unauthorized,
    User,
)


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

    def route(
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

    def repo(self, actor: User, owner: str, repo: str) -> Repo:
        return self.state.repo(f"{owner}/{repo}", actor)

    def listing(
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
        route = self.route

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
            return self.listing(
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
            found = self.repo(actor, owner, repo)
            return json_response(shapes.repository(self.base, state, found, viewer=actor))

        # -- issues --

        @route("GET", "/repos/<owner>/<repo>/issues")
        def list_issues(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
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
            return self.listing(issues, lambda i: shapes.issue(self.base, state, i))

        @route("POST", "/repos/<owner>/<repo>/issues")
        def create_issue(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            body = Body(bottle.request)
            assignees = body.assignees()
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
            found = self.repo(actor, owner, repo)
            return json_response(shapes.issue(self.base, state, state.issue(found, index)))

        @route("PATCH", "/repos/<owner>/<repo>/issues/<index:int>")
        def edit_issue(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
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
            found = self.repo(actor, owner, repo)
            labels = sorted(found.labels.values(), key=lambda x: (x.name, x.id))
            return self.listing(labels, lambda x: shapes.label(self.base, found, x), link=False)

        @route("POST", "/repos/<owner>/<repo>/labels")
        def create_label(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
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
            found = self.repo(actor, owner, repo)
            return json_response(shapes.label(self.base, found, state.label(found, label_id)))

        @route("PATCH", "/repos/<owner>/<repo>/labels/<label_id:int>")
        def edit_label(actor: User, owner: str, repo: str, label_id: int) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
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
            state.delete_label(self.repo(actor, owner, repo), actor, label_id)
            return empty_response()

        # -- issue labels --

        def issue_labels(found: Repo, index: int) -> bottle.HTTPResponse:
            issue = state.issue(found, index)
            return json_response([shapes.label(self.base, found, x) for x in issue.labels])

        @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def get_issue_labels(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            return issue_labels(self.repo(actor, owner, repo), index)

        @route("POST", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def add_issue_labels(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            state.add_labels(found, actor, index, Body(bottle.request).items("labels"))
            return issue_labels(found, index)

        @route("PUT", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def replace_issue_labels(
            actor: User, owner: str, repo: str, index: int
        ) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            state.replace_labels(found, actor, index, Body(bottle.request).items("labels"))
            return issue_labels(found, index)

        @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/labels")
        def clear_issue_labels(
            actor: User, owner: str, repo: str, index: int
        ) -> bottle.HTTPResponse:
            state.clear_labels(self.repo(actor, owner, repo), actor, index)
            return empty_response()

        @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/labels/<identifier:path>")
        def remove_issue_label(
            actor: User, owner: str, repo: str, index: int, identifier: str
        ) -> bottle.HTTPResponse:
            state.remove_label(self.repo(actor, owner, repo), actor, index, identifier)
            return empty_response()

        # -- comments --

        @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/comments")
        def list_comments(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
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
            found = self.repo(actor, owner, repo)
            body = Body(bottle.request)
            comment = state.create_comment(
                found, actor, index, body=body.text("body", required=True)
            )
            return json_response(shapes.comment(self.base, comment), 201)

        @route("GET", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def get_comment(actor: User, owner: str, repo: str, comment_id: int) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            return json_response(shapes.comment(self.base, state.comment(found, comment_id)))

        @route("PATCH", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def edit_comment(
            actor: User, owner: str, repo: str, comment_id: int
        ) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            body = Body(bottle.request)
            comment = state.edit_comment(
                found, actor, comment_id, body=body.text("body", required=True)
            )
            return json_response(shapes.comment(self.base, comment))

        @route("DELETE", "/repos/<owner>/<repo>/issues/comments/<comment_id:int>")
        def delete_comment(
            actor: User, owner: str, repo: str, comment_id: int
        ) -> bottle.HTTPResponse:
            state.delete_comment(self.repo(actor, owner, repo), actor, comment_id)
            return empty_response()

        add_pull_routes(self)
        add_link_routes(self)
        add_wiki_routes(self)
        add_contents_routes(self)

        # -- collaborators --

        @route("GET", "/repos/<owner>/<repo>/collaborators/<login>/permission")
        def permission(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            user = state.user_named(login)
            return json_response(shapes.permission(self.base, user, state.access(found, user)))

        @route("GET", "/repos/<owner>/<repo>/collaborators/<login>")
        def is_collaborator(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            user = state.user_named(login)
            if user.login not in found.collaborators:
                raise NotFound(f"user {login} is not a collaborator")
            return empty_response()

        @route("PUT", "/repos/<owner>/<repo>/collaborators/<login>")
        def add_collaborator(actor: User, owner: str, repo: str, login: str) -> bottle.HTTPResponse:
            found = self.repo(actor, owner, repo)
            permission = Body(bottle.request).text("permission", "write")
            state.add_collaborator(found, actor, login, permission=permission)
            return empty_response()
