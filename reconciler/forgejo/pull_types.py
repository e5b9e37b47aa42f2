"""Frozen models of pull requests, reviews, commits, changed files, commit statuses and branches,
parsed from Forgejo's JSON. ``reconciler.forgejo.types`` re-exports them with the other wire
models.

This module imports neither pyforgejo nor httpx on purpose: it is safe to import anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

from reconciler.forgejo.issue_types import IssueState
from reconciler.forgejo.parsing import (
    MalformedResponse,
    _bool,
    _Frozen,
    _int,
    _login,
    _mapping,
    _objects,
    _opt_int,
    _opt_str,
    _req_int,
    _req_str,
    _str,
    _time,
)
from reconciler.forgejo.repo_types import Label


class ReviewState(StrEnum):
    """A pull request review's state (Forgejo ``ReviewStateType``).

    ``UNKNOWN`` stands for anything a newer server may add, so parsing never fails on it.
    """

    APPROVED = "APPROVED"
    REQUEST_CHANGES = "REQUEST_CHANGES"
    COMMENT = "COMMENT"
    PENDING = "PENDING"
    REQUEST_REVIEW = "REQUEST_REVIEW"
    UNKNOWN = "UNKNOWN"


class CommitState(StrEnum):
    """A commit status state (Forgejo ``CommitStatusState``)."""

    PENDING = "pending"
    SUCCESS = "success"
    ERROR = "error"
    FAILURE = "failure"
    WARNING = "warning"
    SKIPPED = "skipped"


class PullRequest(_Frozen):
    """A pull request with the branch facts the review and receipts controllers check."""

    id: int | None
    number: int
    title: str
    body: str
    state: IssueState
    draft: bool
    merged: bool
    merged_at: datetime | None
    merge_commit_sha: str | None
    mergeable: bool
    head_branch: str
    head_sha: str
    head_repo: str | None
    base_branch: str
    base_repo: str | None
    author: str
    labels: tuple[str, ...]
    html_url: str
    created_at: datetime | None
    updated_at: datetime | None
    closed_at: datetime | None
    merge_base: str | None = None
    """The commit the PR's commits and diff are counted from (Forgejo's ``merge_base``)."""

    @classmethod
    def from_api(cls, raw: object) -> PullRequest:
        data = _mapping(raw, "pull request")
        what = "pull request"
        head = _mapping(data.get("head"), "pull request head")
        base = _mapping(data.get("base"), "pull request base")
        return cls(
            id=_opt_int(data, "id"),
            number=_req_int(data, "number", what),
            title=_str(data, "title"),
            body=_str(data, "body"),
            state=IssueState(_req_str(data, "state", what)),
            draft=_bool(data, "draft"),
            merged=_bool(data, "merged"),
            merged_at=_time(data, "merged_at"),
            merge_commit_sha=_opt_str(data, "merge_commit_sha"),
            mergeable=_bool(data, "mergeable"),
            head_branch=_head_branch(head),
            head_sha=_str(head, "sha"),
            # A deleted fork leaves ``repo: null`` on the head.
            head_repo=_repo_full_name(head.get("repo")),
            base_branch=_req_str(base, "ref", "pull request base"),
            base_repo=_repo_full_name(base.get("repo")),
            author=_login(data.get("user")),
            labels=tuple(Label.from_api(label).name for label in _objects(data, "labels")),
            html_url=_str(data, "html_url"),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
            closed_at=_time(data, "closed_at"),
            merge_base=_opt_str(data, "merge_base") or None,
        )


def _head_branch(head: Mapping[str, object]) -> str:
    """The PR's source branch. Once that branch is gone (deleted after the merge) Forgejo
    reports ``ref`` as ``refs/pull/N/head`` and keeps the branch name only in ``label``."""
    ref = _req_str(head, "ref", "pull request head")
    label = _opt_str(head, "label")
    if ref.startswith("refs/pull/") and label:
        return label
    return ref


def _repo_full_name(raw: object) -> str | None:
    if not isinstance(raw, Mapping):
        return None
    return _opt_str(raw, "full_name")


class Review(_Frozen):
    """A pull request review."""

    id: int
    state: ReviewState
    body: str
    author: str
    commit_id: str | None
    submitted_at: datetime | None
    dismissed: bool = False
    stale: bool = False
    official: bool = False
    html_url: str | None = None

    @classmethod
    def from_api(cls, raw: object) -> Review:
        data = _mapping(raw, "review")
        state = _str(data, "state")
        return cls(
            id=_req_int(data, "id", "review"),
            state=ReviewState(state) if state in ReviewState.__members__ else ReviewState.UNKNOWN,
            body=_str(data, "body"),
            author=_login(data.get("user")),
            commit_id=_opt_str(data, "commit_id"),
            submitted_at=_time(data, "submitted_at"),
            dismissed=_bool(data, "dismissed"),
            stale=_bool(data, "stale"),
            official=_bool(data, "official"),
            html_url=_opt_str(data, "html_url"),
        )


class Commit(_Frozen):
    """A commit as listed for a branch or a pull request."""

    sha: str
    message: str
    author_name: str
    author_email: str
    author_login: str | None
    created: datetime | None
    html_url: str | None

    @property
    def title(self) -> str:
        """The first line of the message."""
        return self.message.split("\n", 1)[0]

    @classmethod
    def from_api(cls, raw: object) -> Commit:
        data = _mapping(raw, "commit")
        inner = data.get("commit")
        detail: Mapping[str, object] = inner if isinstance(inner, Mapping) else {}
        git_author_raw = detail.get("author")
        git_author: Mapping[str, object] = (
            git_author_raw if isinstance(git_author_raw, Mapping) else {}
        )
        git_committer_raw = detail.get("committer")
        git_committer: Mapping[str, object] = (
            git_committer_raw if isinstance(git_committer_raw, Mapping) else {}
        )
        # ``created`` is top-level on current Forgejo; older servers only have the git dates.
        created = (
            _time(data, "created") or _time(git_author, "date") or _time(git_committer, "date")
        )
        return cls(
            sha=_req_str(data, "sha", "commit"),
            message=_str(detail, "message"),
            author_name=_str(git_author, "name"),
            author_email=_str(git_author, "email"),
            author_login=_login(data.get("author")) or None,
            created=created,
            html_url=_opt_str(data, "html_url"),
        )


class ChangedFile(_Frozen):
    """One file changed by a pull request."""

    filename: str
    status: str
    additions: int
    deletions: int
    changes: int = 0
    previous_filename: str | None = None

    @classmethod
    def from_api(cls, raw: object) -> ChangedFile:
        data = _mapping(raw, "changed file")
        return cls(
            filename=_req_str(data, "filename", "changed file"),
            status=_str(data, "status"),
            additions=_int(data, "additions"),
            deletions=_int(data, "deletions"),
            changes=_int(data, "changes"),
            previous_filename=_opt_str(data, "previous_filename"),
        )


def _commit_state(value: str, what: str) -> CommitState:
    try:
        return CommitState(value)
    except ValueError as exc:
        raise MalformedResponse(f"{what}: unknown commit state {value!r}") from exc


class CommitStatus(_Frozen):
    """One CI status reported on a commit."""

    id: int | None
    context: str
    state: CommitState
    description: str
    target_url: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_api(cls, raw: object) -> CommitStatus:
        data = _mapping(raw, "commit status")
        # Forgejo names the field ``status`` in responses (``state`` in requests).
        state = _str(data, "status") or _str(data, "state")
        return cls(
            id=_opt_int(data, "id"),
            context=_str(data, "context"),
            state=_commit_state(state, "commit status"),
            description=_str(data, "description"),
            target_url=_str(data, "target_url"),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
        )


class CombinedStatus(_Frozen):
    """The combined CI state of a commit. ``state`` is ``None`` when no status was reported."""

    state: CommitState | None
    sha: str | None
    statuses: tuple[CommitStatus, ...]
    total_count: int

    @property
    def is_success(self) -> bool:
        return self.state is CommitState.SUCCESS

    def for_context(self, context: str) -> CommitStatus | None:
        """The status reported under ``context``, if any."""
        return next((s for s in self.statuses if s.context == context), None)

    @classmethod
    def from_api(cls, raw: object) -> CombinedStatus:
        data = _mapping(raw, "combined status")
        statuses = tuple(CommitStatus.from_api(s) for s in _objects(data, "statuses"))
        state = _str(data, "state")
        total = _opt_int(data, "total_count")
        return cls(
            # Forgejo answers an empty ``CombinedStatus{}`` for a commit without statuses.
            state=_commit_state(state, "combined status") if state else None,
            sha=_opt_str(data, "sha"),
            statuses=statuses,
            total_count=total if total is not None else len(statuses),
        )


class Branch(_Frozen):
    """A branch and the commit at its tip."""

    name: str
    commit_sha: str
    commit_message: str = ""
    protected: bool = False

    @classmethod
    def from_api(cls, raw: object) -> Branch:
        data = _mapping(raw, "branch")
        commit = _mapping(data.get("commit"), "branch commit")
        return cls(
            name=_req_str(data, "name", "branch"),
            commit_sha=_req_str(commit, "id", "branch commit"),
            commit_message=_str(commit, "message"),
            protected=_bool(data, "protected"),
        )
