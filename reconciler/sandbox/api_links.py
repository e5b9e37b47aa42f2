"""The sandbox forge's REST routes for issue dependencies and issue timelines, in Forgejo's
JSON shapes (``routers/api/v1/repo/issue_dependency.go``, ``issue_comment.go``'s timeline).
``ForgeApi`` (``api.py``) adds them to its app with ``add_link_routes``.

``GET …/dependencies`` and ``GET …/blocks`` answer a page of ``Issue`` without paging headers
(the spec's ``IssueListWithoutPagination``); ``POST`` and ``DELETE`` take an ``IssueMeta`` body
naming the other issue and answer with the issue of the URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import links, shapes
from reconciler.sandbox.rest import Body, Paging, json_response, parse_time
from reconciler.sandbox.state import Comment, Invalid, LabelChange, Repo, User

if TYPE_CHECKING:
    from reconciler.sandbox.api import ForgeApi


def _meta(body: Body, *, owner: str, repo: str) -> links.IssueMeta:
    index = body.data.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 1:
        raise Invalid("index must be the number of an issue")
    # Forgejo fills in the URL's repository when the body names none.
    return links.IssueMeta(
        owner=body.text("owner") or owner, repo=body.text("repo") or repo, index=index
    )


def timeline_entry(app_url: str, repo: Repo, entry: links.TimelineEntry) -> dict[str, Any]:
    """structs.TimelineComment for a comment (type ``comment``) or a label change (``label``)."""
    if isinstance(entry, Comment):
        base = shapes.comment(app_url, entry)
        return {
            "id": base["id"],
            "type": "comment",
            "html_url": base["html_url"],
            "pull_request_url": base["pull_request_url"],
            "issue_url": base["issue_url"],
            "user": base["user"],
            "body": base["body"],
            "created_at": base["created_at"],
            "updated_at": base["updated_at"],
        }
    return _label_entry(app_url, repo, entry)


def _label_entry(app_url: str, repo: Repo, entry: LabelChange) -> dict[str, Any]:
    return {
        "id": entry.id,
        "type": "label",
        "user": shapes.user(app_url, entry.user),
        # Forgejo keeps "1" as the content of a label-added entry and "" for a removal.
        "body": "1" if entry.added else "",
        "label": shapes.label(app_url, repo, entry.label),
        "created_at": shapes.timestamp(entry.created_at),
        "updated_at": shapes.timestamp(entry.created_at),
    }


def add_link_routes(api: ForgeApi) -> None:
    """Route dependencies, blocks and the timeline on ``api``'s app."""
    state = api.state
    route = api.route

    def issue_page(items: list[Any]) -> bottle.HTTPResponse:
        page = Paging(bottle.request).slice(items)
        return json_response([shapes.issue(api.base, state, i) for i in page])

    @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/dependencies")
    def list_dependencies(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return issue_page(links.dependencies(state, api.repo(actor, owner, repo), index))

    @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/blocks")
    def list_blocks(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return issue_page(links.blocks(state, api.repo(actor, owner, repo), index))

    def change(
        actor: User, owner: str, repo: str, index: int, *, blocks: bool, add: bool
    ) -> bottle.HTTPResponse:
        issue = state.issue(api.repo(actor, owner, repo), index)
        other = links.resolve(state, actor, _meta(Body(bottle.request), owner=owner, repo=repo))
        dependent, blocker = (other, issue) if blocks else (issue, other)
        if add:
            links.add_dependency(state, actor, dependent, blocker)
        else:
            links.remove_dependency(state, actor, dependent, blocker)
        return json_response(shapes.issue(api.base, state, issue), 201 if add else 200)

    @route("POST", "/repos/<owner>/<repo>/issues/<index:int>/dependencies")
    def add_dependency(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return change(actor, owner, repo, index, blocks=False, add=True)

    @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/dependencies")
    def remove_dependency(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return change(actor, owner, repo, index, blocks=False, add=False)

    @route("POST", "/repos/<owner>/<repo>/issues/<index:int>/blocks")
    def add_block(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return change(actor, owner, repo, index, blocks=True, add=True)

    @route("DELETE", "/repos/<owner>/<repo>/issues/<index:int>/blocks")
    def remove_block(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        return change(actor, owner, repo, index, blocks=True, add=False)

    @route("GET", "/repos/<owner>/<repo>/issues/<index:int>/timeline")
    def list_timeline(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        since = parse_time("since", bottle.request.query.get("since"))
        entries = [
            e
            for e in links.timeline(state, found, index)
            if since is None or (e.updated_at if isinstance(e, Comment) else e.created_at) >= since
        ]
        return api.listing(entries, lambda e: timeline_entry(api.base, found, e))
