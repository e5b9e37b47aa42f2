"""Frozen models of the Forgejo objects agent-fleet reads, and the one place raw JSON becomes them.

The Forgejo gateway (``reconciler.forgejo.gateway``) calls the ``from_api`` constructors on every
response body it receives; controllers, the loop and the CLI only ever see these models, never a
raw dict. Parsing is lenient where real servers differ (a field missing from an older Gitea or
Forgejo, ``null`` where a list was expected, ``login`` spelled ``username`` by legacy servers) and
strict where agent-fleet cannot work without the value (an issue without a number, a label
without a name): those raise ``MalformedResponse``, which the gateway turns into a
``ForgejoError`` naming the operation.

This module imports neither pyforgejo nor httpx on purpose: it is safe to import anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "ApiLimits",
    "Branch",
    "ChangedFile",
    "CombinedStatus",
    "Comment",
    "Commit",
    "CommitState",
    "CommitStatus",
    "Hook",
    "Issue",
    "IssueState",
    "Label",
    "LabelSpec",
    "MalformedResponse",
    "Page",
    "PullRequest",
    "Repo",
    "RepoPermission",
    "Review",
    "ReviewState",
    "User",
    "label_scope",
    "list_body",
    "normalize_color",
    "parse_time",
]


class MalformedResponse(ValueError):
    """A Forgejo response lacks a field agent-fleet needs, or has it in an unusable shape."""


# --- enumerations ----------------------------------------------------------------------------


class IssueState(StrEnum):
    """The state of an issue or pull request as Forgejo reports it."""

    OPEN = "open"
    CLOSED = "closed"


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


# --- field readers -----------------------------------------------------------------------------
# Each reader takes the raw mapping and a key; ``required`` readers raise MalformedResponse.

_GO_ZERO_YEAR = 1  # Go's zero time.Time ("0001-01-01T00:00:00Z") means "never set".


def _mapping(raw: object, what: str) -> Mapping[str, object]:
    if not isinstance(raw, Mapping):
        raise MalformedResponse(f"expected a JSON object for {what}, got {type(raw).__name__}")
    return raw


def _req_int(raw: Mapping[str, object], key: str, what: str) -> int:
    value = raw.get(key)
    # bool is an int subclass; a boolean where an id belongs is a malformed payload.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResponse(f"{what}: field {key!r} must be an integer, got {value!r}")
    return value


def _opt_int(raw: Mapping[str, object], key: str) -> int | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _int(raw: Mapping[str, object], key: str) -> int:
    return _opt_int(raw, key) or 0


def _req_str(raw: Mapping[str, object], key: str, what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedResponse(f"{what}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _str(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    return value if isinstance(value, str) else ""


def _opt_str(raw: Mapping[str, object], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and value else None


def _bool(raw: Mapping[str, object], key: str) -> bool:
    return raw.get(key) is True


def _objects(raw: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    """A list of objects; ``null`` or a missing key is an empty list, null elements are dropped."""
    value = raw.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _strings(raw: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def parse_time(value: object) -> datetime | None:
    """Parse a Forgejo RFC 3339 timestamp into an aware datetime; ``None`` when unset."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedResponse(f"not an RFC 3339 timestamp: {value!r}") from exc
    if parsed.year == _GO_ZERO_YEAR:
        return None
    if parsed.tzinfo is None:
        # Forgejo always sends an offset; a naive value can only come from a proxy or an old
        # server, and Forgejo stores times as UTC unix seconds, so UTC is the honest reading.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _time(raw: Mapping[str, object], key: str) -> datetime | None:
    return parse_time(raw.get(key))


def _req_time(raw: Mapping[str, object], key: str, what: str) -> datetime:
    parsed = _time(raw, key)
    if parsed is None:
        raise MalformedResponse(f"{what}: field {key!r} must be a timestamp, got {raw.get(key)!r}")
    return parsed


def _login(raw: object) -> str:
    """The login of an embedded user object; legacy servers send only ``username``."""
    if not isinstance(raw, Mapping):
        return ""
    return _str(raw, "login") or _str(raw, "username")


# --- labels ------------------------------------------------------------------------------------

_COLOR = re.compile(r"^[0-9a-f]{6}$")


def normalize_color(color: str) -> str:
    """``#E11D21`` / ``e11d21`` → ``e11d21``: the form Forgejo's API answers with."""
    value = color.strip().lstrip("#").lower()
    if not _COLOR.match(value):
        raise ValueError(f"label colour must be six hex digits like 'e11d21', got {color!r}")
    return value


