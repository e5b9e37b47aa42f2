"""The sandbox forge's REST routes for repository files, in Forgejo's JSON shapes
(``routers/api/v1/repo/file.go``). ``ForgeApi`` (``api.py``) adds them with
``add_contents_routes``.

``POST …/contents/{filepath}`` creates one file (``CreateFileOptions``) with a real commit on
``branch`` or on a ``new_branch`` made from it, announced like a push, and answers 201 with a
``FileResponse``. ``GET …/contents/{filepath}?ref=`` answers the ``ContentsResponse`` of a file
(404 when it is missing); listing a directory is not implemented and answers 422.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox.commits import Commit
from reconciler.sandbox.gitstore import Identity
from reconciler.sandbox.rest import Body, json_response, parse_time
from reconciler.sandbox.shapes import timestamp
from reconciler.sandbox.state import Access, Invalid, NotFound, Repo, User

if TYPE_CHECKING:
    from reconciler.sandbox.api import ForgeApi


def _encoded(content: str) -> bytes:
    return content.encode("utf-8", "surrogateescape")


def blob_sha(data: bytes) -> str:
    """The sha git gives a blob holding ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def contents_response(
    app_url: str, repo: Repo, path: str, content: str, *, ref: str, last_commit: Commit
) -> dict[str, Any]:
    """structs.ContentsResponse of a file at ``ref`` (a branch name or a commit sha)."""
    data = _encoded(content)
    sha = blob_sha(data)
    kind = "branch" if ref in repo.git.branches else "commit"
    api = f"{app_url}api/v1/repos/{repo.full_name}"
    url = f"{api}/contents/{path}?ref={ref}"
    git_url = f"{api}/git/blobs/{sha}"
    html_url = f"{app_url}{repo.full_name}/src/{kind}/{ref}/{path}"
    return {
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "sha": sha,
        "last_commit_sha": last_commit.sha,
        "last_commit_when": timestamp(last_commit.when),
        "type": "file",
        "size": len(data),
        "encoding": "base64",
        "content": base64.b64encode(data).decode(),
        "target": None,
        "url": url,
        "html_url": html_url,
        "git_url": git_url,
        "download_url": f"{app_url}{repo.full_name}/raw/{kind}/{ref}/{path}",
        "submodule_git_url": None,
        "_links": {"self": url, "git": git_url, "html": html_url},
    }


def _commit_user(identity: Identity) -> dict[str, Any]:
    return {"name": identity.name, "email": identity.email, "date": timestamp(identity.when)}


def file_commit(app_url: str, repo: Repo, item: Commit) -> dict[str, Any]:
    """structs.FileCommitResponse, read from the commit object itself (tree, committer)."""
    try:
        raw = repo.bare.commit(item.sha)
    finally:
        repo.bare.release()
    api = f"{app_url}api/v1/repos/{repo.full_name}/git"
    return {
        "url": f"{api}/commits/{item.sha}",
        "sha": item.sha,
        "created": timestamp(raw.committer.when),
        "html_url": f"{app_url}{repo.full_name}/commit/{item.sha}",
        "author": _commit_user(raw.author),
        "committer": _commit_user(raw.committer),
        "parents": [
            {
                "url": f"{api}/commits/{parent}",
                "sha": parent,
                "created": timestamp(repo.git.commits[parent].when),
            }
            for parent in item.parents
        ],
        "message": item.message,
        "tree": {
            "url": f"{api}/trees/{raw.tree}",
            "sha": raw.tree,
            "created": timestamp(raw.committer.when),
        },
    }


_UNSIGNED = {
    "verified": False,
    "reason": "gpg.error.not_signed_commit",
    "signature": "",
    "signer": None,
    "payload": "",
}


