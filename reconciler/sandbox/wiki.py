"""The sandbox forge's repository wikis, with Forgejo's rules, no HTTP.

``api_wiki`` calls these for the ``/repos/{owner}/{repo}/wiki/…`` routes. As in Forgejo, a
wiki is a git repository of its own holding one ``<git path>.md`` file per page; it exists
from the first page written (until then the wiki routes answer 404), and every write is one
commit by the user who made it. Only the history is kept here (each page's revisions, newest
last), not a git repository on disk: nothing reads the wiki over git.

Page names follow Forgejo's ``services/wiki/wiki_path.go``: a *title* ("Home Page") becomes a
*web path* (``Home-Page``: spaces turned into dashes, the rest query-escaped) and a *git path*
(``Home-Page.md``). A title that holds a dash keeps its dashes and spaces as they are and is
marked with the suffix ``.-`` (``build-cache`` → ``build-cache.-``, file ``build-cache.-.md``),
so that it reads back unchanged. The routes take the web path. Every write is announced as
Forgejo's ``wiki`` webhook event (action ``created``, ``edited`` or ``deleted``, the page's web
path as ``page`` and the commit message as ``comment``). Forgejo reads the page name
from the raw (still escaped) URL; Bottle hands over the decoded one, so names that need
escaping in a URL (``+``, ``%``) may be found differently here; names of letters, digits,
dashes, dots and underscores behave the same.
"""

from __future__ import annotations

import hashlib
import posixpath
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.sandbox.state import (
    Access,
    ForgeEvent,
    ForgeRefusal,
    ForgeState,
    NotFound,
    Repo,
    User,
)

RESERVED_NAMES = ("_pages", "_new", "_edit", "raw")
REVISIONS_PAGE = 50  # Forgejo's setting.Git.CommitsRangeSize
_DASH_MARKER = ".-"


class WikiRefusal(ForgeRefusal):
    """Forgejo's 400 answers to a wiki write (empty title, reserved name, page exists)."""

    status = 400


# --- page names -----------------------------------------------------------------------------


def _has_marker(segment: str) -> bool:
    return segment.endswith(_DASH_MARKER)


def _unescape_segment(segment: str) -> str:
    if _has_marker(segment):
        segment = segment[: -len(_DASH_MARKER)]
    else:
        segment = segment.replace("-", " ")
    return urllib.parse.unquote_plus(segment)


def _escape_segment(segment: str, *, marked: bool) -> str:
    if marked or "-" in segment or segment.endswith(".md"):
        segment += _DASH_MARKER
    else:
        segment = segment.replace(" ", "-")
    # Go's url.QueryEscape: everything but letters, digits and -_.~ escaped, space as +.
    return urllib.parse.quote_plus(segment, safe="")


def _clean(path: str) -> str:
    """Forgejo's ``util.PathJoinRelX``: a clean relative path, never above its root."""
    cleaned = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")
    return "" if cleaned == "." else cleaned


def title_to_web_path(title: str) -> str:
    """The web path of a page titled ``title`` (``TitleToPath``); an empty title: ``unnamed``."""
    web = _clean(_escape_segment(title.strip(), marked=False))
    return web if web not in ("", ".") else "unnamed"


def request_to_web_path(name: str) -> str:
    """The web path a page name in a URL names (``RequestToPath``)."""
    return _clean(name).replace("/", "%2F")


def git_path(web_path: str) -> str:
    """The file of the page at ``web_path`` in the wiki's repository."""
    if web_path.endswith(".md"):
        return _clean(urllib.parse.unquote(web_path))
    segments = []
    for segment in web_path.split("/"):
        escaped = _escape_segment(_unescape_segment(segment), marked=_has_marker(segment))
        segments.append(escaped.replace("%20", " ").replace("+", " "))
    return "/".join(segments) + ".md"


def web_path_of_file(path: str) -> str | None:
    """The web path of the wiki file ``path`` (``GitPathToPath``); None for a non-page file."""
    if not path.endswith(".md"):
        return None
    segments = [
        _escape_segment(_unescape_segment(s), marked=_has_marker(s))
        for s in path[: -len(".md")].split("/")
    ]
    return "/".join(segments)


def display_title(web_path: str) -> str:
    """The title Forgejo shows for the page at ``web_path`` (``Path.DisplayName``)."""
    base = posixpath.basename(web_path)
    if base.endswith(".md"):
        base = urllib.parse.unquote(base[: -len(".md")])
    return _unescape_segment(base)


# --- the wiki -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WikiCommit:
    """One commit of the wiki's repository; ``content`` is what it left in ``path`` (None:
    it deleted the file)."""

    sha: str
    path: str
    content: bytes | None
    author: User
    message: str
    when: datetime


@dataclass
class Wiki:
    """A repository's wiki: its commits, oldest first."""

    commits: list[WikiCommit] = field(default_factory=list)

    def files(self) -> dict[str, WikiCommit]:
        """Each file the wiki holds now, with the commit that last wrote it, by name."""
        current: dict[str, WikiCommit] = {}
        for commit in self.commits:
            if commit.content is None:
                current.pop(commit.path, None)
            else:
                current[commit.path] = commit
        return current

    def history(self, path: str) -> list[WikiCommit]:
        """The commits that touched ``path``, newest first."""
        return [c for c in reversed(self.commits) if c.path == path]


