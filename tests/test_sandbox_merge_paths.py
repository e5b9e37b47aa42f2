"""The in-memory Forgejo's shortcut for ``mergeable`` against git's own three-way merge.

``merges_without_looking`` says a merge is clean from the changed paths alone (no removals,
no path changed on both sides or under one the other side changed); ``is_mergeable`` then
skips ``git merge-tree``. Whenever it says clean, git must agree: random trees, a real git.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox.commits import merges_without_looking

PATHS = ("a", "b", "a/x", "a/y", "c/d", "c/d/e", "c/f", "g/h/i")
TEXTS = ("one\n", "two\n", "one\ntwo\n")
ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/bin:/bin",
}


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, capture_output=True, text=True, check=False, timeout=30
    )


def _valid(tree: dict[str, str]) -> bool:
    """No path is both a file and a directory."""
    return not any(other.startswith(name + "/") for name in tree for other in tree)


def _tree(rng: random.Random) -> dict[str, str]:
    while True:
        tree = {p: rng.choice(TEXTS) for p in PATHS if rng.random() < 0.45}
        if _valid(tree):
            return tree


def _change(rng: random.Random, ancestor: dict[str, str]) -> dict[str, str]:
    while True:
        tree = dict(ancestor)
        for path in PATHS:
            roll = rng.random()
            if roll < 0.15:
                tree[path] = rng.choice(TEXTS)
            elif roll < 0.2:
                tree.pop(path, None)
        if _valid(tree):
            return tree


def _commit(work: Path, tree: dict[str, str], *, parent: str | None) -> str:
    if parent is not None:
        assert _git(work, "checkout", "-q", "--detach", parent).returncode == 0
    for entry in work.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for path, text in tree.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    assert _git(work, "add", "-A").returncode == 0
    assert _git(work, "commit", "-q", "--allow-empty", "-m", "state").returncode == 0
    return _git(work, "rev-parse", "HEAD").stdout.strip()


@pytest.mark.parametrize("seed", range(3))
def test_a_merge_said_clean_from_its_paths_is_clean_in_git(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    work = tmp_path / "work"
    work.mkdir()
    assert _git(work, "init", "-q", "-b", "main").returncode == 0
    shortcut = conflicts = 0
    for _ in range(25):
        ancestor = _tree(rng)
        ours, theirs = _change(rng, ancestor), _change(rng, ancestor)
        base = _commit(work, ancestor, parent=None)
        one = _commit(work, ours, parent=base)
        two = _commit(work, theirs, parent=base)
        merged = _git(work, "merge-tree", "--write-tree", one, two)
        assert merged.returncode in (0, 1), merged.stderr
        conflicts += merged.returncode == 1
        if merges_without_looking(ancestor, ours, theirs):
            shortcut += 1
            assert merged.returncode == 0, (ancestor, ours, theirs, merged.stdout)
    # The shortcut is taken for some cases and git finds conflicts in others.
    assert shortcut > 0 and conflicts > 0


def test_the_shortcut_declines_removals_and_nested_paths() -> None:
    ancestor = {"a": "1\n", "d/x": "1\n"}
    assert merges_without_looking(ancestor, {**ancestor, "b": "1\n"}, {**ancestor, "c": "1\n"})
    assert merges_without_looking(ancestor, ancestor, {"a": "2\n", "d/x": "1\n"})
    # A removal could be half of a rename git would follow: git decides.
    assert not merges_without_looking(ancestor, {"a": "1\n"}, {**ancestor, "c": "1\n"})
    # The same path, or a file where the other side puts a directory.
    assert not merges_without_looking(ancestor, {**ancestor, "b": "1\n"}, {**ancestor, "b": "2\n"})
    assert not merges_without_looking(ancestor, {**ancestor, "e": "1\n"}, {**ancestor, "e/f": "1"})
    assert not merges_without_looking(ancestor, {**ancestor, "e/f/g": "1"}, {**ancestor, "e": "1"})


def test_a_verdict_from_the_paths_is_remembered_and_the_merge_still_gets_its_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The paths are looked at once per base and head, git is never asked for a clean pair,
    and merging that pull request afterwards builds the real merged tree."""
    import reconciler.sandbox.state as state_module
    from reconciler.sandbox import ForgejoSandbox

    looks: list[int] = []
    real = state_module.merges_without_looking

    def counted(*trees: Any) -> bool:
        looks.append(1)
        return real(*trees)

    monkeypatch.setattr(state_module, "merges_without_looking", counted)
    with ForgejoSandbox() as forge:
        owner = next(iter(forge.state.users))
        repo_name = f"{owner}/paths"
        forge.create_repo(repo_name)
        forge.push(repo_name, "task/1-x", files={"feature.txt": "new\n"}, message="Feature")
        forge.push(repo_name, "main", files={"other.txt": "moved on\n"}, message="Main moves")
        number = forge.open_pull(repo_name, "task/1-x", title="Feature")
        repo = forge.state.repos[repo_name]
        bare_runs: list[tuple[str, ...]] = []
        run = repo.bare.run
        monkeypatch.setattr(repo.bare, "run", lambda *a, **k: bare_runs.append(a) or run(*a, **k))
        issue = repo.issues[number]
        assert forge.state.is_mergeable(repo, issue) and forge.state.is_mergeable(repo, issue)
        assert looks == [1] and not [a for a in bare_runs if a[0] == "merge-tree"]
        forge.merge(repo_name, number)
        files = repo.git.tree(repo.git.branches["main"])
        assert files["feature.txt"] == "new\n" and files["other.txt"] == "moved on\n"