def label_scope(name: str, *, exclusive: bool) -> str | None:
    """Forgejo's scope rule: text before the *last* ``/`` of an exclusive label, if any.

    ``kind/bug`` → ``kind``; ``a/b/c`` → ``a/b``; no scope when the label is not exclusive or the
    last ``/`` is the first or the last character (``models/issues/label.go``).
    """
    if not exclusive:
        return None
    cut = name.rfind("/")
    if cut <= 0 or cut == len(name) - 1:
        return None
    return name[:cut]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelSpec(_Frozen):
    """A label agent-fleet wants to exist in a repository (input of ``ensure_labels``)."""

    name: str
    color: str
    description: str = ""
    exclusive: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("label name must not be blank")
        return value

    @field_validator("color")
    @classmethod
    def _color_is_hex(cls, value: str) -> str:
        return normalize_color(value)


class Label(_Frozen):
    """A repository label."""

    id: int
    name: str
    color: str
    description: str = ""
    exclusive: bool = False
    is_archived: bool = False

    @property
    def scope(self) -> str | None:
        """The exclusive scope this label belongs to (``status`` for ``status/done``), if any."""
        return label_scope(self.name, exclusive=self.exclusive)

    def matches(self, spec: LabelSpec) -> bool:
        """True when colour, description and exclusivity are already what ``spec`` asks for."""
        return (
            self.color.lstrip("#").lower() == spec.color
            and self.description == spec.description
            and self.exclusive == spec.exclusive
        )

    @classmethod
    def from_api(cls, raw: object) -> Label:
        data = _mapping(raw, "label")
        return cls(
            id=_req_int(data, "id", "label"),
            name=_req_str(data, "name", "label"),
            color=_str(data, "color").lstrip("#").lower(),
            description=_str(data, "description"),
            exclusive=_bool(data, "exclusive"),
            is_archived=_bool(data, "is_archived"),
        )


# --- users and repositories --------------------------------------------------------------------


class User(_Frozen):
    """A Forgejo account."""

    id: int | None
    login: str
    full_name: str = ""
    email: str = ""
    is_admin: bool = False

    @classmethod
    def from_api(cls, raw: object) -> User:
        data = _mapping(raw, "user")
        login = _login(data)
        if not login:
            raise MalformedResponse(f"user: neither 'login' nor 'username' in {sorted(data)}")
        return cls(
            id=_opt_int(data, "id"),
            login=login,
            full_name=_str(data, "full_name"),
            email=_str(data, "email"),
            is_admin=_bool(data, "is_admin"),
        )


class Repo(_Frozen):
    """A repository. ``full_name`` is ``owner/name``, the form every gateway call takes."""

    id: int
    owner: str
    name: str
    full_name: str
    default_branch: str
    private: bool = False
    empty: bool = False
    archived: bool = False
    html_url: str = ""
    clone_url: str = ""
    can_admin: bool = False
    can_push: bool = False
    can_pull: bool = False

    @classmethod
    def from_api(cls, raw: object) -> Repo:
        data = _mapping(raw, "repository")
        name = _req_str(data, "name", "repository")
        owner = _login(data.get("owner"))
        full_name = _str(data, "full_name") or (f"{owner}/{name}" if owner else "")
        if not full_name:
            raise MalformedResponse("repository: no 'full_name' and no owner login")
        permissions = data.get("permissions")
        perms: Mapping[str, object] = permissions if isinstance(permissions, Mapping) else {}
        return cls(
            id=_req_int(data, "id", "repository"),
            owner=owner or full_name.split("/", 1)[0],
            name=name,
            full_name=full_name,
            default_branch=_str(data, "default_branch") or "main",
            private=_bool(data, "private"),
            empty=_bool(data, "empty"),
            archived=_bool(data, "archived"),
            html_url=_str(data, "html_url"),
            clone_url=_str(data, "clone_url"),
            can_admin=_bool(perms, "admin"),
            can_push=_bool(perms, "push"),
            can_pull=_bool(perms, "pull"),
        )


class RepoPermission(_Frozen):
    """What one user may do in one repository (``/collaborators/{login}/permission``)."""

    login: str
    permission: str
    role_name: str = ""

    @property
    def can_push(self) -> bool:
        """Write access or more: the bar for trusting an author's text in a prompt."""
        return self.permission in ("write", "admin", "owner")

    @classmethod
    def from_api(cls, raw: object, *, login: str) -> RepoPermission:
        data = _mapping(raw, "permission")
        return cls(
            login=_login(data.get("user")) or login,
            permission=_req_str(data, "permission", "permission"),
            role_name=_str(data, "role_name"),
        )


