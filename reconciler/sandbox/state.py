"""The sandbox forge's data and the operations on it, with Forgejo's rules but no HTTP.

``api`` calls these operations for each REST request and renders the results with ``shapes``;
``ForgejoSandbox`` calls them for the things a person does, and ``githttp`` calls
``sync_pushed`` after a ``git push``. Every change that Forgejo would announce by webhook is
passed to ``on_event`` as a ``ForgeEvent`` while the lock is held, so the payload is built from
the state exactly as it was at that moment.

Each repository's history lives in a bare git repository (``gitstore``); ``Repo.git`` is the
in-memory index of it that answers are rendered from. Every branch move, whoever made it, goes
through ``_apply_branch_updates``, which indexes the new commits and announces the push.

Refusals are raised as ``ForgeRefusal`` subclasses carrying the HTTP status Forgejo answers
with. They are the fake forge's answers to its clients, turned into JSON error bodies by ``api``;
they never reach agent-fleet's own code as exceptions, which is why they live here and not in
``reconciler.errors``.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

from reconciler.sandbox.commits import (
    ZERO_SHA,
    Commit,
    CommitGraph,
    FileChange,
    Signature,
    diff_trees,
    merges_without_looking,
)
from reconciler.sandbox.gitstore import (
    BareRepository,
    GitStorage,
    Identity,
    MergeConflict,
    is_valid_branch_name,
)

if TYPE_CHECKING:
    from reconciler.sandbox.wiki import Wiki

Clock = Callable[[], datetime]


# --- refusals -------------------------------------------------------------------------------


class ForgeRefusal(Exception):
    """A request Forgejo refuses; ``status`` is the HTTP status it answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Unauthorized(ForgeRefusal):
    """401: no token, or a token the forge does not know."""

    status = 401


class Forbidden(ForgeRefusal):
    """403: the user may see the thing but not change it."""

    status = 403


class NotFound(ForgeRefusal):
    """404: the thing does not exist, or the user may not see it."""

    status = 404


class NotAllowed(ForgeRefusal):
    """405: the operation does not apply in the thing's current state (e.g. merge twice)."""

    status = 405


class Conflict(ForgeRefusal):
    """409: the request conflicts with what exists (same name, out-of-date head, conflict)."""

    status = 409


class Invalid(ForgeRefusal):
    """422: the request body or parameters are invalid."""

    status = 422


class PreconditionFailed(ForgeRefusal):
    """412: a precondition does not hold (closing an issue that has open dependencies)."""

    status = 412


class ServerFault(ForgeRefusal):
    """500: what Forgejo answers when an error of its own is not mapped (bad assignees)."""

    status = 500


# --- closing keywords -----------------------------------------------------------------------

# Forgejo's closing keywords (modules/references): "Closes #12", "fixes: #3", "Resolved
# org/other#7", after the start of a line, a space or an opening bracket.
_CLOSING_REFERENCE = re.compile(
    r"(?i)(?:^|(?<=[\s(\[]))(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?\s+"
    r"(?:([\w.-]+/[\w.-]+))?#(\d+)\b"
)


def closing_references(text: str) -> list[tuple[str | None, int]]:
    """The issues ``text`` closes, as (``owner/repo`` or None for this repository, number)."""
    return [(match[1], int(match[2])) for match in _CLOSING_REFERENCE.finditer(text)]


# --- the data -------------------------------------------------------------------------------


class Access(IntEnum):
    """A user's access to a repository, ordered like Forgejo's access modes."""

    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3
    OWNER = 4

    @property
    def word(self) -> str:
        """The name Forgejo's API uses for this mode ("none", "read", ..., "owner")."""
        return self.name.lower()


class StatusState(StrEnum):
    """Commit status states, in Forgejo's priority order (worst first)."""

    ERROR = "error"
    FAILURE = "failure"
    WARNING = "warning"
    PENDING = "pending"
    SUCCESS = "success"


STATUS_PRIORITY = {state: rank for rank, state in enumerate(StatusState)}


class ReviewState(StrEnum):
    """The review kinds a client may submit."""

    APPROVED = "APPROVED"
    REQUEST_CHANGES = "REQUEST_CHANGES"
    COMMENT = "COMMENT"


class MergeStyle(StrEnum):
    """Merge styles Forgejo offers; the sandbox performs merge, squash and fast-forward-only."""

    MERGE = "merge"
    REBASE = "rebase"
    REBASE_MERGE = "rebase-merge"
    SQUASH = "squash"
    FAST_FORWARD_ONLY = "fast-forward-only"
    MANUALLY_MERGED = "manually-merged"


@dataclass
class User:
    """A forge account."""

    id: int
    login: str
    is_admin: bool
    created: datetime

    @property
    def email(self) -> str:
        """The noreply address Forgejo shows for users who keep their email private."""
        return f"{self.login}@noreply.localhost"

    def identity(self, when: datetime) -> Identity:
        """This user as the author or committer of a commit made at ``when``."""
        return Identity(name=self.login, email=self.email, when=when)


@dataclass
class Label:
    """A repository label; ``exclusive`` labels with a scope keep one label per scope."""

    id: int
    name: str
    color: str
    description: str
    exclusive: bool
    is_archived: bool

    @property
    def scope(self) -> str | None:
        """Text before the last ``/`` of an exclusive label, as Forgejo's ``ExclusiveScope``."""
        if not self.exclusive:
            return None
        cut = self.name.rfind("/")
        if cut <= 0 or cut == len(self.name) - 1:
            return None
        return self.name[:cut]


@dataclass
class Comment:
    """A comment on an issue or pull request."""

    id: int
    issue: Issue
    user: User
    body: str
    created_at: datetime
    updated_at: datetime


@dataclass
class LabelChange:
    """One label added to or removed from an issue, and who did it: a ``label`` entry of the
    issue's timeline (Forgejo stores it as a comment of type label, content "1" when added)."""

    id: int
    user: User
    label: Label
    added: bool
    created_at: datetime


@dataclass
class Review:
    """A submitted pull request review."""

    id: int
    user: User
    state: ReviewState
    body: str
    commit_id: str
    submitted_at: datetime


@dataclass
class PullRequest:
    """The pull-request half of an issue: branches, merge state and reviews."""

    id: int
    head: str
    base: str
    merge_base: str
    merged: bool = False
    merged_at: datetime | None = None
    merged_by: User | None = None
    merge_commit_sha: str | None = None
    # Once merged (or closed), the head branch may move or vanish; keep what the PR held.
    frozen_head_sha: str | None = None
    reviews: list[Review] = field(default_factory=list)


@dataclass
class Issue:
    """An issue, or a pull request when ``pull`` is set (they share one number sequence)."""

    id: int
    repo: Repo
    number: int
    user: User
    title: str
    body: str
    created_at: datetime
    updated_at: datetime
    state: str = "open"
    closed_at: datetime | None = None
    labels: list[Label] = field(default_factory=list)
    assignees: list[User] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    pull: PullRequest | None = None
    label_changes: list[LabelChange] = field(default_factory=list)
    depends_on: list[Issue] = field(default_factory=list)
    """The issues this one depends on (Forgejo's "blocked by"), in the order they were added."""

    @property
    def is_pull(self) -> bool:
        """Whether this issue is a pull request."""
        return self.pull is not None