def _identity(body: Body, field: str, actor: User) -> tuple[str, str] | None:
    """An ``Identity`` option as (name, email); None when absent or without an email.

    The authenticated user's email names that user (their login unless a name is given).
    """
    given = body.mapping(field)
    if not given or not given.get("email"):
        return None  # Forgejo ignores an identity without an email
    email = given["email"]
    name = given.get("name", "")
    if not name and email.lower() == actor.email.lower():
        name = actor.login
    return name, email


def _dates(body: Body) -> tuple[datetime | None, datetime | None]:
    given = body.mapping("dates") or {}
    return parse_time("author", given.get("author")), parse_time(
        "committer", given.get("committer")
    )


def last_commit_of(repo: Repo, head: Commit, path: str) -> Commit:
    """The newest first-parent ancestor of ``head`` that changed ``path``."""
    current = head
    while current.parents:
        parent = repo.git.commits[current.parents[0]]
        if parent.tree.get(path) != current.tree.get(path):
            return current
        current = parent
    return current


def add_contents_routes(api: ForgeApi) -> None:
    """Route the repository file endpoints on ``api``'s app."""
    state = api.state
    route = api.route

    @route("POST", "/repos/<owner>/<repo>/contents/<filepath:path>")
    def create_file(actor: User, owner: str, repo: str, filepath: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        state.require(found, actor, Access.WRITE)  # reqRepoWriter answers before the body
        body = Body(bottle.request)
        # No binding on ``content``: an absent or empty one makes an empty file.
        encoded = body.text("content").replace("\r", "").replace("\n", "")
        branch = body.text("branch")
        new_branch = body.text("new_branch")
        for field, value in (("BranchName", branch), ("NewBranchName", new_branch)):
            if len(value) > 100:
                raise Invalid(f"[{field}]: MaxSize")
        author_dates = _dates(body)
        try:
            # Go's StdEncoding skips line breaks, refuses anything else outside the alphabet.
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as bad:
            raise Invalid(f"illegal base64 data: {bad}") from None
        now = state.now()
        author_given = _identity(body, "author", actor)
        committer_given = _identity(body, "committer", actor)
        # Forgejo's GetAuthorAndCommitterUsers: a missing author is the committer, a missing
        # committer the author, and both missing the authenticated user.
        author_pair = author_given or committer_given or (actor.login, actor.email)
        committer_pair = committer_given or author_pair
        author = Identity(author_pair[0], author_pair[1], author_dates[0] or now)
        committer = Identity(committer_pair[0], committer_pair[1], author_dates[1] or now)
        message = body.text("message") or f"Add {filepath}"
        if body.flag("signoff"):
            message = f"{message.rstrip()}\n\nSigned-off-by: {committer.name} <{committer.email}>"
        written, commit = state.create_file(
            found,
            actor,
            filepath,
            content.decode("utf-8", "surrogateescape"),
            branch=branch,
            new_branch=new_branch,
            message=message,
            author=author,
            committer=committer,
            force_new_branch=body.flag("force_overwrite_new_branch"),
        )
        answer = {
            "content": contents_response(
                api.base, found, filepath, commit.tree[filepath], ref=written, last_commit=commit
            ),
            "commit": file_commit(api.base, found, commit),
            "verification": dict(_UNSIGNED),
        }
        return json_response(answer, 201)

    @route("GET", "/repos/<owner>/<repo>/contents/<filepath:path>")
    def get_contents(actor: User, owner: str, repo: str, filepath: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        ref = bottle.request.query.get("ref", "") or found.default_branch
        head = state.commit_at(found, ref)
        content = head.tree.get(filepath)
        if content is None:
            if any(path.startswith(filepath.rstrip("/") + "/") for path in head.tree):
                raise Invalid("the sandbox does not implement listing a directory's contents")
            raise NotFound(f"object does not exist [id: {head.sha}, rel_path: {filepath}]")
        last = last_commit_of(found, head, filepath)
        return json_response(
            contents_response(api.base, found, filepath, content, ref=ref, last_commit=last)
        )
