"""The sandbox forge's git model: commits, branches and diffs held in memory.

Used by ``state`` (pushes, pull requests, merges) and rendered by ``shapes``. A commit is a full
snapshot of the repository's files plus its parents, and its sha is the sha1 of that content, so
the same operations could later be backed by a bare git repository on disk without the callers
changing: they only ever ask for a branch head, a log, a merge base or a diff.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

ZERO_SHA = "0" * 40


class ChangeKind(StrEnum):
    """How a file changed between two commits, in the words Forgejo's API uses."""

    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"


@dataclass(frozen=True)
class Signature:
    """Who wrote a commit: git's name and email, plus the forge login it maps to."""

    name: str
    email: str
    login: str


@dataclass(frozen=True)
class FileChange:
    """One file's change in a commit or a pull request, with line counts."""

    filename: str
    kind: ChangeKind
    additions: int
    deletions: int


@dataclass(frozen=True)
class Commit:
    """An immutable commit: full file snapshot, parents and the changes against the first parent."""

    sha: str
    parents: tuple[str, ...]
    message: str
    author: Signature
    when: datetime
    tree: Mapping[str, str]
    changes: tuple[FileChange, ...]
    sequence: int  # creation order; a valid topological order for logs


def _line_counts(old: str | None, new: str | None) -> tuple[int, int]:
    """Added and deleted line counts between two versions of a file (None = absent)."""
    old_lines = [] if old is None else old.splitlines()
    new_lines = [] if new is None else new.splitlines()
    additions = deletions = 0
    for opcode, i1, i2, j1, j2 in difflib.SequenceMatcher(
        a=old_lines, b=new_lines, autojunk=False
    ).get_opcodes():
        if opcode in ("replace", "delete"):
            deletions += i2 - i1
        if opcode in ("replace", "insert"):
            additions += j2 - j1
    return additions, deletions


def diff_trees(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[FileChange, ...]:
    """The file changes that turn tree ``old`` into tree ``new``, sorted by file name."""
    changes: list[FileChange] = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        kind = (
            ChangeKind.ADDED
            if before is None
            else ChangeKind.REMOVED
            if after is None
            else ChangeKind.MODIFIED
        )
        additions, deletions = _line_counts(before, after)
        changes.append(FileChange(name, kind, additions, deletions))
    return tuple(changes)


def commit_sha(
    *,
    tree: Mapping[str, str],
    parents: tuple[str, ...],
    message: str,
    author: Signature,
    when: datetime,
) -> str:
    """The sha1 naming a commit: content, parents, message, author and time, like git's."""
    material = json.dumps(
        {
            "tree": dict(sorted(tree.items())),
            "parents": list(parents),
            "message": message,
            "author": [author.name, author.email],
            "when": when.isoformat(),
        },
        sort_keys=True,
    )
    return hashlib.sha1(material.encode()).hexdigest()


@dataclass
class CommitGraph:
    """One repository's commits and branch heads."""

    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    _sequence: int = 0

    def resolve(self, ref: str) -> str | None:
        """The sha a branch name, full ref, or (abbreviated) commit sha points at, or None."""
        name = ref.removeprefix("refs/heads/")
        if name in self.branches:
            return self.branches[name]
        if ref in self.commits:
            return ref
        if len(ref) >= 7:
            matches = [sha for sha in self.commits if sha.startswith(ref.lower())]
            if len(matches) == 1:
                return matches[0]
        return None

    def tree(self, sha: str | None) -> Mapping[str, str]:
        """The files at commit ``sha`` (empty for None, i.e. before the first commit)."""
        return {} if sha is None else self.commits[sha].tree

    def add_commit(
        self,
        *,
        parents: tuple[str, ...],
        tree: Mapping[str, str],
        message: str,
        author: Signature,
        when: datetime,
    ) -> Commit:
        """Store a new commit (not yet on any branch) and return it."""
        first_parent = parents[0] if parents else None
        sha = commit_sha(tree=tree, parents=parents, message=message, author=author, when=when)
        self._sequence += 1
        commit = Commit(
            sha=sha,
            parents=parents,
            message=message,
            author=author,
            when=when,
            tree=dict(tree),
            changes=diff_trees(self.tree(first_parent), tree),
            sequence=self._sequence,
        )
        # Identical content, parents and time give the identical sha, as in git: keep the first.
        return self.commits.setdefault(sha, commit)

    def ancestors(self, sha: str | None) -> set[str]:
        """Every commit reachable from ``sha``, itself included."""
        seen: set[str] = set()
        stack = [sha] if sha else []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self.commits[current].parents)
        return seen

    def log(self, sha: str | None, *, exclude: str | None = None) -> list[Commit]:
        """Commits reachable from ``sha`` but not from ``exclude``, newest first."""
        wanted = self.ancestors(sha) - self.ancestors(exclude)
        return sorted((self.commits[s] for s in wanted), key=lambda c: c.sequence, reverse=True)

    def merge_base(self, one: str | None, other: str | None) -> str | None:
        """The newest commit reachable from both, or None when they share no history."""
        common = self.ancestors(one) & self.ancestors(other)
        if not common:
            return None
        return max(common, key=lambda s: self.commits[s].sequence)
