"""Issue dependencies and label history: the gateway's reads of how issues hold each other.

``LinkOps`` is part of ``reconciler.forgejo.gateway.ForgejoGateway``. The assignment controller
reads an issue's dependencies (``list_dependencies``: the issues it is blocked by), the issues
a closed one blocks (``list_blocks``: looked at again so they start), and who added the approval
label (``label_events``, from the issue's timeline). ``add_dependency`` / ``remove_dependency``
make or undo a link, as a person would in the web UI (the demo and tests use them).
"""

from __future__ import annotations

from reconciler.forgejo.http import ForgejoHttp, repo_path, split_repo
from reconciler.forgejo.link_types import LabelEvent
from reconciler.forgejo.types import Issue, list_body

__all__ = ["LinkOps"]

_LINK_PAGE = 50


class LinkOps(ForgejoHttp):
    """The dependency and timeline operations of the gateway."""

    def _issue_links(self, operation: str, repo: str, number: int, kind: str) -> tuple[Issue, ...]:
        # These lists are paged but carry no paging headers: a short page is the last one.
        found: list[Issue] = []
        page = 1
        while True:
            items = self._get(
                operation,
                f"{repo_path(repo)}/issues/{number}/{kind}",
                lambda raw: tuple(Issue.from_api(item) for item in list_body(raw, kind)),
                params={"page": page, "limit": _LINK_PAGE},
            )
            found += items
            if len(items) < _LINK_PAGE:
                return tuple(found)
            page += 1

    def list_dependencies(self, repo: str, number: int) -> tuple[Issue, ...]:
        """The issues ``repo#number`` depends on (Forgejo's "blocked by"), in any repository."""
        return self._issue_links("list_dependencies", repo, number, "dependencies")

    def list_blocks(self, repo: str, number: int) -> tuple[Issue, ...]:
        """The issues that depend on ``repo#number``, in any repository."""
        return self._issue_links("list_blocks", repo, number, "blocks")

    def label_events(self, repo: str, number: int) -> tuple[LabelEvent, ...]:
        """Every label added to or removed from the issue, oldest first, with who did it."""
        entries = self._list(
            "list_timeline",
            f"{repo_path(repo)}/issues/{number}/timeline",
            LabelEvent.from_timeline,
        )
        return tuple(entry for entry in entries if entry is not None)

    def _dependency_body(self, on_repo: str, on: int) -> dict[str, object]:
        owner, name = split_repo(on_repo)
        return {"owner": owner, "repo": name, "index": on}

    def add_dependency(self, repo: str, number: int, *, on: int, on_repo: str = "") -> Issue:
        """Make ``repo#number`` depend on ``on_repo#on`` (default: the same repository)."""
        return self._write(
            "add_dependency",
            "POST",
            f"{repo_path(repo)}/issues/{number}/dependencies",
            Issue.from_api,
            body=self._dependency_body(on_repo or repo, on),
        )

    def remove_dependency(self, repo: str, number: int, *, on: int, on_repo: str = "") -> Issue:
        """Undo ``add_dependency``; removing a dependency that is not there changes nothing."""
        return self._write(
            "remove_dependency",
            "DELETE",
            f"{repo_path(repo)}/issues/{number}/dependencies",
            Issue.from_api,
            body=self._dependency_body(on_repo or repo, on),
            idempotent=True,
        )
