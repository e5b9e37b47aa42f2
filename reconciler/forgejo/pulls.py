"""Pull requests, reviews, commits, commit statuses, branches and files.

``PullOps`` is this half of ``reconciler.forgejo.gateway.ForgejoGateway``: the review and
receipts controllers, receipt verification and the executors call these through the gateway.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

from reconciler.bounded import remember
from reconciler.errors import ForgejoNotFound
from reconciler.forgejo.http import (
    PAGE_SIZE,
    ForgejoHttp,
    ListState,
    repo_path,
    seg,
    state_params,
    total_count,
)
from reconciler.forgejo.types import (
    Branch,
    ChangedFile,
    CombinedStatus,
    Commit,
    CommitState,
    CommitStatus,
    MalformedResponse,
    Page,
    PullRequest,
    Review,
    ReviewState,
)

__all__ = ["MergeStyle", "PullOps"]

MergeStyle = Literal["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"]

# Forgejo's precedence when it combines statuses (modules/structs/commit_status.go): worst wins.
_STATE_RANK: Mapping[CommitState, int] = {
    CommitState.ERROR: 0,
    CommitState.FAILURE: 1,
    CommitState.WARNING: 2,
    CommitState.PENDING: 3,
    CommitState.SUCCESS: 4,
    CommitState.SKIPPED: 5,
}


MERGED_KEPT = 2048
"""Merged pull requests a gateway keeps for ``get_pull(merged_kept=True)`` (the oldest go)."""

PULL_CHANGES_KEPT = 1024
"""``pull_changes`` answers a gateway keeps (the oldest go)."""


class PullOps(ForgejoHttp):
    """The pull request, commit and branch operations of the gateway."""

    # --- pull requests -----------------------------------------------------------------------

    def list_pulls(self, repo: str, *, state: ListState = "open") -> tuple[PullRequest, ...]:
        """Every pull request in ``state``, all pages."""
        return self._list(
            "list_pulls",
            f"{repo_path(repo)}/pulls",
            PullRequest.from_api,
            params=state_params(state),
        )

    def list_pulls_page(
        self, repo: str, *, page: int = 1, limit: int = PAGE_SIZE, state: ListState = "open"
    ) -> Page[PullRequest]:
        """One page of ``list_pulls``, with the paging facts the server sent."""
        return self._page(
            "list_pulls",
            f"{repo_path(repo)}/pulls",
            PullRequest.from_api,
            params=state_params(state),
            page=page,
            limit=limit,
        )

    def get_pull(
        self, repo: str, number: int, *, merged_kept: bool = False, kept: bool = False
    ) -> PullRequest:
        """One pull request; its ``updated_at`` is noted in ``seen``.

        With ``merged_kept``, a pull request this gateway last read as merged is answered from
        memory: once merged, its head, commits and merge never change (its title, body and
        labels still may — callers that read those do not ask for a kept copy).

        With ``kept``, the pull request as last read is answered from memory as long as
        nothing else may have changed it, as ``get_issue(kept=True)`` does: a fresh look at
        its key (a ``pull_request`` delivery, the resync) or a write of ours on it other than
        a label drops the copy. A change whose delivery is still on its way is read when that
        delivery enqueues the pull request: a caller that would act on what the copy lacks
        (a claimed commit not in it) reads again first.
        """
        key = (repo.lower(), number)
        if merged_kept:
            with self._doubt_lock:
                merged = self._merged_pulls.get(key)
            if merged is not None:
                return merged
        pull = self._get_item(
            "get_pull", f"{repo_path(repo)}/pulls/{number}", PullRequest, repo, number, kept=kept
        )
        if pull.merged:
            self.seen.note_merged(repo, pull.number)
            with self._doubt_lock:
                remember(self._merged_pulls, key, pull, limit=MERGED_KEPT)
        return pull

    def find_pull_by_head(
        self, repo: str, branch: str, *, base: str | None = None
    ) -> PullRequest | None:
        """The pull request whose head is ``branch`` of ``repo`` itself (not a fork), if any.

        An open one wins; otherwise the most recent closed or merged one. The ``head``/``base``
        query filters narrow the listing on servers that support them and are checked again
        here for those that ignore them.
        """
        params: dict[str, str | int] = {"state": "all", "head": branch}
        if base is not None:
            params["base"] = base
        candidates = [
            pull
            for pull in self._pages(
                "find_pull_by_head",
                f"{repo_path(repo)}/pulls",
                PullRequest.from_api,
                params=params,
            )
            # A PR from a fork (or from a deleted fork: ``head_repo`` None) is never the
            # task's: task branches live in the repository itself.
            if pull.head_branch == branch
            and pull.head_repo is not None
            and pull.head_repo.lower() == repo.lower()
            and (base is None or pull.base_branch == base)
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.state == "open", p.number))

    def create_pull(self, repo: str, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """Open a pull request from branch ``head`` into ``base``. Not retried (not idempotent)."""
        return self._write(
            "create_pull",
            "POST",
            f"{repo_path(repo)}/pulls",
            PullRequest.from_api,
            body={"head": head, "base": base, "title": title, "body": body},
        )

    def is_merged(self, repo: str, number: int) -> bool:
        """True when the PR is merged (204); Forgejo answers 404 for unmerged or unknown PRs."""
        try:
            self._request(
                "is_merged", "GET", f"{repo_path(repo)}/pulls/{number}/merge", idempotent=True
            )
        except ForgejoNotFound:
            return False
        return True

    def merge_pull(
        self,
        repo: str,
        number: int,
        *,
        style: MergeStyle = "merge",
        message: str | None = None,
        delete_branch: bool = False,
    ) -> None:
        """Merge a pull request. ``ForgejoConflict`` when it cannot be merged (or already was).

        Not retried: a retry after a lost response answers 405 for the PR just merged.
        """
        payload: dict[str, object] = {"Do": style, "delete_branch_after_merge": delete_branch}
        if message is not None:
            payload["MergeMessageField"] = message
        self.seen.invalidate(repo, number)
        self._request("merge_pull", "POST", f"{repo_path(repo)}/pulls/{number}/merge", body=payload)

    def list_reviews(self, repo: str, number: int) -> tuple[Review, ...]:
        """Every review of a pull request, oldest first."""
        return self._list(
            "list_reviews", f"{repo_path(repo)}/pulls/{number}/reviews", Review.from_api
        )

    def create_review(
        self,
        repo: str,
        number: int,
        *,
        event: ReviewState | str,
        body: str,
        commit_id: str | None = None,
    ) -> Review:
        """Submit a review (``APPROVED``, ``REQUEST_CHANGES`` or ``COMMENT``). Not retried.

        Forgejo refuses (``ForgejoConflict``) an approval or change request by the PR's author.
        """
        state = ReviewState(event)
        if state not in (ReviewState.APPROVED, ReviewState.REQUEST_CHANGES, ReviewState.COMMENT):
            raise ValueError(
                f"review event must be APPROVED, REQUEST_CHANGES or COMMENT: {event!r}"
            )
        payload: dict[str, object] = {"event": state.value, "body": body}
        if commit_id is not None:
            payload["commit_id"] = commit_id
        self.seen.invalidate(repo, number)
        return self._write(
            "create_review",
            "POST",
            f"{repo_path(repo)}/pulls/{number}/reviews",
            Review.from_api,
            body=payload,
        )

    def list_pull_commits(self, repo: str, number: int) -> tuple[Commit, ...]:
        """The commits of a pull request."""
        return self._list(
            "list_pull_commits",
            f"{repo_path(repo)}/pulls/{number}/commits",
            Commit.from_api,
            # Verification and file lists cost the server git work nobody here reads.
            params={"verification": "false", "files": "false"},
        )

    def list_pull_files(self, repo: str, number: int) -> tuple[ChangedFile, ...]:
        """The files a pull request changes."""
        return self._list(
            "list_pull_files", f"{repo_path(repo)}/pulls/{number}/files", ChangedFile.from_api
        )

    def pull_changes(
        self, repo: str, pull: PullRequest
    ) -> tuple[tuple[Commit, ...], tuple[ChangedFile, ...]]:
        """The commits and the changed files of ``pull``, as just read.

        Forgejo counts both from the PR's merge base to its head, so while neither moves the
        answer stays the same: the one read for this (head, merge base) is given again (a
        receipt checked in review and again at the merge reads them once). A pull request
        without a merge base in its answer is read every time.
        """
        key = (repo.lower(), pull.number, pull.head_sha, pull.merge_base or "")
        if pull.head_sha and pull.merge_base:
            with self._doubt_lock:
                kept = self._pull_changes.get(key)
            if kept is not None:
                return kept
        changes = (
            self.list_pull_commits(repo, pull.number),
            self.list_pull_files(repo, pull.number),
        )
        if pull.head_sha and pull.merge_base:
            with self._doubt_lock:
                remember(self._pull_changes, key, changes, limit=PULL_CHANGES_KEPT)
        return changes

    # --- commits, statuses, branches ---------------------------------------------------------

    def get_commit(self, repo: str, sha: str) -> Commit:
        """One commit by sha."""
        return self._get(
            "get_commit",
            f"{repo_path(repo)}/git/commits/{seg(sha)}",
            Commit.from_api,
            params={"stat": "false", "verification": "false", "files": "false"},
        )

    def combined_status(self, repo: str, ref: str) -> CombinedStatus:
        """The combined CI state of a commit (or branch/tag) with every status, all pages.

        Forgejo answers an empty object (``state`` None here) for a commit without statuses.
        It pages the latest status per context (50 a page) and puts the number of contexts in
        ``X-Total-Count``; past one page the combined state is recomputed over all of them.
        """
        path = f"{repo_path(repo)}/commits/{seg(ref)}/status"
        pages: list[CombinedStatus] = []
        total = 0
        page = 1
        while True:
            response = self._request(
                "combined_status",
                "GET",
                path,
                params={"page": page, "limit": PAGE_SIZE},
                idempotent=True,
            )
            current = self._parse("combined_status", response, CombinedStatus.from_api)
            pages.append(current)
            total = max(total, total_count(response) or 0, current.total_count)
            seen = sum(len(p.statuses) for p in pages)
            # Bounded by the page count the total implies, in case a server ignores ``page``.
            if not current.statuses or seen >= total or page * PAGE_SIZE >= total:
                break
            page += 1
        first = pages[0]
        if len(pages) == 1:
            return first
        statuses = tuple(s for p in pages for s in p.statuses)
        worst = min((s.state for s in statuses), key=_STATE_RANK.__getitem__)
        return first.model_copy(
            update={"statuses": statuses, "state": worst, "total_count": len(statuses)}
        )

    def create_status(
        self,
        repo: str,
        sha: str,
        *,
        context: str,
        state: CommitState | str,
        description: str = "",
        target_url: str = "",
    ) -> CommitStatus:
        """Report a CI status on a commit. Not retried: each POST adds a row to its history."""
        payload = {
            "context": context,
            "state": CommitState(state).value,
            "description": description,
            "target_url": target_url,
        }
        return self._write(
            "create_status",
            "POST",
            f"{repo_path(repo)}/statuses/{seg(sha)}",
            CommitStatus.from_api,
            body=payload,
        )

    def get_branch(self, repo: str, branch: str) -> Branch | None:
        """A branch and its tip, or ``None`` when it does not exist."""
        try:
            return self._get(
                "get_branch",
                f"{repo_path(repo)}/branches/{quote(branch, safe='/')}",
                Branch.from_api,
            )
        except ForgejoNotFound:
            return None

    def list_branch_commits(
        self, repo: str, branch: str, *, limit: int = PAGE_SIZE
    ) -> tuple[Commit, ...]:
        """The newest ``limit`` commits reachable from ``branch``, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        params: dict[str, str | int] = {
            "sha": branch,
            "stat": "false",
            "verification": "false",
            "files": "false",
        }
        commits: list[Commit] = []
        for commit in self._pages(
            "list_branch_commits",
            f"{repo_path(repo)}/commits",
            Commit.from_api,
            params=params,
            limit=min(limit, PAGE_SIZE),
        ):
            commits.append(commit)
            if len(commits) >= limit:
                break
        return tuple(commits)

    def create_file(
        self,
        repo: str,
        path: str,
        *,
        content: bytes,
        message: str,
        branch: str,
        new_branch: str | None = None,
    ) -> str:
        """Commit one new file on ``branch`` (or on ``new_branch`` cut from it); returns the sha.

        Not retried: a second try answers 422 because the file exists by then.
        """
        if not path or path.startswith("/"):
            raise ValueError(f"file path must be relative to the repository root, got {path!r}")
        payload: dict[str, object] = {
            "content": base64.b64encode(content).decode("ascii"),
            "message": message,
            "branch": branch,
        }
        if new_branch is not None:
            payload["new_branch"] = new_branch
        return self._write(
            "create_file",
            "POST",
            f"{repo_path(repo)}/contents/{quote(path, safe='/')}",
            _file_commit_sha,
            body=payload,
        )


def _file_commit_sha(raw: object) -> str:
    commit = raw.get("commit") if isinstance(raw, Mapping) else None
    sha = commit.get("sha") if isinstance(commit, Mapping) else None
    if not isinstance(sha, str) or not sha:
        raise MalformedResponse("file response: no commit.sha")
    return sha
