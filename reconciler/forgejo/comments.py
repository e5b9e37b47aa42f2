"""Comments and the bot's marker comments: one comment per purpose, found by a hidden marker.

``CommentOps`` is the comment half of ``reconciler.forgejo.gateway.ForgejoGateway``;
controllers call ``upsert_marker_comment`` through the gateway, and anything that reads the
bot's comments back (the console, rebuilt state) uses ``marker_tag``/``has_marker``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from reconciler.errors import ForgejoError, ForgejoNotFound, ForgejoServerError
from reconciler.forgejo.http import ForgejoHttp, WriteOutcome, repo_path, rfc3339
from reconciler.forgejo.types import Comment, Issue, list_body

__all__ = ["CommentOps", "has_marker", "marker_tag", "same_text"]

_MARKER = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_TAGS = re.compile(r"<!-- agent-fleet:[A-Za-z0-9_.:/-]+ -->")


def marker_tag(marker: str) -> str:
    """The hidden HTML comment that identifies one of the bot's comments: ``<!-- agent-fleet:x -->``."""
    if not _MARKER.match(marker):
        raise ValueError(
            f"comment marker must be letters, digits and . _ : / - only, got {marker!r}"
        )
    return f"<!-- agent-fleet:{marker} -->"


def _one_more_comment(issue: object) -> object:
    if isinstance(issue, Issue):
        return issue.model_copy(update={"comments": issue.comments + 1})
    return None  # not an issue we know how to count on (a pull request): drop it


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
        comments = self._get(
            "list_comments",
            f"{repo_path(repo)}/issues/{number}/comments",
            lambda raw: tuple(Comment.from_api(item) for item in list_body(raw, "comments")),
            params=params,
        )
        if since is None:
            self._note_markers(repo, number, comments)
        return comments

    # --- the record of the bot's marker comments ----------------------------------------------

    def _note_markers(self, repo: str, number: int, comments: Sequence[Comment]) -> None:
        """Record the bot's marker comments of a complete listing (the oldest per tag)."""
        found: dict[str, Comment] = {}
        if comments:
            login = self.bot_login()
            for comment in sorted(comments, key=lambda c: c.id):
                if comment.author != login:
                    continue
                for tag in _TAGS.findall(comment.body):
                    found.setdefault(tag, comment)
        with self._doubt_lock:
            self._markers[(repo.lower(), number)] = found

    def _known(self, repo: str, number: int, tag: str) -> tuple[bool, Comment | None]:
        """Whether this process knows the issue's marker comments, and the one for ``tag``."""
        with self._doubt_lock:
            known = self._markers.get((repo.lower(), number))
            return (known is not None, known.get(tag) if known is not None else None)

    def _wrote_marker(self, repo: str, number: int, tag: str, comment: Comment | None) -> None:
        """Record our own write of the ``tag`` comment (None: forget the issue's record, after
        a write that failed or whose outcome is unknown)."""
        with self._doubt_lock:
            key = (repo.lower(), number)
            if comment is None:
                self._markers.pop(key, None)
            elif key in self._markers:
                self._markers[key][tag] = comment

    def get_comment(self, repo: str, comment_id: int) -> Comment:
        """One comment by id."""
        return self._get(
            "get_comment", f"{repo_path(repo)}/issues/comments/{comment_id}", Comment.from_api
        )

    def create_comment(self, repo: str, number: int, body: str) -> Comment:
        """Post a comment. Not retried: a retry after a lost response would post it twice.

        A kept copy of the issue (``get_issue(kept=True)``) counts the comment (a kept pull
        request is dropped); after a failure, whose outcome may be unknown, it is dropped."""
        try:
            comment = self._write(
                "create_comment",
                "POST",
                f"{repo_path(repo)}/issues/{number}/comments",
                Comment.from_api,
                body={"body": body},
            )
        except BaseException:
            self.seen.invalidate(repo, number)
            raise
        self.seen.change_copy(repo, number, _one_more_comment)
        return comment

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

    def delete_comment(self, repo: str, comment_id: int) -> None:
        """Delete a comment. Retried: a comment already gone answers 404, taken as done."""
        try:
            self._request(
                "delete_comment",
                "DELETE",
                f"{repo_path(repo)}/issues/comments/{comment_id}",
                idempotent=True,
            )
        except ForgejoNotFound:
            return

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
        (``comments`` when the caller already fetched them; else this process's record of the
        issue's marker comments, kept from its last listing and its own writes since; else one
        list call). It is created if missing, edited only when the text Forgejo holds (or last
        held, as recorded) differs, and left alone otherwise — so a second call with the same
        body makes no write. An edit of a recorded comment that is gone (a person deleted it)
        lists the comments and creates it again.

        Exactly once under faults: when a create or edit of this comment ends with an unknown
        outcome (the answer was lost, or a 5xx), the write may still land later, so

        * the error is raised and the comment is marked *in doubt*; a create is first looked
          for at once (the common case: it landed and only the answer was lost);
        * while in doubt, no write of this comment is made until ``settle_after`` seconds have
          passed since the doubtful one was sent (``WaitingError`` says when to come back),
          and then the comments are read afresh — the caller's ``comments`` are not trusted;
        * should two of the bot's comments carry the marker all the same (a write held up
          longer than that), the oldest is kept and the others are deleted.
        """
        tag = marker_tag(marker)
        text = f"{tag}\n{body}"
        doubt = (repo.lower(), number, tag)
        sent = self._doubt_sent(doubt, what=f"the {marker} comment on {repo}#{number}")
        if sent is not None:
            comments = None  # what Forgejo holds now, not what was observed before
        known, current = (False, None) if sent is not None else self._known(repo, number, tag)
        if not known and comments is not None and not comments:
            # Nothing to find: an issue without comments (the record starts here).
            self._note_markers(repo, number, ())
        elif not known:
            existing = comments if comments is not None else self.list_comments(repo, number)
            mine = self._marker_comments(existing, tag)
            for extra in mine[1:]:
                self.delete_comment(repo, extra.id)
            if comments is not None or mine[1:]:
                self._note_markers(repo, number, [c for c in existing if c not in mine[1:]])
            current = mine[0] if mine else None
        started = self._clock()
        gone = False
        try:
            if current is None:
                created = self.create_comment(repo, number, text)
                self._wrote_marker(repo, number, tag, created)
                return created, "created"
            if same_text(current.body, text):
                return current, "unchanged"
            edited = self.edit_comment(repo, current.id, text)
            self._wrote_marker(repo, number, tag, edited)
            return edited, "edited"
        except ForgejoNotFound:
            self._wrote_marker(repo, number, tag, None)
            if not known:
                raise
            gone = True  # the recorded comment was deleted (by a person): look, create it again
        except ForgejoError as exc:
            self._wrote_marker(repo, number, tag, None)
            if not isinstance(exc, ForgejoServerError) or not exc.outcome_unknown:
                raise
            with self._doubt_lock:
                self._in_doubt[doubt] = started
            landed = None
            if current is None:
                landed = self._look_for_landed_create(repo, number, tag=tag, text=text)
            if landed is None:
                self._wrote_marker(repo, number, tag, None)  # its listing may be overtaken
                raise
            with self._doubt_lock:
                self._in_doubt.pop(doubt, None)
            return landed, "created"
        finally:
            if sent is not None:
                with self._doubt_lock:
                    if self._in_doubt.get(doubt) == sent:
                        del self._in_doubt[doubt]
        assert gone
        return self.upsert_marker_comment(repo, number, marker=marker, body=body)

    def _marker_comments(self, existing: Sequence[Comment], tag: str) -> list[Comment]:
        """The bot's comments carrying ``tag``, oldest first."""
        if not existing:  # only then does it matter who the bot is (one call, once per process)
            return []
        login = self.bot_login()
        return sorted(
            (c for c in existing if c.author == login and tag in c.body), key=lambda c: c.id
        )

    def _look_for_landed_create(
        self, repo: str, number: int, *, tag: str, text: str
    ) -> Comment | None:
        """After a create with an unknown outcome: the comment, when it is there already (the
        answer was lost, not the write) — then nothing is in doubt any more."""
        try:
            found = self._marker_comments(self.list_comments(repo, number), tag)
        except ForgejoError:
            return None  # still in doubt; the next pass waits and reads again
        if len(found) == 1 and same_text(found[0].body, text):
            return found[0]
        return None
