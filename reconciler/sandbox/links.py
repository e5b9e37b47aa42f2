"""The sandbox forge's issue dependencies and issue timelines, with Forgejo's rules, no HTTP.

``api_links`` calls these for the ``/issues/{index}/dependencies``, ``/blocks`` and
``/timeline`` routes, and ``ForgejoSandbox`` for what a person does in the web UI (making one
issue depend on another). An issue's dependencies are the issues it is blocked by
(``Issue.depends_on``); the issues it blocks are found by looking the other way. As in Forgejo
(``models/issues/dependency.go``), an issue cannot depend on itself, a dependency is added
once, and a dependency whose reverse exists is refused as circular; longer cycles are not
checked, so they can exist. The timeline holds the issue's comments and the ``label`` entries
``ForgeState`` records whenever a label is added or removed, in the order they happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.sandbox.state import (
    Access,
    Comment,
    Conflict,
    ForgeRefusal,
    ForgeState,
    Issue,
    LabelChange,
    Repo,
    User,
)


class CircularDependency(ForgeRefusal):
    """Forgejo's answer to a dependency whose reverse already exists."""

    status = 400


class SelfDependency(ForgeRefusal):
    """Forgejo's answer to an issue made to depend on itself."""

    status = 400


@dataclass(frozen=True)
class IssueMeta:
    """``structs.IssueMeta``: an issue named by its repository and number."""

    owner: str
    repo: str
    index: int


def resolve(state: ForgeState, actor: User, meta: IssueMeta) -> Issue:
    """The issue ``meta`` names, if ``actor`` may see it (NotFound otherwise)."""
    found = state.repo(f"{meta.owner}/{meta.repo}", actor)
    return state.issue(found, meta.index)


def dependencies(state: ForgeState, repo: Repo, number: int) -> list[Issue]:
    """The issues ``repo#number`` depends on (is blocked by), oldest link first."""
    return list(state.issue(repo, number).depends_on)


def blocks(state: ForgeState, repo: Repo, number: int) -> list[Issue]:
    """The issues, in any repository, that depend on ``repo#number``."""
    target = state.issue(repo, number)
    return [
        issue
        for other in state.repos.values()
        for issue in other.issues.values()
        if any(dep is target for dep in issue.depends_on)
    ]


def add_dependency(state: ForgeState, actor: User, issue: Issue, blocker: Issue) -> None:
    """Make ``issue`` depend on ``blocker``; ``actor`` needs write access to ``issue``'s repo."""
    state.require(issue.repo, actor, Access.WRITE)
    if issue is blocker:
        raise SelfDependency("cannot add dependency on itself")
    if any(dep is blocker for dep in issue.depends_on):
        raise Conflict("dependency already exists")
    if any(dep is issue for dep in blocker.depends_on):
        raise CircularDependency("would create circular dependency")
    issue.depends_on.append(blocker)
    issue.updated_at = state.now()


def remove_dependency(state: ForgeState, actor: User, issue: Issue, blocker: Issue) -> None:
    """Remove the dependency of ``issue`` on ``blocker`` (removing a missing one is no error)."""
    state.require(issue.repo, actor, Access.WRITE)
    kept = [dep for dep in issue.depends_on if dep is not blocker]
    if len(kept) != len(issue.depends_on):
        issue.depends_on = kept
        issue.updated_at = state.now()


TimelineEntry = Comment | LabelChange


def timeline(state: ForgeState, repo: Repo, number: int) -> list[TimelineEntry]:
    """The issue's comments and label changes, oldest first (they share one id sequence)."""
    issue = state.issue(repo, number)
    entries: list[TimelineEntry] = [*issue.comments, *issue.label_changes]
    return sorted(entries, key=lambda entry: entry.id)
