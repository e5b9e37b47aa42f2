"""The sandbox forge's REST routes for repository wikis, in Forgejo's JSON shapes
(``routers/api/v1/repo/wiki.go``). ``ForgeApi`` (``api.py``) adds them with ``add_wiki_routes``.

``GET …/wiki/pages`` lists ``WikiPageMetaData`` (paged, ``X-Total-Count`` counting every file
of the wiki); ``GET|PATCH|DELETE …/wiki/page/{pageName}`` read, write (creating a missing page,
as Forgejo does) and delete one page; ``POST …/wiki/new`` adds one (400 when it exists);
``GET …/wiki/revisions/{pageName}`` lists its commits. Page content travels base64-encoded in
``content_base64``; a body whose content is not valid base64 is refused with 400.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import wiki
from reconciler.sandbox.rest import DEFAULT_PAGING_NUM, Body, empty_response, json_response
from reconciler.sandbox.shapes import timestamp
from reconciler.sandbox.state import Repo, User

if TYPE_CHECKING:
    from reconciler.sandbox.api import ForgeApi


def wiki_commit(commit: wiki.WikiCommit) -> dict[str, Any]:
    """structs.WikiCommit (Forgejo spells the committer ``commiter``)."""
    identity = {
        "name": commit.author.login,
        "email": commit.author.email,
        "date": timestamp(commit.when),
    }
    return {
        "sha": commit.sha,
        "author": identity,
        "commiter": dict(identity),
        "message": commit.message,
    }


def page_meta(app_url: str, repo: Repo, web_path: str, commit: wiki.WikiCommit) -> dict[str, Any]:
    """structs.WikiPageMetaData."""
    return {
        "title": wiki.display_title(web_path),
        "html_url": f"{app_url}{repo.full_name}/wiki/{web_path}",
        "sub_url": web_path,
        "last_commit": wiki_commit(commit),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def page_body(app_url: str, repo: Repo, found: wiki.WikiPage) -> dict[str, Any]:
    """structs.WikiPage: the metadata plus content, sidebar and footer, base64-encoded."""
    return {
        **page_meta(app_url, repo, found.web_path, found.last_commit),
        "content_base64": _b64(found.content),
        "commit_count": found.commit_count,
        "sidebar": _b64(wiki.optional_content(repo, "_Sidebar")),
        "footer": _b64(wiki.optional_content(repo, "_Footer")),
    }


def _content(body: Body) -> bytes:
    try:
        return base64.b64decode(body.text("content_base64"), validate=True)
    except (binascii.Error, ValueError):
        raise wiki.WikiRefusal("invalid base64 encoding of content") from None


def _int_query(name: str) -> int:
    try:
        return int(bottle.request.query.get(name, "0") or "0")
    except ValueError:
        return 0  # Forgejo's FormInt reads a malformed number as 0


def add_wiki_routes(api: ForgeApi) -> None:
    """Route the wiki endpoints on ``api``'s app."""
    state = api.state
    route = api.route

    @route("GET", "/repos/<owner>/<repo>/wiki/pages")
    def list_pages(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        listed = wiki.pages(found)
        files = len(found.wiki.files()) if found.wiki is not None else 0
        # ListWikiPages pages by itself: a limit of 1 or less means the default, none is capped.
        number = max(_int_query("page"), 1)
        limit = _int_query("limit")
        limit = DEFAULT_PAGING_NUM if limit <= 1 else limit
        page = listed[(number - 1) * limit : number * limit]
        return json_response(
            [page_meta(api.base, found, web, commit) for web, commit in page],
            200,
            {"X-Total-Count": str(files), "Access-Control-Expose-Headers": "X-Total-Count"},
        )

    @route("GET", "/repos/<owner>/<repo>/wiki/page/<name:path>")
    def get_page(actor: User, owner: str, repo: str, name: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        shown = wiki.page(found, wiki.request_to_web_path(name))
        return json_response(page_body(api.base, found, shown))

    @route("POST", "/repos/<owner>/<repo>/wiki/new")
    def create_page(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        title = body.text("title")
        if not title.strip():
            raise wiki.WikiRefusal("emptyTitle")
        web = wiki.create_page(
            state, found, actor, title=title, content=_content(body), message=body.text("message")
        )
        return json_response(page_body(api.base, found, wiki.page(found, web)), 201)

    @route("PATCH", "/repos/<owner>/<repo>/wiki/page/<name:path>")
    def edit_page(actor: User, owner: str, repo: str, name: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        web = wiki.edit_page(
            state,
            found,
            actor,
            wiki.request_to_web_path(name),
            title=body.text("title"),
            content=_content(body),
            message=body.text("message"),
        )
        return json_response(page_body(api.base, found, wiki.page(found, web)))

    @route("DELETE", "/repos/<owner>/<repo>/wiki/page/<name:path>")
    def delete_page(actor: User, owner: str, repo: str, name: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        wiki.delete_page(state, found, actor, wiki.request_to_web_path(name))
        return empty_response()

    @route("GET", "/repos/<owner>/<repo>/wiki/revisions/<name:path>")
    def list_revisions(actor: User, owner: str, repo: str, name: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        commits = wiki.revisions(found, wiki.request_to_web_path(name))
        number = max(_int_query("page"), 1)
        start = (number - 1) * wiki.REVISIONS_PAGE
        shown = commits[start : start + wiki.REVISIONS_PAGE]
        return json_response(
            {"commits": [wiki_commit(c) for c in shown], "count": len(commits)},
            200,
            {"X-Total-Count": str(len(commits)), "Access-Control-Expose-Headers": "X-Total-Count"},
        )
