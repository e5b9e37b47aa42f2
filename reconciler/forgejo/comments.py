"""Comments and the bot's marker comments: one comment per purpose, found by a hidden marker.

``CommentOps`` is the comment half of ``reconciler.forgejo.gateway.ForgejoGateway``;
controllers call ``upsert_marker_comment`` through the gateway, and anything that reads the
bot's comments back (the console, rebuilt state) uses ``marker_tag``/``has_marker``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from reconciler.forgejo.http import ForgejoHttp, WriteOutcome, repo_path, rfc3339
from reconciler.forgejo.types import Comment, list_body

__all__ = ["CommentOps", "has_marker", "marker_tag", "same_text"]

_MARKER = re.compile(r"^[A-Za-z0-9_.:/-]+$")


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


def same_text(left: str, right: str) -> bool:
    # Browsers and some servers turn "\n" into "\r\n" and trim the end; neither is a change.
    return left.replace("\r\n", "\n").rstrip() == right.replace("\r\n", "\n").rstrip()


class CommentOps(ForgejoHttp):
    """The comment operations of the gateway."""

    # --- comments ----------------------------------------------------------------------------

    def list_comments(
        self, repo: str, number: int, *, since: datetime | None = None
    ) -> tuple[Comment, ...]:
        """All comments of an issue or PR, oldest first (this endpoint is not paginated)."""
        params: dict[str, str | int] = {}
        if since is not None:
            params["since"] = rfc3339(since)
        return self._get(
            "list_comments",
            f"{repo_path(repo)}/issues/{number}/comments",
            lambda raw: tuple(Comment.from_api(item) for item in list_body(raw, "comments")),
            params=params,
        )

    def get_comment(self, repo: str, comment_id: int) -> Comment:
        """One comment by id."""
        return self._get(
            "get_comment", f"{repo_path(repo)}/issues/comments/{comment_id}", Comment.from_api
        )

    def create_comment(self, repo: str, number: int, body: str) -> Comment:
        """Post a comment. Not retried: a retry after a lost response would post it twice."""
        return self._write(
            "create_comment",
            "POST",
            f"{repo_path(repo)}/issues/{number}/comments",
            Comment.from_api,
            body={"body": body},
        )

    def edit_comment(self, repo: str, comment_id: int, body: str) -> Comment:
        """Replace a comment's text. Retried: idempotent."""
        return self._write(
            "edit_comment",
            "PATCH",
            f"{repo_path(repo)}/issues/comments/{comment_id}",
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
        if same_text(mine.body, text):
            return mine, "unchanged"
        return self.edit_comment(repo, mine.id, text), "edited"
