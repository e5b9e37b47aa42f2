"""Repository wikis: the gateway's reads and writes of wiki pages, and their wire models.

``WikiOps`` is part of ``reconciler.forgejo.gateway.ForgejoGateway``. The knowledge controller
(``controllers/knowledge.py``) lists a repository's pages (``list_wiki_pages``), reads one
(``get_wiki_page``: None when it does not exist), its history (``wiki_page_revisions``, who
edited it) and writes one (``create_wiki_page`` for a new page, ``edit_wiki_page`` for an
existing one). Forgejo carries page content base64-encoded (``content_base64``); these methods
take and return text.

A page is named in URLs by its *web path* (the ``sub_url`` Forgejo answers with), which
Forgejo derives from the page's title (``services/wiki/wiki_path.go``); :func:`wiki_web_path`
does the same for the titles agent-fleet writes, so a page can be read before it was listed.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Mapping
from datetime import datetime

from reconciler.errors import ForgejoNotFound
from reconciler.forgejo.http import ForgejoHttp, repo_path, seg
from reconciler.forgejo.parsing import (
    MalformedResponse,
    _Frozen,
    _int,
    _mapping,
    _req_str,
    _str,
    _time,
)

__all__ = [
    "PageNotText",
    "WikiCommit",
    "WikiOps",
    "WikiPage",
    "WikiPageMeta",
    "wiki_web_path",
]

_MARKER = ".-"


class PageNotText(MalformedResponse):
    """A page's content is not base64 of UTF-8 text (a page pushed over git may hold any
    bytes); the gateway raises it as the cause of a ``ForgejoError``."""


def wiki_web_path(title: str) -> str:
    """The web path Forgejo gives a page titled ``title`` (its ``TitleToPath``).

    Spaces become dashes, unless the title holds a dash: then it is kept as it is and marked
    with the suffix ``.-`` (``fleet-notes-ci`` → ``fleet-notes-ci.-``); the result is
    query-escaped. Titles with a ``/`` are not supported by Forgejo's API either.
    """
    title = title.strip()
    if "-" in title or title.endswith(".md"):
        title += _MARKER
    else:
        title = title.replace(" ", "-")
    web = urllib.parse.quote_plus(title, safe="")
    return web if web not in ("", ".", "..") else "unnamed"


class WikiCommit(_Frozen):
    """``WikiCommit``: the commit that last changed a page, and who made it."""

    sha: str
    author: str
    """The commit author's name (Forgejo writes the editing user's name)."""
    message: str
    when: datetime | None

    @classmethod
    def from_api(cls, raw: object) -> WikiCommit:
        data = _mapping(raw, "wiki commit")
        author = data.get("author")
        who = author if isinstance(author, Mapping) else {}
        return cls(
            sha=_req_str(data, "sha", "wiki commit"),
            author=_str(who, "name"),
            message=_str(data, "message"),
            when=_time(who, "date"),
        )


class WikiPageMeta(_Frozen):
    """``WikiPageMetaData``: a page as the page list shows it."""

    title: str
    sub_url: str
    html_url: str
    last_commit: WikiCommit | None

    @classmethod
    def from_api(cls, raw: object) -> WikiPageMeta:
        data = _mapping(raw, "wiki page")
        commit = data.get("last_commit")
        return cls(
            title=_str(data, "title"),
            sub_url=_req_str(data, "sub_url", "wiki page"),
            html_url=_str(data, "html_url"),
            last_commit=WikiCommit.from_api(commit) if commit is not None else None,
        )


class WikiPage(_Frozen):
    """``WikiPage``: one page with its content (decoded) and how many commits touched it."""

    title: str
    sub_url: str
    html_url: str
    content: str
    commit_count: int
    last_commit: WikiCommit | None

    @classmethod
    def from_api(cls, raw: object) -> WikiPage:
        meta = WikiPageMeta.from_api(raw)
        data = _mapping(raw, "wiki page")
        try:
            content = base64.b64decode(_str(data, "content_base64"), validate=True)
            text = content.decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise PageNotText(f"wiki page {meta.sub_url}: content is not text: {exc}") from exc
        return cls(
            title=meta.title,
            sub_url=meta.sub_url,
            html_url=meta.html_url,
            content=text,
            commit_count=_int(data, "commit_count"),
            last_commit=meta.last_commit,
        )


def _commits(raw: object) -> tuple[WikiCommit, ...]:
    data = _mapping(raw, "wiki commit list")
    commits = data.get("commits") or []
    if not isinstance(commits, list):
        raise MalformedResponse("wiki commit list: commits must be a list")
    return tuple(WikiCommit.from_api(item) for item in commits)


def _content_body(content: str, *, title: str, message: str) -> dict[str, object]:
    return {
        "title": title,
        "content_base64": base64.b64encode(content.encode()).decode(),
        "message": message,
    }


class WikiOps(ForgejoHttp):
    """The wiki operations of the gateway."""

    def list_wiki_pages(self, repo: str) -> tuple[WikiPageMeta, ...]:
        """Every page of the repository's wiki; empty when it has no wiki yet."""
        try:
            return self._list(
                "list_wiki_pages", f"{repo_path(repo)}/wiki/pages", WikiPageMeta.from_api
            )
        except ForgejoNotFound:
            return ()  # no wiki yet (or no such repository: the first write says which)

    def get_wiki_page(self, repo: str, web_path: str) -> WikiPage | None:
        """The page at ``web_path`` (a ``sub_url``), or None when there is no such page."""
        try:
            return self._get(
                "get_wiki_page", f"{repo_path(repo)}/wiki/page/{seg(web_path)}", WikiPage.from_api
            )
        except ForgejoNotFound:
            return None

    def wiki_page_revisions(self, repo: str, web_path: str) -> tuple[WikiCommit, ...]:
        """The commits of the page at ``web_path``, newest first (its first 50)."""
        return self._get(
            "wiki_page_revisions", f"{repo_path(repo)}/wiki/revisions/{seg(web_path)}", _commits
        )

    def create_wiki_page(self, repo: str, title: str, content: str, *, message: str) -> WikiPage:
        """Add a page titled ``title``. Not retried: a retry after a lost answer would be
        refused as existing; the caller reads the page before writing again."""
        return self._write(
            "create_wiki_page",
            "POST",
            f"{repo_path(repo)}/wiki/new",
            WikiPage.from_api,
            body=_content_body(content, title=title, message=message),
        )

    def edit_wiki_page(self, repo: str, web_path: str, content: str, *, message: str) -> WikiPage:
        """Replace the content of the page at ``web_path`` (Forgejo writes it if missing).
        Not retried: each attempt would be another commit."""
        return self._write(
            "edit_wiki_page",
            "PATCH",
            f"{repo_path(repo)}/wiki/page/{seg(web_path)}",
            WikiPage.from_api,
            body=_content_body(content, title="", message=message),
        )
