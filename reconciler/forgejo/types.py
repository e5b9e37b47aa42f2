"""Frozen models of the Forgejo objects agent-fleet reads, and the one place raw JSON becomes them.

The Forgejo gateway (``reconciler.forgejo.gateway``) calls the ``from_api`` constructors on every
response body it receives; controllers, the loop and the CLI only ever see these models, never a
raw dict. Parsing is lenient where real servers differ (a field missing from an older Gitea or
Forgejo, ``null`` where a list was expected, ``login`` spelled ``username`` by legacy servers) and
strict where agent-fleet cannot work without the value (an issue without a number, a label
without a name): those raise ``MalformedResponse``, which the gateway turns into a
``ForgejoError`` naming the operation.

The models live by kind (``repo_types``: labels, users, repositories, hooks, limits, pages;
``issue_types``: issues and comments; ``pull_types``: pull requests, reviews, commits, statuses,
branches) over the field readers of ``parsing``; this module is the one import path for all of
them. None of these modules imports pyforgejo or httpx: they are safe to import anywhere.
"""

from reconciler.forgejo.issue_types import Comment, Issue, IssueState
from reconciler.forgejo.link_types import LabelEvent
from reconciler.forgejo.parsing import MalformedResponse, parse_time
from reconciler.forgejo.pull_types import (
    Branch,
    ChangedFile,
    CombinedStatus,
    Commit,
    CommitState,
    CommitStatus,
    PullRequest,
    Review,
    ReviewState,
)
from reconciler.forgejo.repo_types import (
    ApiLimits,
    Hook,
    Label,
    LabelSpec,
    Page,
    Repo,
    RepoPermission,
    User,
    label_scope,
    list_body,
    normalize_color,
)

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
    "LabelEvent",
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