@dataclass(frozen=True)
class WikiPage:
    """A page as the API shows it: its web path, content, last commit and commit count."""

    web_path: str
    content: bytes
    last_commit: WikiCommit
    commit_count: int


def _existing(repo: Repo) -> Wiki:
    wiki = repo.wiki
    if wiki is None:
        raise NotFound("wiki repository does not exist")
    return wiki


def _commit(
    state: ForgeState, repo: Repo, actor: User, *, path: str, content: bytes | None, message: str
) -> WikiCommit:
    wiki = repo.wiki
    if wiki is None:
        wiki = Wiki()
        repo.wiki = wiki
    parent = wiki.commits[-1].sha if wiki.commits else ""
    when = state.now()
    digest = hashlib.sha1(  # an object id, as git makes them
        f"{parent}\0{path}\0{actor.login}\0{message}\0{when.isoformat()}\0".encode()
        + (content if content is not None else b"\0deleted")
    ).hexdigest()
    commit = WikiCommit(digest, path, content, actor, message, when)
    wiki.commits.append(commit)
    repo.updated_at = when
    return commit


def page(repo: Repo, web_path: str) -> WikiPage:
    """The page at ``web_path`` (404 when the wiki or the page does not exist)."""
    wiki = _existing(repo)
    path = git_path(web_path)
    found = wiki.files().get(path)
    if found is None or found.content is None:
        raise NotFound("wiki page does not exist")
    return WikiPage(web_path, found.content, found, len(wiki.history(path)))


def optional_content(repo: Repo, title: str) -> bytes:
    """The content of the page titled ``title`` (the sidebar, the footer), empty when none."""
    wiki = repo.wiki
    if wiki is None:
        return b""
    found = wiki.files().get(git_path(title_to_web_path(title)))
    return found.content if found is not None and found.content is not None else b""


def pages(repo: Repo) -> list[tuple[str, WikiCommit]]:
    """Every page, (web path, last commit), in the order of the wiki's tree (by file name)."""
    listed = []
    for path, commit in sorted(_existing(repo).files().items(), key=lambda kv: kv[0].encode()):
        web = web_path_of_file(path)
        if web is not None:
            listed.append((web, commit))
    return listed


def revisions(repo: Repo, web_path: str) -> list[WikiCommit]:
    """The commits of the page at ``web_path``, newest first (404 when it does not exist)."""
    page(repo, web_path)
    return _existing(repo).history(git_path(web_path))


def _check_name(web_path: str) -> None:
    for segment in web_path.split("/"):
        if _unescape_segment(segment) in RESERVED_NAMES:
            raise WikiRefusal(f"wiki title is reserved: {_unescape_segment(segment)}")


def create_page(
    state: ForgeState, repo: Repo, actor: User, *, title: str, content: bytes, message: str
) -> str:
    """Add the page titled ``title``; its web path. 400 for an empty, reserved or taken name."""
    state.require(repo, actor, Access.WRITE)
    if not title.strip():
        raise WikiRefusal("emptyTitle")
    web_path = title_to_web_path(title)
    _check_name(web_path)
    wiki = repo.wiki
    path = git_path(web_path)
    if wiki is not None and path in wiki.files():
        raise WikiRefusal(f"wiki page is already exist [title: {web_path}]")
    message = message or f"Add {title!r}"
    _commit(state, repo, actor, path=path, content=content, message=message)
    _announce(state, repo, actor, "created", web_path, message)
    return web_path


def edit_page(
    state: ForgeState,
    repo: Repo,
    actor: User,
    web_path: str,
    *,
    title: str,
    content: bytes,
    message: str,
) -> str:
    """Write the page at ``web_path``, renamed when ``title`` is given; its new web path.

    As in Forgejo, editing a page that does not exist writes it (the old file is only
    removed when it is there).
    """
    state.require(repo, actor, Access.WRITE)
    new_web = title_to_web_path(title) if title.strip() else web_path
    _check_name(new_web)
    old_path, new_path = git_path(web_path), git_path(new_web)
    message = message or f"Update {new_web!r}"
    wiki = repo.wiki
    if old_path != new_path and wiki is not None and old_path in wiki.files():
        _commit(state, repo, actor, path=old_path, content=None, message=message)
    _commit(state, repo, actor, path=new_path, content=content, message=message)
    _announce(state, repo, actor, "edited", new_web, message)
    return new_web


def delete_page(state: ForgeState, repo: Repo, actor: User, web_path: str) -> None:
    """Delete the page at ``web_path`` (404 when it does not exist)."""
    state.require(repo, actor, Access.WRITE)
    path = git_path(web_path)
    if path not in _existing(repo).files():
        raise NotFound("file does not exist")
    _commit(state, repo, actor, path=path, content=None, message=f"Delete {web_path!r}")
    _announce(state, repo, actor, "deleted", web_path, "")


def _announce(
    state: ForgeState, repo: Repo, actor: User, action: str, web_path: str, message: str
) -> None:
    """The ``wiki`` webhook event of a page written or deleted through the API."""
    state.announce(
        ForgeEvent(
            repo=repo,
            event_type="wiki",
            action=action,
            sender=actor,
            page=web_path,
            message=message,
        )
    )
