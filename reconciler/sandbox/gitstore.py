"""The bare git repositories behind the sandbox forge's repositories, on disk.

``ForgeState`` creates one ``BareRepository`` per forge repository in the directory a
``GitStorage`` owns, writes into it the commits its helpers and merges make, and reads back what
``git push`` brought so that its in-memory ``CommitGraph`` (what REST answers are rendered from)
follows the repository. ``githttp`` serves the same directory to git clients, and
``ForgejoSandbox.stop`` removes it.

Objects the sandbox makes itself (the files of ``push`` and of an initial commit, merge commits)
are built in Python and kept in memory; they and the refs naming them are written to disk as
loose objects and loose ref files, the way git writes them, just before a git process next
reads the repository. So the many small pushes of a test run open no file and start no
process. Objects git wrote (a push, a merge's tree) are read through one ``git cat-file
--batch`` per sync. Every writer holds ``ForgeState.lock``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import weakref
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO

from reconciler.bounded import remember

BLOB_MODE = "100644"
TREE_MODE = "40000"
SUBMODULE_MODE = "160000"
GIT_TIMEOUT = 60.0
MERGES_REMEMBERED = 4096
"""Merge results kept per repository (commit pairs; the oldest forgotten first)."""
CLEAN_BY_PATHS = "clean by paths"
"""A remembered merge known to be clean from its changed paths, whose tree was never needed."""

_SHA = re.compile(r"^[0-9a-f]{40}$")
_IDENTITY = re.compile(
    rb"^(?P<name>.*?) ?<(?P<email>[^>]*)> (?P<seconds>-?\d+)(?: (?P<zone>[+-]\d{4}))?$"
)
# What git check-ref-format forbids anywhere in a ref name.
_BAD_REF_TEXT = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")

# Each bare repository's configuration: nothing may pack refs or objects behind the sandbox's
# back (it writes loose refs itself), and the smart HTTP backend may accept pushes.
_CONFIG = """\
[core]
\trepositoryformatversion = 0
\tfilemode = true
\tbare = true
[receive]
\tautogc = false
[gc]
\tauto = 0
[http]
\treceivepack = true
"""


class GitFailure(RuntimeError):
    """A git command the sandbox ran failed, or a repository holds what it cannot read."""


class StorageClosed(RuntimeError):
    """The sandbox was stopped: its git repositories are removed and cannot change any more."""


class MergeConflict(Exception):
    """Merging two commits conflicts in ``paths``."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths
        super().__init__(f"merge conflict in {', '.join(paths) or 'the tree'}")


@dataclass(frozen=True)
class Identity:
    """A git author or committer line: name, email and time with its zone."""

    name: str
    email: str
    when: datetime

    def line(self) -> bytes:
        """The ``Name <email> seconds +zone`` form git stores."""
        when = self.when if self.when.tzinfo is not None else self.when.replace(tzinfo=UTC)
        offset = when.utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        return f"{self.name} <{self.email}> {int(when.timestamp())} {zone}".encode()

    @classmethod
    def parse(cls, raw: bytes) -> Identity:
        """Read git's ``Name <email> seconds +zone`` form."""
        match = _IDENTITY.match(raw)
        if match is None:
            raise GitFailure(f"malformed identity line {raw!r}")
        zone = match.group("zone") or b"+0000"
        minutes = int(zone[1:3]) * 60 + int(zone[3:5])
        offset = timedelta(minutes=-minutes if zone.startswith(b"-") else minutes)
        when = datetime.fromtimestamp(int(match.group("seconds")), tz=timezone(offset))
        return cls(
            name=match.group("name").decode("utf-8", "replace"),
            email=match.group("email").decode("utf-8", "replace"),
            when=when,
        )


