"""The sandbox forge's index of each repository's git history: commits, branches and diffs.

``state`` keeps one ``CommitGraph`` per repository in step with its bare git repository
(``gitstore``): every commit that reaches a branch there, by ``git push``, a helper or a merge, is
added here with its full file snapshot and its changes against its first parent. ``shapes``
renders REST answers and webhook payloads from it, so answering a request never runs git.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
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
    sequence: int  # order of arrival, parents first; a valid topological order for logs


def _line_counts(old: str | None, new: str | None) -> tuple[int, int]:
    """Added and deleted line counts between two versions of a file (None = absent).

    A binary file (one holding a NUL byte) counts no lines, as Forgejo shows it.
    """
    if "\x00" in (old or "") or "\x00" in (new or ""):
        return 0, 0
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


def merges_without_looking(
    ancestor: Mapping[str, str], ours: Mapping[str, str], theirs: Mapping[str, str]
) -> bool:
    """Whether a three-way merge of ``ours`` and ``theirs`` (files at their merge base
    ``ancestor``) is certainly clean from the paths alone: neither side removes a file, and
    no path one side changes is, or lies under or above, a path the other side changes.

    False means "not certain" — git decides then. Without removals there are no renames for
    git to find, so content merges never meet: this is exact, not a guess."""
    sides: list[set[str]] = []
    for side in (ours, theirs):
        if any(name not in side for name in ancestor):
            return False
        sides.append({name for name, text in side.items() if ancestor.get(name) != text})
    mine, other = sides
    above_other = {folder for name in other for folder in _folders(name)}
    return not any(
        name in other or name in above_other or not other.isdisjoint(_folders(name))
        for name in mine
    )


def _folders(path: str) -> set[str]:
    """The folders ``path`` lies in: ``a/b/c`` → {``a``, ``a/b``}."""
    parts = path.split("/")
    return {"/".join(parts[:depth]) for depth in range(1, len(parts))}


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

    def add(
        self,
        sha: str,
        *,
        parents: tuple[str, ...],
        tree: Mapping[str, str],
        message: str,
        author: Signature,
        when: datetime,
    ) -> Commit:
        """Index the commit ``sha`` (its parents are indexed already) and return it."""
        known = self.commits.get(sha)
        if known is not None:
            return known
        first_parent = parents[0] if parents else None
        self._sequence += 1
        commit = Commit(
            sha=sha,
            parents=parents,
            message=message,
            author=author,
            when=when,
            tree=tree,
            changes=diff_trees(self.tree(first_parent), tree),
            sequence=self._sequence,
        )
        self.commits[sha] = commit
        return commit

    def ancestors(self, *heads: str | None) -> set[str]:
        """Every commit reachable from any of ``heads``, themselves included."""
        seen: set[str] = set()
        stack = [head for head in heads if head]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self.commits[current].parents)
        return seen

    def log(
        self, sha: str | None, *, exclude: str | None = None, exclude_all: Iterable[str] = ()
    ) -> list[Commit]:
        """Commits reachable from ``sha`` but from none of the excluded heads, newest first."""
        wanted = self.ancestors(sha) - self.ancestors(exclude, *exclude_all)
        return sorted((self.commits[s] for s in wanted), key=lambda c: c.sequence, reverse=True)

    def merge_base(self, one: str | None, other: str | None) -> str | None:
        """The newest commit reachable from both, or None when they share no history."""
        common = self.ancestors(one) & self.ancestors(other)
        if not common:
            return None
        return max(common, key=lambda s: self.commits[s].sequence)