# --- issues and comments -----------------------------------------------------------------------


class Issue(_Frozen):
    """An issue, or the issue half of a pull request (``is_pull``)."""

    id: int | None
    number: int
    title: str
    body: str
    state: IssueState
    labels: tuple[str, ...]
    author: str
    assignees: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    is_pull: bool
    html_url: str
    repo: str | None = None
    comments: int = 0

    @classmethod
    def from_api(cls, raw: object) -> Issue:
        data = _mapping(raw, "issue")
        what = "issue"
        assignees = tuple(_login(user) for user in _objects(data, "assignees"))
        if not assignees and isinstance(data.get("assignee"), Mapping):
            assignees = (_login(data.get("assignee")),)
        repository = data.get("repository")
        return cls(
            id=_opt_int(data, "id"),
            number=_req_int(data, "number", what),
            title=_str(data, "title"),
            body=_str(data, "body"),
            state=IssueState(_req_str(data, "state", what)),
            labels=tuple(Label.from_api(label).name for label in _objects(data, "labels")),
            author=_login(data.get("user")),
            assignees=tuple(login for login in assignees if login),
            created_at=_req_time(data, "created_at", what),
            updated_at=_req_time(data, "updated_at", what),
            closed_at=_time(data, "closed_at"),
            # Issue lists without ``type=`` include pull requests, marked by this object.
            is_pull=isinstance(data.get("pull_request"), Mapping),
            html_url=_str(data, "html_url"),
            repo=_opt_str(repository, "full_name") if isinstance(repository, Mapping) else None,
            comments=_int(data, "comments"),
        )


class Comment(_Frozen):
    """A comment on an issue or pull request."""

    id: int
    body: str
    author: str
    created_at: datetime | None
    updated_at: datetime | None
    html_url: str | None

    @classmethod
    def from_api(cls, raw: object) -> Comment:
        data = _mapping(raw, "comment")
        return cls(
            id=_req_int(data, "id", "comment"),
            body=_str(data, "body"),
            author=_login(data.get("user")),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
            html_url=_opt_str(data, "html_url"),
        )


# --- pull requests -----------------------------------------------------------------------------


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


class Hook(_Frozen):
    """A repository webhook. Forgejo never returns the secret, so it is not here."""

    id: int
    type: str
    url: str
    content_type: str
    events: tuple[str, ...]
    active: bool
    branch_filter: str = ""

    @classmethod
    def from_api(cls, raw: object) -> Hook:
        data = _mapping(raw, "hook")
        config_raw = data.get("config")
        config: Mapping[str, object] = config_raw if isinstance(config_raw, Mapping) else {}
        return cls(
            id=_req_int(data, "id", "hook"),
            type=_str(data, "type"),
            url=_str(config, "url"),
            content_type=_str(config, "content_type"),
            events=_strings(data, "events"),
            active=_bool(data, "active"),
            branch_filter=_str(data, "branch_filter"),
        )


class ApiLimits(_Frozen):
    """The instance's paging limits (``/settings/api``)."""

    max_response_items: int
    default_paging_num: int
    default_git_trees_per_page: int | None = None
    default_max_blob_size: int | None = None

    @classmethod
    def from_api(cls, raw: object) -> ApiLimits:
        data = _mapping(raw, "api settings")
        return cls(
            max_response_items=_req_int(data, "max_response_items", "api settings"),
            default_paging_num=_req_int(data, "default_paging_num", "api settings"),
            default_git_trees_per_page=_opt_int(data, "default_git_trees_per_page"),
            default_max_blob_size=_opt_int(data, "default_max_blob_size"),
        )


# --- paging ------------------------------------------------------------------------------------

ItemT = TypeVar("ItemT")


class Page(_Frozen, Generic[ItemT]):
    """One page of a list endpoint: its items and where the next page is, if any.

    ``total_count`` is ``X-Total-Count`` (``None`` if the server sent none); ``next_page`` is
    taken from the ``Link: rel="next"`` header, or inferred from the total when no Link came.
    """

    page: int
    limit: int
    items: tuple[ItemT, ...]
    total_count: int | None
    next_page: int | None


def list_body(raw: object, what: str) -> Sequence[object]:
    """The elements of a list body; ``null`` (seen on real servers) counts as an empty page."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MalformedResponse(f"expected a JSON list for {what}, got {type(raw).__name__}")
    # Forgejo's pull list documents ``null`` for entries that failed to load; skip them.
    return [item for item in raw if item is not None]