@dataclass
class CommitStatus:
    """One status report on a commit from one context (CI job)."""

    id: int
    sha: str
    state: StatusState
    context: str
    description: str
    target_url: str
    creator: User
    created_at: datetime
    updated_at: datetime


@dataclass
class Hook:
    """A repository webhook of type forgejo or gitea."""

    id: int
    type: str
    url: str
    content_type: str
    secret: str
    events: list[str]
    active: bool
    branch_filter: str
    authorization_header: str
    created_at: datetime
    updated_at: datetime


@dataclass
class Repo:
    """A repository with its labels, issues, hooks, commits and statuses.

    ``bare`` is the git repository on disk; ``git`` indexes what its branches hold.
    """

    id: int
    owner: User
    name: str
    description: str
    private: bool
    default_branch: str
    created_at: datetime
    updated_at: datetime
    bare: BareRepository
    git: CommitGraph = field(default_factory=CommitGraph)
    labels: dict[int, Label] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    hooks: dict[int, Hook] = field(default_factory=dict)
    collaborators: dict[str, Access] = field(default_factory=dict)
    statuses: list[CommitStatus] = field(default_factory=list)
    wiki: Wiki | None = None
    """The repository's wiki (``wiki.py``), None until its first page is written."""

    @property
    def full_name(self) -> str:
        """``owner/name``."""
        return f"{self.owner.login}/{self.name}"


@dataclass(frozen=True)
class ForgeEvent:
    """A change Forgejo announces by webhook.

    ``event_type`` is Forgejo's fine-grained hook event (``issue_label``, ``pull_request_sync``,
    ``pull_request_review_approved``...), ``action`` the payload's ``action``.
    """

    repo: Repo
    event_type: str
    action: str
    sender: User
    issue: Issue | None = None
    comment: Comment | None = None
    changes: Mapping[str, str] | None = None  # field name -> previous value
    review: Review | None = None
    ref: str = ""
    before: str = ""
    after: str = ""
    commits: tuple[Commit, ...] = ()
    page: str = ""  # a wiki event's page (its web path)
    message: str = ""  # a wiki event's commit message


@dataclass(frozen=True)
class BranchUpdate:
    """A branch moving from ``before`` to ``after`` (None: absent before, or deleted)."""

    name: str
    before: str | None
    after: str | None


# --- helpers --------------------------------------------------------------------------------


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_COLOR = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")
HOOK_TYPES = ("forgejo", "gitea", "gogs")
ALL_HOOK_TYPES = (
    "forgejo",
    "dingtalk",
    "discord",
    "gitea",
    "gogs",
    "msteams",
    "slack",
    "telegram",
    "feishu",
    "wechatwork",
    "packagist",
)


def normalize_color(color: str) -> str:
    """Forgejo stores label colours as six hex digits, answered without the ``#``."""
    match = _COLOR.match(color.strip())
    if not match:
        raise Invalid(f"invalid label color {color!r}: want #rrggbb")
    digits = match.group(1).lower()
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return digits


def keep_last_per_scope(labels: Sequence[Label]) -> list[Label]:
    """Drop duplicates, and of several exclusive labels of one scope keep only the last."""
    last_of_scope = {label.scope: label.id for label in labels if label.scope is not None}
    kept: list[Label] = []
    for label in labels:
        if label.scope is not None and last_of_scope[label.scope] != label.id:
            continue
        if label not in kept:
            kept.append(label)
    return kept


# --- the forge ------------------------------------------------------------------------------