@dataclass(frozen=True)
class RawCommit:
    """A commit object as git stores it."""

    sha: str
    tree: str
    parents: tuple[str, ...]
    author: Identity
    committer: Identity
    message: str


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a tree object; names are kept as bytes decoded with surrogateescape."""

    mode: str
    name: str
    sha: str

    @property
    def is_tree(self) -> bool:
        """Whether the entry is a subdirectory."""
        return self.mode == TREE_MODE


def is_valid_branch_name(name: str) -> bool:
    """Whether ``refs/heads/<name>`` passes git's ``check-ref-format`` rules."""
    if not name or name == "@" or name.startswith("/") or name.endswith(("/", ".")):
        return False
    if _BAD_REF_TEXT.search(name):
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/")
    )


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _tree_order(entry: TreeEntry) -> bytes:
    # git sorts a tree's entries by name, a subdirectory as if its name ended in "/".
    name = _encode(entry.name)
    return name + b"/" if entry.is_tree else name


def _split_path(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..", ".git") or "\x00" in part for part in parts):
        raise ValueError(f"invalid file path {path!r}")
    return parts


def git_environment(home: Path) -> dict[str, str]:
    """The environment git runs in: no user or system configuration, C messages."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


class _BatchReader:
    """One ``git cat-file --batch`` process answering object requests in turn."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self._process = subprocess.Popen(
            ["git", "cat-file", "--batch"],
            cwd=path,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, sha: str) -> tuple[str, bytes]:
        process = self._process
        stdin, stdout = process.stdin, process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"{sha}\n".encode())
        stdin.flush()
        header = stdout.readline().split()
        if len(header) != 3:
            raise GitFailure(f"object {sha} is missing from the repository")
        kind, size = header[1].decode(), int(header[2])
        data = _read_exactly(stdout, size + 1)[:size]
        return kind, data

    def close(self) -> None:
        process = self._process
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            raise GitFailure("git cat-file ended in the middle of an object")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class BareRepository:
    """One bare repository: objects and branch refs, read and written for ``ForgeState``.

    What the sandbox writes reaches the disk when git is next about to look: ``materialize``
    lays the repository out on first use and writes the objects and refs made since, and it
    runs before every git process started here and before ``githttp`` serves the repository.
    So a test that never clones opens no file for its pushes, yet git always sees the whole
    repository. Callers hold ``ForgeState.lock``.
    """

    def __init__(self, path: Path, *, storage: GitStorage, default_branch: str) -> None:
        self.path = path
        self._storage = storage
        # Every object read or written so far, by sha: (type, content).
        self._objects: dict[str, tuple[str, bytes]] = {}
        # Written here and not yet on disk: object shas, branch -> sha, the default branch.
        self._unwritten_objects: list[str] = []
        self._unwritten_refs: dict[str, str] = {}
        self._unwritten_head: str | None = default_branch
        self._laid_out = False
        self._snapshots: dict[str, dict[str, str]] = {}
        # Decoded blob contents, shared by every snapshot that holds them (decoding a large
        # binary file with surrogateescape is slow enough to do only once).
        self._texts: dict[str, str] = {}
        self._reader: _BatchReader | None = None
        # Three-way merges by (ours, theirs): a commit pair always merges the same way, and
        # Forgejo too keeps a pull request's merge status until its base or head moves.
        # Per commit pair: the merged tree, the conflict, or CLEAN_BY_PATHS (clean, no tree yet).
        self._merges: dict[tuple[str, str], str | MergeConflict] = {}

    def _check_open(self) -> None:
        if self._storage.closed:
            raise StorageClosed("the sandbox was stopped: its git repositories were removed")

    def materialize(self) -> Path:
        """Bring the repository on disk up to date for git; returns its directory."""
        self._check_open()
        if not self._laid_out:
            # What ``git init --bare`` makes, without the sample hooks.
            for directory in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
                (self.path / directory).mkdir(parents=True, exist_ok=True)
            (self.path / "config").write_text(_CONFIG)
            (self.path / "description").write_text("Unnamed repository\n")
            self._laid_out = True
        for sha in self._unwritten_objects:
            self._write_loose_object(sha)
        self._unwritten_objects.clear()
        # Objects first, then the refs that name them, as git itself orders a ref update.
        for name, sha in self._unwritten_refs.items():
            self._write_ref(name, sha)
        self._unwritten_refs.clear()
        if self._unwritten_head is not None:
            (self.path / "HEAD").write_text(f"ref: refs/heads/{self._unwritten_head}\n")
            self._unwritten_head = None
        return self.path

    def run(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``git <args>`` in the repository; the caller decides what an exit status means."""
        self.materialize()
        try:
            return subprocess.run(
                ["git", *args],
                cwd=self.path,
                env=git_environment(self._storage.root),
                input=input,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as slow:
            raise GitFailure(f"git {args[0]} took longer than {GIT_TIMEOUT:.0f} s") from slow

    # -- objects --

    def write_object(self, kind: str, data: bytes) -> str:
        """Store an object of ``kind`` (blob, tree, commit) and return its sha."""
        self._check_open()
        sha = hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).hexdigest()
        if sha not in self._objects:
            self._objects[sha] = (kind, data)
            self._unwritten_objects.append(sha)
        return sha

    def _write_loose_object(self, sha: str) -> None:
        target = self.path / "objects" / sha[:2] / sha[2:]
        if target.exists():
            return
        kind, data = self._objects[sha]
        target.parent.mkdir(exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=target.parent, prefix="tmp_obj_")
        with os.fdopen(fd, "wb") as out:
            out.write(zlib.compress(f"{kind} {len(data)}\0".encode() + data, 1))
        os.chmod(scratch, 0o444)
        os.replace(scratch, target)

    def read_object(self, sha: str) -> tuple[str, bytes]:
        """An object's type and content, from memory or from ``git cat-file``."""
        known = self._objects.get(sha)
        if known is not None:
            return known
        if self._reader is None:
            self.materialize()
            self._reader = _BatchReader(self.path, git_environment(self._storage.root))
        found = self._reader.read(sha)
        self._objects[sha] = found
        return found

    def release(self) -> None:
        """Stop the ``cat-file`` process a read started (objects read stay in memory)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _read(self, sha: str, kind: str) -> bytes:
        found, data = self.read_object(sha)
        if found != kind:
            raise GitFailure(f"object {sha} is a {found}, not a {kind}")
        return data

    def commit(self, sha: str) -> RawCommit:
        """Parse the commit object ``sha``."""
        data = self._read(sha, "commit")
        head, _, message = data.partition(b"\n\n")
        tree = ""
        parents: list[str] = []
        author = committer = None
        for line in head.split(b"\n"):
            if line.startswith(b" "):
                continue  # continuation of a multi-line header (gpgsig, mergetag)
            key, _, value = line.partition(b" ")
            if key == b"tree":
                tree = value.decode()
            elif key == b"parent":
                parents.append(value.decode())
            elif key == b"author":
                author = Identity.parse(value)
            elif key == b"committer":
                committer = Identity.parse(value)
        if not tree or author is None or committer is None:
            raise GitFailure(f"commit {sha} lacks a tree, author or committer")
        return RawCommit(
            sha=sha,
            tree=tree,
            parents=tuple(parents),
            author=author,
            committer=committer,
            message=message.decode("utf-8", "replace"),
        )

    def tree(self, sha: str) -> tuple[TreeEntry, ...]:
        """Parse the tree object ``sha``."""
        data = self._read(sha, "tree")
        entries: list[TreeEntry] = []
        at = 0
        while at < len(data):
            space = data.index(b" ", at)
            nul = data.index(b"\0", space)
            mode = data[at:space].decode()
            entries.append(
                TreeEntry(
                    mode="40000" if mode == "040000" else mode,
                    name=_decode(data[space + 1 : nul]),
                    sha=data[nul + 1 : nul + 21].hex(),
                )
            )
            at = nul + 21
        return tuple(entries)

    def snapshot(self, tree_sha: str) -> Mapping[str, str]:
        """Every file under a tree, path -> content (bytes decoded with surrogateescape).

        Symlinks read as their target; submodule entries are left out.
        """
        known = self._snapshots.get(tree_sha)
        if known is not None:
            return known
        files: dict[str, str] = {}
        for entry in self.tree(tree_sha):
            if entry.is_tree:
                for path, content in self.snapshot(entry.sha).items():
                    files[f"{entry.name}/{path}"] = content
            elif entry.mode != SUBMODULE_MODE:
                files[entry.name] = self._text(entry.sha)
        self._snapshots[tree_sha] = files
        return files

    def _text(self, blob_sha: str) -> str:
        text = self._texts.get(blob_sha)
        if text is None:
            text = self._texts[blob_sha] = _decode(self._read(blob_sha, "blob"))
        return text

    def write_tree(self, entries: list[TreeEntry]) -> str:
        """Store a tree object made of ``entries`` and return its sha."""
        data = b"".join(
            f"{e.mode} ".encode() + _encode(e.name) + b"\0" + bytes.fromhex(e.sha)
            for e in sorted(entries, key=_tree_order)
        )
        return self.write_object("tree", data)

    def write_commit(
        self,
        *,
        tree: str,
        parents: tuple[str, ...],
        author: Identity,
        committer: Identity,
        message: str,
    ) -> str:
        """Store a commit object and return its sha (no ref moves)."""
        lines = [f"tree {tree}".encode()]
        lines += [f"parent {parent}".encode() for parent in parents]
        lines += [b"author " + author.line(), b"committer " + committer.line()]
        return self.write_object("commit", b"\n".join(lines) + b"\n\n" + message.encode())

    def commit_files(
        self,
        parent: str | None,
        files: Mapping[str, str | None],
        *,
        message: str,
        author: Identity,
        committer: Identity | None = None,
    ) -> str:
        """A new commit on top of ``parent`` with ``files`` (path -> content, None deletes).

        The committer is the author unless ``committer`` is given.

        Paths use ``/``; untouched files keep their mode, new files are ``100644``. A path whose
        parent directory is a file replaces that file, as ``git add`` after ``git rm`` does.
        """
        edits: dict[tuple[str, ...], str | None] = {}
        for path, content in files.items():
            edits[tuple(_split_path(path))] = content
        root = self.commit(parent).tree if parent else None
        tree = self._edit_tree(root, edits)
        return self.write_commit(
            tree=tree or self.write_tree([]),
            parents=(parent,) if parent else (),
            author=author,
            committer=committer or author,
            message=message,
        )

    def _edit_tree(
        self, tree_sha: str | None, edits: Mapping[tuple[str, ...], str | None]
    ) -> str | None:
        """The tree ``tree_sha`` with ``edits`` applied; None when nothing is left in it."""
        entries = {e.name: e for e in self.tree(tree_sha)} if tree_sha else {}
        nested: dict[str, dict[tuple[str, ...], str | None]] = {}
        for parts, content in edits.items():
            name = parts[0]
            if len(parts) > 1:
                nested.setdefault(name, {})[parts[1:]] = content
                continue
            existing = entries.get(name)
            if content is None:
                if existing is not None and not existing.is_tree:
                    del entries[name]
                continue
            mode = existing.mode if existing and not existing.is_tree else BLOB_MODE
            entries[name] = TreeEntry(mode, name, self.write_object("blob", _encode(content)))
        for name, inner in nested.items():
            existing = entries.get(name)
            subtree = existing.sha if existing is not None and existing.is_tree else None
            if existing is not None and subtree is None and all(c is None for c in inner.values()):
                continue  # deleting below a file: nothing to delete
            edited = self._edit_tree(subtree, inner)
            if edited is None:
                entries.pop(name, None)
            else:
                entries[name] = TreeEntry(TREE_MODE, name, edited)
        if not entries:
            return None
        return self.write_tree(list(entries.values()))

    # -- refs --

    def branches(self) -> dict[str, str]:
        """Every branch and the sha it points at, as git sees them now."""
        done = self.run("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
        if done.returncode != 0:
            raise GitFailure(f"git for-each-ref failed: {_decode(done.stderr).strip()}")
        found: dict[str, str] = {}
        for line in _decode(done.stdout).splitlines():
            sha, _, ref = line.partition(" ")
            found[ref.removeprefix("refs/heads/")] = sha
        return found

    def set_branch(self, name: str, sha: str) -> None:
        """Point ``refs/heads/<name>`` at ``sha``."""
        self._check_open()
        if not is_valid_branch_name(name) or not _SHA.match(sha):
            raise ValueError(f"invalid branch update {name!r} -> {sha!r}")
        self._unwritten_refs[name] = sha

    def delete_branch(self, name: str) -> None:
        """Remove ``refs/heads/<name>`` (``git update-ref -d``, which also clears packed refs)."""
        self._unwritten_refs.pop(name, None)
        done = self.run("update-ref", "-d", f"refs/heads/{name}")
        if done.returncode != 0:
            raise GitFailure(f"git update-ref -d failed: {_decode(done.stderr).strip()}")

    def _write_ref(self, name: str, sha: str) -> None:
        """Write a loose ref the way git's files backend does."""
        ref = self.path / "refs" / "heads" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        lock = ref.with_name(ref.name + ".lock")
        # O_EXCL on the lock file is git's own ref locking, so a git process never interleaves.
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(f"{sha}\n")
        os.replace(lock, ref)

    def set_default_branch(self, name: str) -> None:
        """Point ``HEAD`` at ``refs/heads/<name>`` (what a clone checks out)."""
        self._check_open()
        self._unwritten_head = name

    # -- merging --

    def merge_tree(self, ours: str, theirs: str) -> str:
        """The tree of a three-way merge of two commits (``git merge-tree --write-tree``).

        Remembered per commit pair (the most recent ``MERGES_REMEMBERED``): every rendering
        of an open pull request says whether it is ``mergeable``, which Forgejo answers from
        the merge status its checker stored when the base or head last moved, not by merging
        again on each request.
        """
        pair = (ours, theirs)
        known = self._merges.get(pair)
        if known is None or known == CLEAN_BY_PATHS:
            known = self._merge_tree(ours, theirs)
            self._remember_merge(pair, known)
        if isinstance(known, MergeConflict):
            raise MergeConflict(known.paths)
        return known

    def merges_cleanly(self, ours: str, theirs: str, *, by_paths: Callable[[], bool]) -> bool:
        """Whether two commits merge without conflict, remembered per pair like ``merge_tree``.

        A pair not yet known asks ``by_paths`` first (a cheap answer that is either a certain
        "clean" or "not sure"), and git only when it is not sure."""
        pair = (ours, theirs)
        known = self._merges.get(pair)
        if known == CLEAN_BY_PATHS:
            return True
        if known is None and by_paths():
            self._remember_merge(pair, CLEAN_BY_PATHS)
            return True
        try:
            self.merge_tree(ours, theirs)
        except MergeConflict:
            return False
        return True

    def _remember_merge(self, pair: tuple[str, str], known: str | MergeConflict) -> None:
        remember(self._merges, pair, known, limit=MERGES_REMEMBERED)

    def _merge_tree(self, ours: str, theirs: str) -> str | MergeConflict:
        done = self.run("merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs)
        lines = _decode(done.stdout).splitlines()
        if done.returncode == 1:
            return MergeConflict(tuple(dict.fromkeys(line for line in lines[1:] if line)))
        if done.returncode != 0 or not lines or not _SHA.match(lines[0]):
            raise GitFailure(f"git merge-tree failed: {_decode(done.stderr).strip()}")
        return lines[0]


class GitStorage:
    """A temporary directory of bare repositories, ``<owner>/<name>.git``, removed on close."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="forgejo-sandbox-git-"))
        self.closed = False
        self._repositories: list[BareRepository] = []
        # A sandbox nobody stops still leaves no directory behind once it is collected.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)

    def relative_path(self, full_name: str) -> str:
        """Where ``owner/name`` lives under ``root`` (lower case, as Forgejo keeps it)."""
        owner, _, name = full_name.lower().partition("/")
        return f"{owner}/{name}.git"

    def create(self, full_name: str, *, default_branch: str) -> BareRepository:
        """A new empty bare repository for ``owner/name``."""
        if self.closed:
            raise StorageClosed("the sandbox was stopped: its git repositories were removed")
        path = self.root / self.relative_path(full_name)
        if path.exists():
            shutil.rmtree(path)
        repository = BareRepository(path, storage=self, default_branch=default_branch)
        self._repositories.append(repository)
        return repository

    def close(self) -> None:
        """Stop reader processes and remove every repository. Safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        for repository in self._repositories:
            repository.release()
        self._cleanup()