class ForgeState:
    """All users, tokens and repositories, behind one lock.

    Callers hold ``lock`` around an operation and the rendering of its result (``api`` does it
    per request), so a response never shows a half-applied change.
    """

    def __init__(
        self, *, clock: Clock, on_event: Callable[[ForgeEvent], None], storage: GitStorage
    ) -> None:
        self.lock = threading.RLock()
        self._clock = clock
        self._on_event = on_event
        self.storage = storage
        self.users: dict[str, User] = {}
        self.tokens: dict[str, User] = {}
        self.repos: dict[str, Repo] = {}
        self._ids: dict[str, int] = {}

    # -- time and ids --

    def now(self) -> datetime:
        """The clock's time at Forgejo's precision (seconds), always with a zone."""
        moment = self._clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.replace(microsecond=0)

    def _next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def _emit(self, event: ForgeEvent) -> None:
        self._on_event(event)

    def announce(self, event: ForgeEvent) -> None:
        """Announce a change made by an operation kept outside this module (the wiki's)."""
        self._emit(event)

    # -- users and tokens --

    def create_user(self, login: str, *, admin: bool = False) -> tuple[User, str]:
        """A new user and a fresh API token for it."""
        if not _NAME.match(login):
            raise Invalid(f"invalid user name {login!r}")
        if login.lower() in (name.lower() for name in self.users):
            raise Invalid(f"user already exists [name: {login}]")
        user = User(id=self._next_id("user"), login=login, is_admin=admin, created=self.now())
        self.users[login] = user
        return user, self.issue_token(user)

    def issue_token(self, user: User) -> str:
        """A new API token for ``user`` (40 hex digits, like Forgejo's)."""
        token = secrets.token_hex(20)
        self.tokens[token] = user
        return token

    def user_by_token(self, token: str) -> User:
        """The user a token belongs to."""
        user = self.tokens.get(token)
        if user is None:
            raise Unauthorized("user does not exist")
        return user

    def user_named(self, login: str) -> User:
        """The user with this login (case-insensitive, as Forgejo matches names)."""
        for name, user in self.users.items():
            if name.lower() == login.lower():
                return user
        raise NotFound(f"user does not exist [name: {login}]")

    # -- repositories and access --

    def create_repo(
        self,
        owner: User,
        name: str,
        *,
        description: str = "",
        private: bool = False,
        default_branch: str = "",
        auto_init: bool = False,
    ) -> Repo:
        """A new repository; ``auto_init`` makes an initial commit on the default branch."""
        if not name or not _NAME.match(name) or name in (".", ".."):
            raise Invalid(f"invalid repository name {name!r}")
        full_name = f"{owner.login}/{name}"
        if any(existing.lower() == full_name.lower() for existing in self.repos):
            raise Conflict("The repository with the same name already exists.")
        default_branch = default_branch or "main"
        if not is_valid_branch_name(default_branch):
            raise Invalid(f"invalid branch name {default_branch!r}")
        now = self.now()
        repo = Repo(
            id=self._next_id("repo"),
            owner=owner,
            name=name,
            description=description,
            private=private,
            default_branch=default_branch,
            created_at=now,
            updated_at=now,
            bare=self.storage.create(full_name, default_branch=default_branch),
        )
        self.repos[full_name] = repo
        if auto_init:
            sha = repo.bare.commit_files(
                None,
                {"README.md": f"# {name}\n\n{description}\n"},
                message="Initial commit\n",
                author=owner.identity(now),
            )
            repo.bare.set_branch(default_branch, sha)
            self._apply_branch_updates(repo, owner, [BranchUpdate(default_branch, None, sha)])
        return repo

    def access(self, repo: Repo, user: User) -> Access:
        """What ``user`` may do in ``repo``: owner, site admin, collaborator, or the public."""
        if user.id == repo.owner.id:
            return Access.OWNER
        if user.is_admin:
            return Access.ADMIN
        granted = repo.collaborators.get(user.login, Access.NONE)
        if granted == Access.NONE and not repo.private:
            return Access.READ
        return granted

    def repo(self, full_name: str, user: User) -> Repo:
        """The repository if ``user`` may see it (404 otherwise, as Forgejo hides private ones)."""
        for name, repo in self.repos.items():
            if name.lower() == full_name.lower() and self.access(repo, user) >= Access.READ:
                return repo
        raise NotFound(f"repository does not exist [name: {full_name}]")

    def require(self, repo: Repo, user: User, needed: Access) -> None:
        """Refuse with 403 unless ``user`` has at least ``needed`` access."""
        if self.access(repo, user) < needed:
            raise Forbidden(f"user should have {needed.word} permission on the repository")

    def add_collaborator(self, repo: Repo, actor: User, login: str, *, permission: str) -> None:
        """Grant ``login`` read, write or admin access."""
        self.require(repo, actor, Access.ADMIN)
        try:
            access = {"read": Access.READ, "write": Access.WRITE, "admin": Access.ADMIN}[permission]
        except KeyError:
            raise Invalid(f"invalid permission {permission!r}: want read, write or admin") from None
        user = self.user_named(login)
        if user.id == repo.owner.id:
            raise Invalid("the owner of a repository cannot be added as a collaborator")
        repo.collaborators[user.login] = access

    # -- labels --

    def create_label(
        self,
        repo: Repo,
        actor: User,
        *,
        name: str,
        color: str,
        description: str = "",
        exclusive: bool = False,
        is_archived: bool = False,
    ) -> Label:
        """A new repository label."""
        self.require(repo, actor, Access.WRITE)
        if not name.strip():
            raise Invalid("label name must not be empty")
        label = Label(
            id=self._next_id("label"),
            name=name,
            color=normalize_color(color),
            description=description,
            exclusive=exclusive,
            is_archived=is_archived,
        )
        repo.labels[label.id] = label
        return label

    def label(self, repo: Repo, label_id: int) -> Label:
        """A label of this repository by id."""
        try:
            return repo.labels[label_id]
        except KeyError:
            raise NotFound(f"label does not exist [id: {label_id}]") from None

    def edit_label(self, repo: Repo, actor: User, label_id: int, **fields: object) -> Label:
        """Change a label's name, colour, description, exclusivity or archived flag."""
        self.require(repo, actor, Access.WRITE)
        label = self.label(repo, label_id)
        if isinstance(fields.get("name"), str):
            if not str(fields["name"]).strip():
                raise Invalid("label name must not be empty")
            label.name = str(fields["name"])
        if isinstance(fields.get("color"), str):
            label.color = normalize_color(str(fields["color"]))
        if isinstance(fields.get("description"), str):
            label.description = str(fields["description"])
        if isinstance(fields.get("exclusive"), bool):
            label.exclusive = bool(fields["exclusive"])
        if isinstance(fields.get("is_archived"), bool):
            label.is_archived = bool(fields["is_archived"])
        return label

    def delete_label(self, repo: Repo, actor: User, label_id: int) -> None:
        """Delete a label and take it off every issue."""
        self.require(repo, actor, Access.WRITE)
        label = self.label(repo, label_id)
        del repo.labels[label_id]
        for issue in repo.issues.values():
            if label in issue.labels:
                issue.labels.remove(label)

    def labels_named(self, repo: Repo, names: Iterable[str]) -> list[Label]:
        """The repository's labels with these names; unknown names are dropped."""
        wanted = list(names)
        return [label for name in wanted for label in repo.labels.values() if label.name == name]

    def resolve_labels(self, repo: Repo, identifiers: Iterable[object]) -> list[Label]:
        """Labels named by id or name, in request order; unknown ones dropped like Forgejo."""
        found: list[Label] = []
        for identifier in identifiers:
            if isinstance(identifier, bool):
                raise Invalid(f"invalid label identifier {identifier!r}")
            if isinstance(identifier, int):
                if identifier in repo.labels:
                    found.append(repo.labels[identifier])
            elif isinstance(identifier, str):
                found.extend(self.labels_named(repo, [identifier]))
            else:
                raise Invalid(f"invalid label identifier {identifier!r}: want an id or a name")
        return found

    # -- issues --

    def issue(self, repo: Repo, number: int) -> Issue:
        """An issue or pull request by its number."""
        try:
            return repo.issues[number]
        except KeyError:
            raise NotFound(f"issue does not exist [repo_id: {repo.id}, index: {number}]") from None

    def _touch(self, issue: Issue) -> None:
        issue.updated_at = self.now()

    def list_issues(
        self,
        repo: Repo,
        *,
        state: str = "open",
        kind: str = "",
        label_names: Sequence[str] = (),
        since: datetime | None = None,
        before: datetime | None = None,
    ) -> list[Issue]:
        """Issues (and pull requests) matching Forgejo's list filters, newest first."""
        if state not in ("open", "closed", "all"):
            raise Invalid(f"invalid state {state!r}: want open, closed or all")
        if kind not in ("", "issues", "pulls"):
            raise Invalid(f"invalid type {kind!r}: want issues or pulls")
        # Unknown names are dropped; if none is known the label filter disappears altogether.
        required = {label.id for label in self.labels_named(repo, label_names)}
        matches = []
        for issue in repo.issues.values():
            if state != "all" and issue.state != state:
                continue
            if kind == "issues" and issue.is_pull or kind == "pulls" and not issue.is_pull:
                continue
            if not required <= {label.id for label in issue.labels}:
                continue
            if since is not None and issue.updated_at < since:
                continue
            if before is not None and issue.updated_at > before:
                continue
            matches.append(issue)
        return sorted(matches, key=lambda i: (i.created_at, i.id), reverse=True)

    def create_issue(
        self,
        repo: Repo,
        actor: User,
        *,
        title: str,
        body: str = "",
        label_ids: Sequence[int] = (),
        assignees: Sequence[str] = (),
        closed: bool = False,
    ) -> Issue:
        """A new issue; labels and assignees are set only for users with write access."""
        if not title.strip():
            raise Invalid("title must not be empty")
        issue = self._new_issue(repo, actor, title=title, body=body)
        if self.access(repo, actor) >= Access.WRITE:
            labels = keep_last_per_scope(self.resolve_labels(repo, label_ids))
            self._set_labels(actor, issue, labels)
            issue.assignees = [self.user_named(login) for login in dict.fromkeys(assignees)]
        repo.issues[issue.number] = issue
        self._emit(ForgeEvent(repo, "issues", "opened", actor, issue=issue))
        if closed:
            self.set_issue_state(repo, actor, issue.number, "closed")
        return issue

    def _new_issue(self, repo: Repo, actor: User, *, title: str, body: str) -> Issue:
        now = self.now()
        return Issue(
            id=self._next_id("issue"),
            repo=repo,
            number=max(repo.issues, default=0) + 1,
            user=actor,
            title=title,
            body=body,
            created_at=now,
            updated_at=now,
        )

    def _may_edit(self, repo: Repo, actor: User, issue: Issue) -> None:
        if issue.user.id != actor.id:
            self.require(repo, actor, Access.WRITE)

    def edit_issue(
        self,
        repo: Repo,
        actor: User,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        assignees: Sequence[str] | None = None,
    ) -> Issue:
        """Edit title, body, state and assignees, announcing each change like Forgejo."""
        issue = self.issue(repo, number)
        self._may_edit(repo, actor, issue)
        if state is not None and state not in ("open", "closed"):
            raise Invalid(f"invalid state {state!r}: want open or closed")
        if title is not None and not title.strip():
            raise Invalid("title must not be empty")
        event_type = "pull_request" if issue.is_pull else "issues"
        if title is not None and title != issue.title:
            old, issue.title = issue.title, title
            self._touch(issue)
            self._emit(
                ForgeEvent(repo, event_type, "edited", actor, issue=issue, changes={"title": old})
            )
        if body is not None and body != issue.body:
            old, issue.body = issue.body, body
            self._touch(issue)
            self._emit(
                ForgeEvent(repo, event_type, "edited", actor, issue=issue, changes={"body": old})
            )
        if assignees is not None:
            self.require(repo, actor, Access.WRITE)
            self._set_assignees(repo, actor, issue, [self._assignable(repo, a) for a in assignees])
        if state is not None:
            self.set_issue_state(repo, actor, number, state)
        return issue

    def _assignable(self, repo: Repo, login: str) -> User:
        """The user ``login`` if an issue of ``repo`` may be assigned to them. Forgejo's issue
        edit answers 500 for a login that does not exist or lacks write access (its
        ``UpdateAssignees`` error is not mapped to a 4xx), and changes nothing."""
        try:
            user = self.user_named(login)
        except NotFound as exc:
            raise ServerFault(f"UpdateAssignees: {exc.message}") from None
        if self.access(repo, user) < Access.WRITE:
            raise ServerFault(
                f"UpdateAssignees: user {user.login} does not have access to the repository"
            )
        return user

    def _set_assignees(self, repo: Repo, actor: User, issue: Issue, wanted: list[User]) -> None:
        event_type = "pull_request_assign" if issue.is_pull else "issue_assign"
        for user in list(issue.assignees):
            if user not in wanted:
                issue.assignees.remove(user)
                self._touch(issue)
                self._emit(ForgeEvent(repo, event_type, "unassigned", actor, issue=issue))
        for user in wanted:
            if user not in issue.assignees:
                issue.assignees.append(user)
                self._touch(issue)
                self._emit(ForgeEvent(repo, event_type, "assigned", actor, issue=issue))

    def set_issue_state(self, repo: Repo, actor: User, number: int, state: str) -> Issue:
        """Close or reopen; closing sets ``closed_at``. A merged pull request stays closed."""
        issue = self.issue(repo, number)
        self._may_edit(repo, actor, issue)
        if state == issue.state:
            return issue
        if issue.pull is not None and issue.pull.merged:
            raise Invalid("cannot reopen a merged pull request")
        if issue.pull is not None and state == "open" and repo.git.resolve(issue.pull.head) is None:
            raise Invalid(f"cannot reopen: head branch {issue.pull.head!r} does not exist")
        if state == "closed" and self.has_open_dependencies(issue):
            kind = "pull request" if issue.is_pull else "issue"
            raise PreconditionFailed(
                f"cannot close this {kind} because it still has open dependencies"
            )
        return self._change_state(repo, actor, issue, state)

    @staticmethod
    def has_open_dependencies(issue: Issue) -> bool:
        """Forgejo refuses to close an issue while an issue it depends on is open."""
        return any(blocker.state == "open" for blocker in issue.depends_on)

    def _change_state(self, repo: Repo, actor: User, issue: Issue, state: str) -> Issue:
        issue.state = state
        now = self.now()
        issue.closed_at = now if state == "closed" else None
        issue.updated_at = now
        if issue.pull is not None:
            issue.pull.frozen_head_sha = (
                repo.git.resolve(issue.pull.head) if state == "closed" else None
            )
        event_type = "pull_request" if issue.is_pull else "issues"
        action = "closed" if state == "closed" else "reopened"
        self._emit(ForgeEvent(repo, event_type, action, actor, issue=issue))
        return issue

    # -- issue labels --

    def _set_labels(self, actor: User, issue: Issue, labels: list[Label]) -> None:
        """Give ``issue`` these labels, recording each one added or removed on its timeline."""
        now = self.now()
        for label in issue.labels:
            if label not in labels:
                change = LabelChange(self._next_id("comment"), actor, label, False, now)
                issue.label_changes.append(change)
        for label in labels:
            if label not in issue.labels:
                change = LabelChange(self._next_id("comment"), actor, label, True, now)
                issue.label_changes.append(change)
        issue.labels = labels

    def _label_event(self, repo: Repo, actor: User, issue: Issue) -> None:
        event_type = "pull_request_label" if issue.is_pull else "issue_label"
        action = "label_updated" if issue.labels else "label_cleared"
        self._emit(ForgeEvent(repo, event_type, action, actor, issue=issue))

    def add_labels(
        self, repo: Repo, actor: User, number: int, identifiers: Sequence[object]
    ) -> Issue:
        """Add labels; an exclusive label replaces the issue's other labels of its scope."""
        issue = self.issue(repo, number)
        self.require(repo, actor, Access.WRITE)
        adding = keep_last_per_scope(self.resolve_labels(repo, identifiers))
        scopes = {label.scope for label in adding if label.scope is not None}
        kept = [label for label in issue.labels if label.scope not in scopes or label in adding]
        self._set_labels(actor, issue, kept + [label for label in adding if label not in kept])
        self._touch(issue)
        self._label_event(repo, actor, issue)
        return issue

    def replace_labels(
        self, repo: Repo, actor: User, number: int, identifiers: Sequence[object]
    ) -> Issue:
        """Replace the issue's labels (several of one exclusive scope: the last one wins)."""
        issue = self.issue(repo, number)
        self.require(repo, actor, Access.WRITE)
        self._set_labels(actor, issue, keep_last_per_scope(self.resolve_labels(repo, identifiers)))
        self._touch(issue)
        self._label_event(repo, actor, issue)
        return issue

    def remove_label(self, repo: Repo, actor: User, number: int, identifier: str) -> Issue:
        """Remove one label named by id or name; an unknown label is a 422 like Forgejo's."""
        issue = self.issue(repo, number)
        self.require(repo, actor, Access.WRITE)
        found = self.resolve_labels(repo, [int(identifier) if identifier.isdigit() else identifier])
        if not found:
            raise Invalid(f"label does not exist [id: {identifier}]")
        if found[0] in issue.labels:
            self._set_labels(actor, issue, [x for x in issue.labels if x != found[0]])
            self._touch(issue)
        # Forgejo announces the removal even when the issue did not carry the label.
        self._label_event(repo, actor, issue)
        return issue

    def clear_labels(self, repo: Repo, actor: User, number: int) -> Issue:
        """Remove every label."""
        issue = self.issue(repo, number)
        self.require(repo, actor, Access.WRITE)
        self._set_labels(actor, issue, [])
        self._touch(issue)
        self._label_event(repo, actor, issue)
        return issue

    # -- comments --

    def list_comments(
        self,
        repo: Repo,
        number: int,
        *,
        since: datetime | None = None,
        before: datetime | None = None,
    ) -> list[Comment]:
        """An issue's comments, oldest first, filtered on ``updated_at`` like Forgejo."""
        issue = self.issue(repo, number)
        return [
            comment
            for comment in issue.comments
            if (since is None or comment.updated_at >= since)
            and (before is None or comment.updated_at <= before)
        ]

    def create_comment(self, repo: Repo, actor: User, number: int, *, body: str) -> Comment:
        """A new comment; bumps the issue's ``updated_at``."""
        issue = self.issue(repo, number)
        if not body.strip():
            raise Invalid("comment body must not be empty")
        now = self.now()
        comment = Comment(
            id=self._next_id("comment"),
            issue=issue,
            user=actor,
            body=body,
            created_at=now,
            updated_at=now,
        )
        issue.comments.append(comment)
        issue.updated_at = now
        self._comment_event(repo, actor, comment, "created")
        return comment

    def _comment_event(
        self,
        repo: Repo,
        actor: User,
        comment: Comment,
        action: str,
        *,
        changes: Mapping[str, str] | None = None,
    ) -> None:
        event_type = "pull_request_comment" if comment.issue.is_pull else "issue_comment"
        self._emit(
            ForgeEvent(
                repo,
                event_type,
                action,
                actor,
                issue=comment.issue,
                comment=comment,
                changes=changes,
            )
        )

    def comment(self, repo: Repo, comment_id: int) -> Comment:
        """A comment of this repository by id."""
        for issue in repo.issues.values():
            for comment in issue.comments:
                if comment.id == comment_id:
                    return comment
        raise NotFound(f"comment does not exist [id: {comment_id}]")

    def _may_change_comment(self, repo: Repo, actor: User, comment: Comment) -> None:
        if comment.user.id != actor.id and self.access(repo, actor) < Access.WRITE:
            raise Forbidden("only the poster or a repository writer may change a comment")

    def edit_comment(self, repo: Repo, actor: User, comment_id: int, *, body: str) -> Comment:
        """Change a comment's body; bumps the comment's and the issue's ``updated_at``."""
        comment = self.comment(repo, comment_id)
        self._may_change_comment(repo, actor, comment)
        if body == comment.body:
            return comment
        old, comment.body = comment.body, body
        now = self.now()
        comment.updated_at = now
        comment.issue.updated_at = now
        self._comment_event(repo, actor, comment, "edited", changes={"body": old})
        return comment

    def delete_comment(self, repo: Repo, actor: User, comment_id: int) -> None:
        """Delete a comment."""
        comment = self.comment(repo, comment_id)
        self._may_change_comment(repo, actor, comment)
        comment.issue.comments.remove(comment)
        self._touch(comment.issue)
        self._comment_event(repo, actor, comment, "deleted")

    # -- branches, commits and pushes --

    def branch_head(self, repo: Repo, branch: str) -> Commit:
        """The commit a branch points at."""
        sha = repo.git.branches.get(branch)
        if sha is None:
            raise NotFound(f"branch does not exist [name: {branch}]")
        return repo.git.commits[sha]

    def commit_at(self, repo: Repo, ref: str) -> Commit:
        """The commit a branch name or sha names."""
        sha = repo.git.resolve(ref)
        if sha is None:
            raise NotFound(f"object does not exist [id: {ref}, rel_path: ]")
        return repo.git.commits[sha]

    def push(
        self,
        repo: Repo,
        actor: User,
        branch: str,
        *,
        files: Mapping[str, str | None],
        message: str,
        base: str | None = None,
    ) -> Commit:
        """A new commit on ``branch`` (created from ``base`` or the default branch).

        ``files`` maps paths to new contents; ``None`` deletes a path. The commit is written to
        the bare repository like one a ``git push`` brings, and announced the same way:
        ``push``, and ``pull_request`` ``synchronized`` for every open pull request whose head
        is ``branch``.
        """
        self.require(repo, actor, Access.WRITE)
        self._check_branch_name(repo, branch)
        before = repo.git.branches.get(branch)
        parent = before
        if parent is None:
            start = base or repo.default_branch
            parent = repo.git.branches.get(start)
            if parent is None and repo.git.branches:
                raise NotFound(f"branch does not exist [name: {start}]")
        try:
            sha = repo.bare.commit_files(
                parent,
                files,
                message=message if message.endswith("\n") else message + "\n",
                author=actor.identity(self.now()),
            )
        except ValueError as bad:
            raise Invalid(str(bad)) from None
        repo.bare.set_branch(branch, sha)
        self._apply_branch_updates(repo, actor, [BranchUpdate(branch, before, sha)])
        return repo.git.commits[sha]

    def create_file(
        self,
        repo: Repo,
        actor: User,
        path: str,
        content: str,
        *,
        branch: str,
        new_branch: str,
        message: str,
        author: Identity,
        committer: Identity,
        force_new_branch: bool = False,
    ) -> tuple[str, Commit]:
        """Forgejo's "create a file" (``ChangeRepoFiles`` with one ``create``): a commit adding
        ``path`` on top of ``branch`` (the default branch when empty), moved onto ``new_branch``
        when given. Returns the branch written and the commit.

        Refused like Forgejo: 404 when ``branch`` does not exist, 422 when ``new_branch``
        exists (unless ``force_new_branch``) or ``path`` already exists on the base. The commit
        is announced like a push to that branch.
        """
        self.require(repo, actor, Access.WRITE)
        base = branch or repo.default_branch
        target = new_branch or base
        for name in dict.fromkeys((base, target)):
            if not is_valid_branch_name(name):
                raise Invalid(f"invalid branch name {name!r}")
        parent = repo.git.branches.get(base)
        if parent is None and repo.git.branches:
            raise NotFound(f"branch does not exist [name: {base}]")
        before = repo.git.branches.get(target)
        if target != base:
            if before is not None and not force_new_branch:
                raise Invalid(f"branch already exists [name: {target}]")
            self._check_branch_name(repo, target)
        tree = repo.git.commits[parent].tree if parent else {}
        if path in tree:
            raise Invalid(f"repository file already exists [path: {path}]")
        if any(existing.startswith(path + "/") for existing in tree):
            raise Invalid(f"a directory exists where you’re trying to create a file [path: {path}]")
        for existing in tree:
            if path.startswith(existing + "/"):
                raise Invalid(
                    f"a file exists where you’re trying to create a subdirectory [path: {existing}]"
                )
        try:
            sha = repo.bare.commit_files(
                parent,
                {path: content},
                message=message if message.endswith("\n") else message + "\n",
                author=author,
                committer=committer,
            )
        except ValueError as bad:
            raise Invalid(str(bad)) from None
        repo.bare.set_branch(target, sha)
        was_empty = not repo.git.branches
        self._apply_branch_updates(repo, actor, [BranchUpdate(target, before, sha)])
        if was_empty and repo.default_branch not in repo.git.branches:
            repo.default_branch = target
            repo.bare.set_default_branch(target)
        return target, repo.git.commits[sha]

    def _check_branch_name(self, repo: Repo, branch: str) -> None:
        if not is_valid_branch_name(branch):
            raise Invalid(f"invalid branch name {branch!r}")
        for existing in repo.git.branches:
            if existing != branch and (
                existing.startswith(branch + "/") or branch.startswith(existing + "/")
            ):
                # A ref cannot be both a file and a directory, as git refuses it.
                raise Invalid(f"branch {branch!r} conflicts with the branch {existing!r}")

    def sync_pushed(self, repo: Repo, actor: User) -> None:
        """Follow the bare repository after ``actor`` pushed to it: index and announce.

        Each branch that moved since the last sync is announced like a helper's push; a
        deleted branch closes the open pull requests it was the head of, as Forgejo does.
        """
        current = repo.bare.branches()
        known = repo.git.branches
        updates = [
            BranchUpdate(name, known.get(name), current.get(name))
            for name in sorted(set(current) | set(known))
            if known.get(name) != current.get(name)
        ]
        was_empty = not known
        self._apply_branch_updates(repo, actor, updates)
        if was_empty and repo.git.branches and repo.default_branch not in repo.git.branches:
            # Forgejo makes the first branch pushed to an empty repository its default.
            repo.default_branch = next(u.name for u in updates if u.after is not None)
            repo.bare.set_default_branch(repo.default_branch)

    def _apply_branch_updates(
        self, repo: Repo, actor: User, updates: Sequence[BranchUpdate]
    ) -> None:
        """Index the commits the updated branches bring, move them, announce the pushes."""
        try:
            for update in updates:
                if update.after is None:
                    self._delete_branch(repo, actor, update.name)
                    continue
                self._index_commits(repo, update.after)
                # A new branch announces what no other branch had, i.e. the work made on it.
                others = [sha for name, sha in repo.git.branches.items() if name != update.name]
                pushed = repo.git.log(
                    update.after,
                    exclude=update.before,
                    exclude_all=() if update.before else others,
                )
                repo.git.branches[update.name] = update.after
                repo.updated_at = self.now()
                self._emit(
                    ForgeEvent(
                        repo,
                        "push",
                        "",
                        actor,
                        ref=f"refs/heads/{update.name}",
                        before=update.before or ZERO_SHA,
                        after=update.after,
                        commits=tuple(pushed),
                    )
                )
                for issue in self._open_pulls_from(repo, update.name):
                    self._touch(issue)
                    self._emit(
                        ForgeEvent(repo, "pull_request_sync", "synchronized", actor, issue=issue)
                    )
        finally:
            repo.bare.release()

    def _open_pulls_from(self, repo: Repo, branch: str) -> list[Issue]:
        return [
            issue
            for issue in sorted(repo.issues.values(), key=lambda i: i.number)
            if issue.pull is not None and issue.state == "open" and issue.pull.head == branch
        ]

    def _delete_branch(self, repo: Repo, actor: User, branch: str) -> None:
        sha = repo.git.branches.pop(branch)
        repo.updated_at = self.now()
        for issue in self._open_pulls_from(repo, branch):
            assert issue.pull is not None
            now = self.now()
            issue.state = "closed"
            issue.closed_at = now
            issue.updated_at = now
            issue.pull.frozen_head_sha = sha
            self._emit(ForgeEvent(repo, "pull_request", "closed", actor, issue=issue))

    def _index_commits(self, repo: Repo, head: str) -> None:
        """Add ``head`` and its ancestors missing from ``repo.git``, parents first."""
        pending: list[tuple[str, bool]] = [(head, False)]
        while pending:
            sha, parents_done = pending.pop()
            if sha in repo.git.commits:
                continue
            raw = repo.bare.commit(sha)
            if not parents_done:
                pending.append((sha, True))
                pending.extend((p, False) for p in raw.parents if p not in repo.git.commits)
                continue
            repo.git.add(
                sha,
                parents=raw.parents,
                tree=repo.bare.snapshot(raw.tree),
                message=raw.message,
                author=self._signature(raw.author),
                when=raw.author.when,
            )

    def _signature(self, identity: Identity) -> Signature:
        """A commit's author, with the login of the user whose email it carries ("" if none)."""
        login = next((u.login for u in self.users.values() if u.email == identity.email), "")
        return Signature(name=identity.name, email=identity.email, login=login)

    # -- pull requests --

    def pull(self, repo: Repo, number: int) -> Issue:
        """The pull request with this number (404 for plain issues, like Forgejo)."""
        issue = repo.issues.get(number)
        if issue is None or issue.pull is None:
            raise NotFound(f"pull request does not exist [id: 0, issue_id: 0, index: {number}]")
        return issue

    def list_pulls(
        self,
        repo: Repo,
        *,
        state: str = "open",
        head: str | None = None,
        base: str | None = None,
    ) -> list[Issue]:
        """Pull requests in a state, newest first; ``head``/``base`` keep only those from or
        into that branch (the spec's "Filter by head/base branch name": a plain branch name,
        compared exactly; an empty value filters nothing)."""
        pulls = self.list_issues(repo, state=state, kind="pulls")
        if head:
            pulls = [p for p in pulls if p.pull is not None and p.pull.head == head]
        if base:
            pulls = [p for p in pulls if p.pull is not None and p.pull.base == base]
        return pulls

    def pull_by_branches(self, repo: Repo, *, base: str, head: str) -> Issue:
        """The newest pull request from ``head`` into ``base``."""
        for issue in self.list_pulls(repo, state="all"):
            assert issue.pull is not None
            if issue.pull.base == base and issue.pull.head == head:
                return issue
        raise NotFound(f"pull request does not exist [base: {base}, head: {head}]")

    def create_pull(
        self,
        repo: Repo,
        actor: User,
        *,
        head: str,
        base: str,
        title: str,
        body: str = "",
        label_ids: Sequence[int] = (),
        assignees: Sequence[str] = (),
    ) -> Issue:
        """Open a pull request from ``head`` into ``base`` (branches of the same repository)."""
        self.require(repo, actor, Access.READ)
        if ":" in head:
            owner, _, head = head.partition(":")
            if owner.lower() != repo.owner.login.lower():
                raise Invalid("pull requests from forks are not supported by the sandbox")
        if not title.strip():
            raise Invalid("title must not be empty")
        base = base or repo.default_branch
        head_sha = repo.git.branches.get(head)
        base_sha = repo.git.branches.get(base)
        if head_sha is None or base_sha is None:
            raise NotFound(f"branch does not exist [name: {head if head_sha is None else base}]")
        if head == base:
            raise Invalid("head and base branch must differ")
        for issue in repo.issues.values():
            pull = issue.pull
            if pull and issue.state == "open" and (pull.head, pull.base) == (head, base):
                raise Conflict(
                    f"pull request already exists for these targets [id: {pull.id}, "
                    f"issue_id: {issue.id}, head_repo_id: {repo.id}, base_repo_id: {repo.id}, "
                    f"head_branch: {head}, base_branch: {base}]"
                )
        if not repo.git.log(head_sha, exclude=base_sha):
            raise Invalid(f"there are no commits between {base} and {head}")
        merge_base = repo.git.merge_base(head_sha, base_sha)
        if merge_base is None:
            raise Invalid(f"{head} and {base} have no common history")
        issue = self._new_issue(repo, actor, title=title, body=body)
        issue.pull = PullRequest(
            id=self._next_id("pull"), head=head, base=base, merge_base=merge_base
        )
        if self.access(repo, actor) >= Access.WRITE:
            self._set_labels(
                actor, issue, keep_last_per_scope(self.resolve_labels(repo, label_ids))
            )
            issue.assignees = [self.user_named(login) for login in dict.fromkeys(assignees)]
        repo.issues[issue.number] = issue
        self._emit(ForgeEvent(repo, "pull_request", "opened", actor, issue=issue))
        return issue

    def pull_head_sha(self, repo: Repo, issue: Issue) -> str:
        """The head commit of a pull request: the branch's, or the one kept when it closed."""
        assert issue.pull is not None
        if issue.pull.frozen_head_sha is not None:
            return issue.pull.frozen_head_sha
        return repo.git.resolve(issue.pull.head) or issue.pull.merge_base

    def pull_base_sha(self, repo: Repo, issue: Issue) -> str:
        """The commit a pull request is compared against: the merge base of head and base."""
        assert issue.pull is not None
        if issue.pull.merged or issue.state == "closed":
            return issue.pull.merge_base
        head = self.pull_head_sha(repo, issue)
        base = repo.git.resolve(issue.pull.base)
        return repo.git.merge_base(head, base) or issue.pull.merge_base

    def pull_commits(self, repo: Repo, issue: Issue) -> list[Commit]:
        """Commits the pull request brings, newest first."""
        return repo.git.log(
            self.pull_head_sha(repo, issue), exclude=self.pull_base_sha(repo, issue)
        )

    def pull_files(self, repo: Repo, issue: Issue) -> tuple[FileChange, ...]:
        """Files the pull request changes, against its merge base."""
        return diff_trees(
            repo.git.tree(self.pull_base_sha(repo, issue)),
            repo.git.tree(self.pull_head_sha(repo, issue)),
        )

    def merge_pull(
        self,
        repo: Repo,
        actor: User,
        number: int,
        *,
        style: str,
        message: str = "",
        head_commit_id: str = "",
        delete_branch: bool = False,
    ) -> Issue:
        """Merge into the base branch: the base gets the commits, the PR is merged and closed.

        With ``delete_branch`` the head branch is deleted afterwards, as Forgejo does for
        ``delete_branch_after_merge`` — unless another open pull request still uses it."""
        issue = self.pull(repo, number)
        pull = issue.pull
        assert pull is not None
        self.require(repo, actor, Access.WRITE)
        # Forgejo's CheckPullMergeable order: merged → 405, closed → 404 (ErrIsClosed).
        if pull.merged:
            raise NotAllowed("The PR is already merged")
        if issue.state == "closed":
            raise NotFound("The PR is closed")
        try:
            merge_style = MergeStyle(style)
        except ValueError:
            raise Invalid(f"invalid merge style {style!r}") from None
        head_sha = self.pull_head_sha(repo, issue)
        if head_commit_id and head_commit_id != head_sha:
            raise Conflict("head out of date")
        base_before = repo.git.branches.get(pull.base)
        if base_before is None:
            raise NotAllowed(f"the base branch {pull.base!r} does not exist any more")
        merge_base = repo.git.merge_base(head_sha, base_before)
        assert merge_base is not None
        title = message or f"Merge pull request '{issue.title}' (#{issue.number})"
        if merge_style == MergeStyle.FAST_FORWARD_ONLY:
            if merge_base != base_before:
                raise Conflict("fast-forward merge is not possible: the base branch has moved")
            merged = head_sha
        elif merge_style in (MergeStyle.MERGE, MergeStyle.SQUASH):
            try:
                tree = repo.bare.merge_tree(base_before, head_sha)
            except MergeConflict:
                # Forgejo: ErrNotMergeableState → 405 "PR not in mergeable state".
                raise NotAllowed("PR not in mergeable state") from None
            parents = (base_before, head_sha) if merge_style == MergeStyle.MERGE else (base_before,)
            signed = actor.identity(self.now())
            merged = repo.bare.write_commit(
                tree=tree, parents=parents, author=signed, committer=signed, message=title + "\n"
            )
        else:
            raise Invalid(f"the sandbox does not implement the {style!r} merge style")
        repo.bare.set_branch(pull.base, merged)
        now = self.now()
        pull.merged = True
        pull.merged_at = now
        pull.merged_by = actor
        pull.merge_commit_sha = merged
        pull.merge_base = merge_base
        pull.frozen_head_sha = head_sha
        issue.state = "closed"
        issue.closed_at = now
        issue.updated_at = now
        self._apply_branch_updates(repo, actor, [BranchUpdate(pull.base, base_before, merged)])
        self._emit(ForgeEvent(repo, "pull_request", "closed", actor, issue=issue))
        self._close_referenced_issues(repo, actor, issue)
        if delete_branch and pull.head != pull.base and pull.head in repo.git.branches:
            in_use = any(
                other.pull is not None
                and other.state == "open"
                and pull.head in (other.pull.head, other.pull.base)
                for other in repo.issues.values()
            )
            if not in_use:
                repo.bare.delete_branch(pull.head)
                self._apply_branch_updates(
                    repo, actor, [BranchUpdate(pull.head, repo.git.branches[pull.head], None)]
                )
        return issue

    def _close_referenced_issues(self, repo: Repo, actor: User, pull: Issue) -> None:
        """Close the open issues the merged pull request's title or body closes (``Closes
        #12``, ``fixes org/other#3``), as Forgejo does on merge; one that still has open
        dependencies stays open without failing the merge (Forgejo allows that error there)."""
        for owner_repo, number in closing_references(f"{pull.title}\n{pull.body}"):
            wanted = (owner_repo or repo.full_name).lower()
            target_repo = next((r for n, r in self.repos.items() if n.lower() == wanted), None)
            if target_repo is None or self.access(target_repo, actor) < Access.WRITE:
                continue
            target = target_repo.issues.get(number)
            if target is None or target.is_pull or target.state != "open":
                continue
            if self.has_open_dependencies(target):
                continue
            self._change_state(target_repo, actor, target, "closed")

    def is_mergeable(self, repo: Repo, issue: Issue) -> bool:
        """Forgejo's ``mergeable``: open, not merged, and its head merges into the base cleanly."""
        pull = issue.pull
        assert pull is not None
        if issue.state != "open" or pull.merged:
            return False
        base = repo.git.branches.get(pull.base)
        head = self.pull_head_sha(repo, issue)
        if base is None:
            return False

        # Forgejo answers from the status its checker stored when the base or head last
        # moved; a burst of merges moves the base of every open pull request, so for a pair
        # not yet known the paths settle what they can before git is asked to merge.
        def by_paths() -> bool:
            ancestor = repo.git.merge_base(base, head)
            if ancestor in (base, head):
                return True
            return ancestor is not None and merges_without_looking(
                repo.git.tree(ancestor), repo.git.tree(base), repo.git.tree(head)
            )

        return repo.bare.merges_cleanly(base, head, by_paths=by_paths)

    def create_review(
        self,
        repo: Repo,
        actor: User,
        number: int,
        *,
        event: str,
        body: str = "",
        commit_id: str = "",
    ) -> Review:
        """Submit a review: APPROVED, REQUEST_CHANGES or COMMENT."""
        issue = self.pull(repo, number)
        assert issue.pull is not None
        try:
            state = ReviewState(event)
        except ValueError:
            raise Invalid(
                f"invalid review event {event!r}: want APPROVED, REQUEST_CHANGES or COMMENT"
            ) from None
        if issue.state == "closed":
            raise Invalid("cannot review a closed pull request")
        if state != ReviewState.COMMENT and issue.user.id == actor.id:
            kind = "approve" if state == ReviewState.APPROVED else "reject"
            raise Invalid(f"{kind} your own pull is not allowed")
        if state != ReviewState.APPROVED and not body.strip():
            raise Invalid("review event COMMENT and REQUEST_CHANGES need a body")
        review = Review(
            id=self._next_id("review"),
            user=actor,
            state=state,
            body=body,
            commit_id=commit_id or self.pull_head_sha(repo, issue),
            submitted_at=self.now(),
        )
        issue.pull.reviews.append(review)
        self._touch(issue)
        event_type = {
            ReviewState.APPROVED: "pull_request_review_approved",
            ReviewState.REQUEST_CHANGES: "pull_request_review_rejected",
            ReviewState.COMMENT: "pull_request_review_comment",
        }[state]
        self._emit(ForgeEvent(repo, event_type, "reviewed", actor, issue=issue, review=review))
        return review

    # -- commit statuses --

    def create_status(
        self,
        repo: Repo,
        actor: User,
        sha: str,
        *,
        state: str,
        context: str = "",
        description: str = "",
        target_url: str = "",
    ) -> CommitStatus:
        """Record a commit status (the newest per context is the one that counts)."""
        self.require(repo, actor, Access.WRITE)
        commit = self.commit_at(repo, sha)
        try:
            status_state = StatusState(state)
        except ValueError:
            raise Invalid(
                f"invalid commit status state {state!r}: want one of "
                + ", ".join(s.value for s in StatusState)
            ) from None
        now = self.now()
        status = CommitStatus(
            id=self._next_id("status"),
            sha=commit.sha,
            state=status_state,
            context=context or "default",
            description=description,
            target_url=target_url,
            creator=actor,
            created_at=now,
            updated_at=now,
        )
        repo.statuses.append(status)
        return status

    def statuses(self, repo: Repo, ref: str) -> list[CommitStatus]:
        """Every status of the commit ``ref`` names, newest first."""
        sha = self.commit_at(repo, ref).sha
        return sorted((s for s in repo.statuses if s.sha == sha), key=lambda s: -s.id)

    def latest_statuses(self, repo: Repo, ref: str) -> list[CommitStatus]:
        """The newest status per context, oldest context first."""
        latest: dict[str, CommitStatus] = {}
        for status in reversed(self.statuses(repo, ref)):
            latest[status.context] = status
        return sorted(latest.values(), key=lambda s: s.id)

    # -- hooks --

    def hook(self, repo: Repo, hook_id: int) -> Hook:
        """A webhook of this repository by id."""
        try:
            return repo.hooks[hook_id]
        except KeyError:
            raise NotFound(f"webhook does not exist [id: {hook_id}]") from None

    def create_hook(
        self,
        repo: Repo,
        actor: User,
        *,
        type: str,
        config: Mapping[str, str],
        events: Sequence[str] = (),
        active: bool = False,
        branch_filter: str = "",
        authorization_header: str = "",
    ) -> Hook:
        """A new webhook; the sandbox delivers forgejo/gitea/gogs hooks with JSON bodies."""
        self.require(repo, actor, Access.ADMIN)
        if type not in ALL_HOOK_TYPES:
            raise Invalid(f"invalid hook type {type!r}")
        if type not in HOOK_TYPES:
            raise Invalid(f"the sandbox does not deliver {type!r} hooks; use forgejo or gitea")
        url = config.get("url", "")
        if not url:
            raise Invalid("Missing config option: url")
        content_type = config.get("content_type", "")
        if content_type not in ("json", "form"):
            raise Invalid("Invalid content type")
        if content_type != "json":
            raise Invalid("the sandbox delivers only content_type json")
        now = self.now()
        hook = Hook(
            id=self._next_id("hook"),
            type=type,
            url=url,
            content_type=content_type,
            secret=config.get("secret", ""),
            events=list(events) or ["push"],
            active=active,
            branch_filter=branch_filter or "*",
            authorization_header=authorization_header,
            created_at=now,
            updated_at=now,
        )
        repo.hooks[hook.id] = hook
        return hook

    def edit_hook(
        self,
        repo: Repo,
        actor: User,
        hook_id: int,
        *,
        config: Mapping[str, str] | None = None,
        events: Sequence[str] | None = None,
        active: bool | None = None,
        branch_filter: str | None = None,
        authorization_header: str | None = None,
    ) -> Hook:
        """Change a webhook's target, secret, events or active flag."""
        self.require(repo, actor, Access.ADMIN)
        hook = self.hook(repo, hook_id)
        if config is not None:
            if "content_type" in config and config["content_type"] != "json":
                raise Invalid("the sandbox delivers only content_type json")
            hook.url = config.get("url", hook.url)
            hook.secret = config.get("secret", hook.secret)
        if events is not None:
            hook.events = list(events) or ["push"]
        if active is not None:
            hook.active = active
        if branch_filter is not None:
            hook.branch_filter = branch_filter or "*"
        if authorization_header is not None:
            hook.authorization_header = authorization_header
        hook.updated_at = self.now()
        return hook

    def delete_hook(self, repo: Repo, actor: User, hook_id: int) -> None:
        """Delete a webhook."""
        self.require(repo, actor, Access.ADMIN)
        self.hook(repo, hook_id)
        del repo.hooks[hook_id]
