"""The sandbox forge as a git server: clone, push and fetch over smart HTTP, as agents use it.

A pushed branch, its commits and files show in the REST API and fire the webhooks a helper's
push fires; merges through the API land in the bare repository; credentials work as Forgejo's
(login + token, or the token as user name) and pushes need write access.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import git
import httpx
import pytest

from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO, GIT_AUTHOR, in_process_client

if TYPE_CHECKING:
    from tests.sandbox_fixtures import WebhookReceiver

pytest_plugins = ("tests.sandbox_fixtures",)

REPO = f"/repos/{DEMO_REPO}"
BRANCH = "task/7-add-greeting"


def run_git(*args: str, cwd: Path | None = None) -> str:
    """Run git; fail the test with git's own message when it fails."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def refused_git(*args: str, cwd: Path | None = None) -> str:
    """Run git that must fail; returns its error output."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0, f"git {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr


def commit_file(worktree: Path, name: str, content: str, message: str) -> str:
    """Write a file in the worktree, commit it and return the new sha."""
    (worktree / name).write_text(content)
    run_git("add", name, cwd=worktree)
    run_git("commit", "-q", "-m", message, cwd=worktree)
    return run_git("rev-parse", "HEAD", cwd=worktree)


@pytest.fixture
def forge(served_forge: ForgejoSandbox, isolated_git: None) -> ForgejoSandbox:
    """A served sandbox, with git isolated from the machine's configuration."""
    return served_forge


@pytest.fixture
def api(forge: ForgejoSandbox) -> Iterator[httpx.Client]:
    """An in-process REST client on the served sandbox, as the admin."""
    with in_process_client(forge, forge.admin_token) as client:
        yield client


@pytest.fixture
def clone(forge: ForgejoSandbox, tmp_path: Path) -> Path:
    """A clone of the demo repository made with the admin's token."""
    target = tmp_path / "clone"
    run_git("clone", "-q", forge.clone_url(DEMO_REPO, token=forge.admin_token), str(target))
    return target


@pytest.fixture
def worktree(clone: Path, tmp_path: Path) -> Path:
    """A worktree of the clone on a new task branch started from main."""
    target = tmp_path / "worktree"
    run_git("worktree", "add", "-q", "-b", BRANCH, str(target), "origin/main", cwd=clone)
    return target


def hook_on(api: httpx.Client, url: str, events: list[str]) -> None:
    """Subscribe ``url`` to ``events`` of the demo repository."""
    answer = api.post(
        f"{REPO}/hooks",
        json={
            "type": "forgejo",
            "config": {"url": url, "content_type": "json"},
            "events": events,
            "active": True,
        },
    )
    assert answer.status_code == 201, answer.text


def delivered(forge: ForgejoSandbox) -> list[tuple[str, dict[str, Any]]]:
    """(event type, payload) of every delivery so far, once all were sent."""
    forge.flush_webhooks()
    return [(d.event_type, d.json()) for d in forge.deliveries]


def open_pull(api: httpx.Client, head: str = BRANCH) -> int:
    """Open a pull request from ``head`` into main through the API."""
    answer = api.post(f"{REPO}/pulls", json={"head": head, "base": "main", "title": "Greet"})
    assert answer.status_code == 201, answer.text
    number: int = answer.json()["number"]
    return number


# --- clone -----------------------------------------------------------------------------------


def test_clone_with_a_token_checks_out_the_default_branch(
    forge: ForgejoSandbox, clone: Path
) -> None:
    """A clone over HTTP with login and token holds main's initial commit and README."""
    assert run_git("branch", "--show-current", cwd=clone) == "main"
    assert (clone / "README.md").read_text().startswith("# demo")
    with forge.state.lock:
        main = forge.state.repos[DEMO_REPO].git.branches["main"]
    assert run_git("rev-parse", "HEAD", cwd=clone) == main


def test_token_as_user_name_authenticates_like_forgejo(
    forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """``http://TOKEN@host/owner/repo.git`` clones a private repository."""
    forge.create_repo("fleet-admin/secret", private=True)
    scheme, _, rest = forge.url.partition("://")
    url = f"{scheme}://{forge.admin_token}@{rest}/fleet-admin/secret.git"
    run_git("clone", "-q", url, str(tmp_path / "secret"))
    assert (tmp_path / "secret" / "README.md").exists()


def test_token_in_an_authorization_header_authenticates(
    forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """``http.extraHeader=Authorization: token ...`` reaches a private repository."""
    forge.create_repo("fleet-admin/secret", private=True)
    header = f"http.extraHeader=Authorization: token {forge.admin_token}"
    target = tmp_path / "secret"
    run_git("-c", header, "clone", "-q", forge.clone_url("fleet-admin/secret"), str(target))
    assert (target / "README.md").exists()


def test_public_repo_clones_anonymously_and_private_one_asks_for_credentials(
    forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Reading a public repository needs no credentials; a private one answers 401."""
    run_git("clone", "-q", forge.clone_url(DEMO_REPO), str(tmp_path / "public"))
    forge.create_repo("fleet-admin/secret", private=True)
    error = refused_git("clone", forge.clone_url("fleet-admin/secret"), str(tmp_path / "no"))
    assert "could not read Username" in error
    answer = httpx.get(f"{forge.url}/fleet-admin/secret.git/info/refs?service=git-upload-pack")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic")


def test_clone_url_of_the_rest_answer_is_the_served_git_url(
    forge: ForgejoSandbox, api: httpx.Client
) -> None:
    """``clone_url`` in Forgejo's repository shape is ``{ROOT_URL}{owner}/{repo}.git``."""
    shown = api.get(REPO).json()["clone_url"]
    assert shown == forge.clone_url(DEMO_REPO) == f"{forge.url}/{DEMO_REPO}.git"


# --- push ------------------------------------------------------------------------------------


def test_pushed_branch_and_commit_appear_in_the_branch_list(
    api: httpx.Client, worktree: Path
) -> None:
    """After ``git push`` GET /branches lists the task branch at the pushed commit."""
    sha = commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    branches = {b["name"]: b["commit"] for b in api.get(f"{REPO}/branches").json()}
    assert set(branches) == {"main", BRANCH}
    assert branches[BRANCH]["id"] == sha
    assert branches[BRANCH]["message"] == "Add a greeting\n"
    assert branches[BRANCH]["added"] == ["greeting.txt"]


def test_git_push_fires_the_push_webhook_with_the_new_commit(
    forge: ForgejoSandbox,
    api: httpx.Client,
    worktree: Path,
    webhook_receiver: WebhookReceiver,
) -> None:
    """The push webhook names the branch, ZERO before, the pushed sha after and its message."""
    hook_on(api, webhook_receiver.url, ["push"])
    sha = commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    [(event, payload)] = delivered(forge)
    assert event == "push"
    assert (payload["ref"], payload["before"], payload["after"]) == (
        f"refs/heads/{BRANCH}",
        "0" * 40,
        sha,
    )
    assert [c["message"] for c in payload["commits"]] == ["Add a greeting\n"]
    assert payload["head_commit"]["author"]["email"] == GIT_AUTHOR[1]
    assert payload["pusher"]["login"] == "fleet-admin"


def test_pull_request_of_a_pushed_branch_shows_its_commits_and_files(
    api: httpx.Client, worktree: Path
) -> None:
    """pulls/{n}/commits and /files show the real commit and the file's line counts."""
    (worktree / "README.md").write_text("# demo\n\nGreets people.\n")
    sha = commit_file(worktree, "greeting.txt", "hello\nworld\nagain\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    number = open_pull(api)
    commits = api.get(f"{REPO}/pulls/{number}/commits").json()
    assert [(c["sha"], c["commit"]["message"]) for c in commits] == [(sha, "Add a greeting\n")]
    assert commits[0]["commit"]["author"]["name"] == GIT_AUTHOR[0]
    files = api.get(f"{REPO}/pulls/{number}/files").json()
    # Only greeting.txt: README.md was changed in the worktree but not committed.
    assert [(f["filename"], f["status"], f["additions"], f["deletions"]) for f in files] == [
        ("greeting.txt", "added", 3, 0)
    ]
    assert api.get(f"{REPO}/pulls/{number}").json()["head"]["sha"] == sha


def test_second_push_synchronizes_the_pull_request(
    forge: ForgejoSandbox,
    api: httpx.Client,
    worktree: Path,
    webhook_receiver: WebhookReceiver,
) -> None:
    """Pushing again to a PR's head fires push and synchronized, and the PR lists both commits."""
    first = commit_file(worktree, "greeting.txt", "hello\nworld\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    number = open_pull(api)
    hook_on(api, webhook_receiver.url, ["push", "pull_request"])
    second = commit_file(worktree, "greeting.txt", "hello\nthere\n", "Greet warmly")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    events = delivered(forge)
    assert [(event, body.get("action", "")) for event, body in events] == [
        ("push", ""),
        ("pull_request_sync", "synchronized"),
    ]
    push, sync = events[0][1], events[1][1]
    assert (push["before"], push["after"]) == (first, second)
    assert [c["id"] for c in push["commits"]] == [second]
    assert sync["pull_request"]["head"]["sha"] == second
    commits = api.get(f"{REPO}/pulls/{number}/commits").json()
    assert [c["sha"] for c in commits] == [second, first]
    [changed] = api.get(f"{REPO}/pulls/{number}/files").json()
    assert (changed["additions"], changed["deletions"]) == (2, 0)
    status = api.get(f"{REPO}/commits/{second}/status").json()
    # No statuses yet: Forgejo's empty answer (the zero value of its CombinedStatus).
    assert (status["sha"], status["state"], status["total_count"]) == ("", "", 0)


def test_merge_through_the_api_is_fetched_as_a_merge_commit_on_main(
    forge: ForgejoSandbox, api: httpx.Client, clone: Path, worktree: Path
) -> None:
    """POST /pulls/{n}/merge moves main in the bare repository: fetch sees the merge."""
    head = commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    forge.push(DEMO_REPO, "main", files={"NOTES.md": "notes\n"}, message="Notes on main")
    number = open_pull(api)
    assert api.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 200
    merge_sha = api.get(f"{REPO}/pulls/{number}").json()["merge_commit_sha"]
    run_git("fetch", "-q", "origin", cwd=clone)
    assert run_git("rev-parse", "origin/main", cwd=clone) == merge_sha
    parents = run_git("log", "-1", "--format=%P", "origin/main", cwd=clone).split()
    assert parents[1] == head
    assert run_git("show", "origin/main:greeting.txt", cwd=clone) == "hello"
    assert run_git("show", "origin/main:NOTES.md", cwd=clone) == "notes"
    assert api.get(f"{REPO}/commits", params={"sha": "main"}).json()[0]["sha"] == merge_sha


def test_fast_forward_merge_moves_main_to_the_pushed_head(
    forge: ForgejoSandbox, api: httpx.Client, clone: Path, worktree: Path
) -> None:
    """The fast-forward-only style puts the branch's own commit on main, no merge commit."""
    head = commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    number = open_pull(api)
    answer = api.post(f"{REPO}/pulls/{number}/merge", json={"Do": "fast-forward-only"})
    assert answer.status_code == 200
    run_git("fetch", "-q", "origin", cwd=clone)
    assert run_git("rev-parse", "origin/main", cwd=clone) == head


def test_conflicting_merge_is_refused_and_leaves_main_alone(
    forge: ForgejoSandbox, api: httpx.Client, worktree: Path
) -> None:
    """A merge whose two sides changed the same line is not mergeable: Forgejo shows
    ``mergeable: false`` and answers 405 (ErrNotMergeableState), and nothing moves."""
    commit_file(worktree, "README.md", "# ours\n", "Retitle")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    main = forge.push(DEMO_REPO, "main", files={"README.md": "# theirs\n"}, message="Retitle")
    number = open_pull(api)
    assert api.get(f"{REPO}/pulls/{number}").json()["mergeable"] is False
    answer = api.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"})
    assert answer.status_code == 405
    assert "mergeable" in answer.json()["message"]
    assert run_git("rev-parse", "main", cwd=forge.git_path(DEMO_REPO)) == main


def test_merge_status_is_kept_until_the_base_or_head_moves(
    forge: ForgejoSandbox, api: httpx.Client, worktree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like Forgejo's stored merge status, ``mergeable`` is worked out once per base and head
    commit: reading the PR again merges nothing, and a new base commit that conflicts makes
    it unmergeable at once."""
    commit_file(worktree, "README.md", "# ours\n", "Retitle")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    number = open_pull(api)
    assert api.get(f"{REPO}/pulls/{number}").json()["mergeable"] is True
    bare = forge.state.repos[DEMO_REPO].bare
    merges: list[tuple[str, ...]] = []
    run = bare.run

    def counted(*args: str, **kw: Any) -> Any:
        merges.append(args)
        return run(*args, **kw)

    monkeypatch.setattr(bare, "run", counted)
    for _ in range(3):
        assert api.get(f"{REPO}/pulls/{number}").json()["mergeable"] is True
    assert api.get(f"{REPO}/pulls").json()[0]["mergeable"] is True
    assert [a for a in merges if a[0] == "merge-tree"] == []
    forge.push(DEMO_REPO, "main", files={"README.md": "# theirs\n"}, message="Retitle")
    assert api.get(f"{REPO}/pulls/{number}").json()["mergeable"] is False
    assert api.get(f"{REPO}/pulls/{number}").json()["mergeable"] is False
    assert len([a for a in merges if a[0] == "merge-tree"]) == 1
    assert api.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 405


def test_helper_push_is_a_real_commit_that_git_fetches(forge: ForgejoSandbox, clone: Path) -> None:
    """push() writes a commit git can fetch, with its files, and the repository stays valid."""
    sha = forge.push(
        DEMO_REPO, "task/8-tool", files={"bin/tool.sh": "#!/bin/sh\necho hi\n"}, message="Tool"
    )
    forge.push(DEMO_REPO, "task/8-tool", files={"README.md": None}, message="Drop README")
    run_git("fetch", "-q", "origin", cwd=clone)
    assert run_git("log", "--format=%H %s", "origin/task/8-tool", cwd=clone).splitlines()[1:3] == [
        f"{sha} Tool",
        f"{run_git('rev-parse', 'origin/main', cwd=clone)} Initial commit",
    ]
    files = run_git("ls-tree", "-r", "--name-only", "origin/task/8-tool", cwd=clone)
    assert files.splitlines() == ["bin/tool.sh"]
    run_git("fsck", "--strict", cwd=forge.git_path(DEMO_REPO))


def test_deleting_a_pushed_branch_closes_its_pull_request(
    api: httpx.Client, worktree: Path
) -> None:
    """``git push --delete`` removes the branch; the open PR from it is closed, not merged."""
    commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    number = open_pull(api)
    run_git("push", "-q", "origin", "--delete", BRANCH, cwd=worktree)
    assert [b["name"] for b in api.get(f"{REPO}/branches").json()] == ["main"]
    pull = api.get(f"{REPO}/pulls/{number}").json()
    assert (pull["state"], pull["merged"]) == ("closed", False)


def test_first_push_to_an_empty_repository_becomes_its_default_branch(
    forge: ForgejoSandbox, api: httpx.Client, tmp_path: Path
) -> None:
    """An empty repository takes the first branch pushed to it as its default branch."""
    forge.create_repo("fleet-admin/empty", auto_init=False)
    local = tmp_path / "local"
    run_git("init", "-q", "-b", "trunk", str(local))
    commit_file(local, "a.txt", "a\n", "First")
    run_git(
        "push",
        "-q",
        forge.clone_url("fleet-admin/empty", token=forge.admin_token),
        "trunk",
        cwd=local,
    )
    shown = api.get("/repos/fleet-admin/empty").json()
    assert (shown["empty"], shown["default_branch"]) == (False, "trunk")


def test_commit_author_is_the_user_with_that_email(
    forge: ForgejoSandbox, api: httpx.Client, worktree: Path
) -> None:
    """A commit is attributed to the user whose email it carries; others have no user."""
    forge.create_user("alice")
    commit_file(worktree, "a.txt", "a\n", "By the agent")
    (worktree / "b.txt").write_text("b\n")
    run_git("add", "b.txt", cwd=worktree)
    run_git(
        "commit", "-q", "--author=Alice <alice@noreply.localhost>", "-m", "By Alice", cwd=worktree
    )
    run_git("push", "-q", "origin", BRANCH, cwd=worktree)
    log = api.get(f"{REPO}/commits", params={"sha": BRANCH}).json()
    assert [(c["commit"]["message"], c["author"] and c["author"]["login"]) for c in log[:2]] == [
        ("By Alice\n", "alice"),
        ("By the agent\n", None),
    ]


# --- refusals --------------------------------------------------------------------------------


def test_push_without_credentials_is_refused_with_401(
    forge: ForgejoSandbox, api: httpx.Client, worktree: Path
) -> None:
    """An anonymous push is asked for credentials (401) and moves nothing."""
    commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    error = refused_git("push", forge.clone_url(DEMO_REPO), BRANCH, cwd=worktree)
    assert "could not read Username" in error
    advertised = httpx.get(f"{forge.url}/{DEMO_REPO}.git/info/refs?service=git-receive-pack")
    assert advertised.status_code == 401
    assert [b["name"] for b in api.get(f"{REPO}/branches").json()] == ["main"]


def test_wrong_token_is_refused_with_401(forge: ForgejoSandbox, worktree: Path) -> None:
    """A token the forge never issued fails authentication, even where none is needed."""
    scheme, _, rest = forge.url.partition("://")
    url = f"{scheme}://fleet-admin:{'0' * 40}@{rest}/{DEMO_REPO}.git"
    assert "Authentication failed" in refused_git("push", url, f"HEAD:{BRANCH}", cwd=worktree)
    answer = httpx.get(
        f"{forge.url}/{DEMO_REPO}.git/info/refs?service=git-upload-pack",
        auth=("fleet-admin", "0" * 40),
    )
    assert answer.status_code == 401


def test_read_only_user_push_is_refused_with_403(
    forge: ForgejoSandbox, api: httpx.Client, worktree: Path
) -> None:
    """A user who may read but not write gets 403 on push, and the branch does not appear."""
    reader = forge.create_user("reader")
    commit_file(worktree, "greeting.txt", "hello\n", "Add a greeting")
    url = forge.clone_url(DEMO_REPO, token=reader)
    error = refused_git("push", url, BRANCH, cwd=worktree)
    assert "403" in error
    assert [b["name"] for b in api.get(f"{REPO}/branches").json()] == ["main"]
    api.put(f"{REPO}/collaborators/reader", json={"permission": "write"})
    run_git("push", "-q", url, BRANCH, cwd=worktree)
    assert BRANCH in [b["name"] for b in api.get(f"{REPO}/branches").json()]


# --- the contents API ------------------------------------------------------------------------


def create_file(api: httpx.Client, path: str, text: str, **options: Any) -> httpx.Response:
    """POST /contents/{path} with ``text`` base64-encoded and the other options as given."""
    body = {"content": base64.b64encode(text.encode()).decode(), **options}
    return api.post(f"{REPO}/contents/{path}", json=body)


def test_created_file_on_a_new_branch_is_a_pushed_commit_git_fetches(
    forge: ForgejoSandbox,
    api: httpx.Client,
    clone: Path,
    webhook_receiver: WebhookReceiver,
) -> None:
    """POST /contents with new_branch: a real commit on a new branch from main, announced by a
    push webhook, openable as a pull request showing the file, and fetched by git."""
    hook_on(api, webhook_receiver.url, ["push"])
    main = api.get(f"{REPO}/branches/main").json()["commit"]["id"]
    answer = create_file(api, "docs/hello.md", "hello\nworld\n", new_branch=BRANCH)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    sha = body["commit"]["sha"]
    assert body["commit"]["message"] == "Add docs/hello.md\n"
    assert [p["sha"] for p in body["commit"]["parents"]] == [main]
    assert body["commit"]["author"]["email"] == "fleet-admin@noreply.localhost"
    assert body["commit"]["html_url"].endswith(f"/{DEMO_REPO}/commit/{sha}")
    content = body["content"]
    assert (content["path"], content["name"], content["type"]) == (
        "docs/hello.md",
        "hello.md",
        "file",
    )
    assert base64.b64decode(content["content"]) == b"hello\nworld\n"
    assert content["last_commit_sha"] == sha
    assert body["verification"]["verified"] is False
    # The branch exists at the commit, and the push webhook carries it.
    assert api.get(f"{REPO}/branches/{BRANCH}").json()["commit"]["id"] == sha
    [(event, payload)] = delivered(forge)
    assert event == "push"
    assert (payload["ref"], payload["before"], payload["after"]) == (
        f"refs/heads/{BRANCH}",
        "0" * 40,
        sha,
    )
    assert [c["id"] for c in payload["commits"]] == [sha]
    assert payload["commits"][0]["added"] == ["docs/hello.md"]
    number = open_pull(api)
    files = api.get(f"{REPO}/pulls/{number}/files").json()
    assert [(f["filename"], f["status"], f["additions"]) for f in files] == [
        ("docs/hello.md", "added", 2)
    ]
    run_git("fetch", "-q", "origin", cwd=clone)
    assert run_git("rev-parse", f"origin/{BRANCH}", cwd=clone) == sha
    assert run_git("show", f"{sha}:docs/hello.md", cwd=clone) == "hello\nworld"
    assert run_git("rev-parse", f"{sha}:docs/hello.md", cwd=clone) == content["sha"]
    assert run_git("rev-parse", f"{sha}^{{tree}}", cwd=clone) == body["commit"]["tree"]["sha"]
    run_git("fsck", "--strict", cwd=forge.git_path(DEMO_REPO))
    # GET /contents reads it back at the branch; a missing file is 404.
    got = api.get(f"{REPO}/contents/docs/hello.md", params={"ref": BRANCH})
    assert got.status_code == 200, got.text
    assert (got.json()["sha"], got.json()["last_commit_sha"]) == (content["sha"], sha)
    assert api.get(f"{REPO}/contents/docs/hello.md").status_code == 404
    listing = api.get(f"{REPO}/contents/docs", params={"ref": BRANCH})
    assert listing.status_code == 422
    assert "does not implement" in listing.json()["message"]


def test_created_file_on_a_pull_request_head_synchronizes_it(
    forge: ForgejoSandbox, api: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    """A file created on an open pull request's head branch fires push and synchronized; the
    message, author and committer given are the commit's."""
    first = forge.push(DEMO_REPO, BRANCH, files={"a.txt": "a\n"}, message="A")
    number = open_pull(api)
    hook_on(api, webhook_receiver.url, ["push", "pull_request"])
    answer = create_file(
        api,
        "b.txt",
        "b\n",
        branch=BRANCH,
        message="Add b",
        author={"name": "Ada", "email": "ada@example.com"},
        committer={"name": "Bot", "email": "bot@example.com"},
    )
    assert answer.status_code == 201, answer.text
    commit = answer.json()["commit"]
    assert commit["message"] == "Add b\n"
    assert commit["author"]["email"] == "ada@example.com"
    assert (commit["committer"]["name"], commit["committer"]["email"]) == ("Bot", "bot@example.com")
    events = delivered(forge)
    assert [(event, body.get("action", "")) for event, body in events] == [
        ("push", ""),
        ("pull_request_sync", "synchronized"),
    ]
    assert (events[0][1]["before"], events[0][1]["after"]) == (first, commit["sha"])
    assert events[1][1]["pull_request"]["head"]["sha"] == commit["sha"]
    # One identity given stands for both; a nameless one keeps its email, and git accepts it.
    alone = create_file(api, "c.txt", "c\n", branch=BRANCH, committer={"email": "x@example.com"})
    assert alone.status_code == 201, alone.text
    who = alone.json()["commit"]
    assert who["author"]["email"] == who["committer"]["email"] == "x@example.com"
    run_git("fsck", "--strict", cwd=forge.git_path(DEMO_REPO))
    assert [f["filename"] for f in api.get(f"{REPO}/pulls/{number}/files").json()] == [
        "a.txt",
        "b.txt",
        "c.txt",
    ]


def test_create_file_refusals_are_forgejos(forge: ForgejoSandbox, api: httpx.Client) -> None:
    """Existing file, missing base branch, existing new branch, bad base64, invalid branch name
    answer 422/404 with Forgejo's message and change nothing; a reader gets 403."""
    forge.push(DEMO_REPO, "taken", files={"docs/t.txt": "t\n"}, message="T")
    before = {b["name"]: b["commit"]["id"] for b in api.get(f"{REPO}/branches").json()}
    refusals = [
        (
            create_file(api, "README.md", "x"),
            422,
            "repository file already exists [path: README.md]",
        ),
        (create_file(api, "new.txt", "x", branch="nope"), 404, "The target couldn't be found."),
        (
            create_file(api, "new.txt", "x", new_branch="taken"),
            422,
            "branch already exists [name: taken]",
        ),
        (
            api.post(f"{REPO}/contents/new.txt", json={"content": "!!not base64"}),
            422,
            "illegal base64 data",
        ),
        (create_file(api, "new.txt", "x", new_branch="bad..name"), 422, "invalid branch name"),
        (create_file(api, "README.md/inner.txt", "x"), 422, "a file exists where"),
        (create_file(api, "docs", "x", branch="taken"), 422, "a directory exists where"),
    ]
    for answer, status, message in refusals:
        assert answer.status_code == status, answer.text
        assert message in answer.json()["message"], answer.text
    missing = create_file(api, "new.txt", "x", branch="nope")
    assert missing.json()["errors"] == ["branch does not exist [name: nope]"]
    reader = forge.create_user("reader")
    with in_process_client(forge, reader) as as_reader:
        refused = create_file(as_reader, "new.txt", "x", new_branch="by-reader")
    assert refused.status_code == 403, refused.text
    after = {b["name"]: b["commit"]["id"] for b in api.get(f"{REPO}/branches").json()}
    assert after == before
    # force_overwrite_new_branch moves an existing branch onto a commit made from the base.
    forced = create_file(api, "new.txt", "x", new_branch="taken", force_overwrite_new_branch=True)
    assert forced.status_code == 201, forced.text
    assert [p["sha"] for p in forced.json()["commit"]["parents"]] == [before["main"]]
    assert (
        api.get(f"{REPO}/branches/taken").json()["commit"]["id"] == forced.json()["commit"]["sha"]
    )
    # Without content the file is empty; base64 broken over lines is read as Go reads it.
    empty = api.post(f"{REPO}/contents/empty.txt", json={"branch": "taken"})
    assert empty.status_code == 201, empty.text
    assert empty.json()["content"]["size"] == 0
    wrapped = api.post(f"{REPO}/contents/wrapped.txt", json={"content": "aGVs\nbG8K"})
    assert wrapped.status_code == 201, wrapped.text
    assert base64.b64decode(wrapped.json()["content"]["content"]) == b"hello\n"


# --- gitpython -------------------------------------------------------------------------------


def test_gitpython_clone_worktree_commit_and_push(
    forge: ForgejoSandbox, api: httpx.Client, tmp_path: Path
) -> None:
    """Repo.clone_from, ``git worktree add`` on a task branch, commit and push, via gitpython."""
    cache = git.Repo.clone_from(
        forge.clone_url(DEMO_REPO, token=forge.admin_token), tmp_path / "cache"
    )
    cache.git.worktree("add", "-b", BRANCH, str(tmp_path / "task"), "origin/main")
    task = git.Repo(tmp_path / "task")
    (tmp_path / "task" / "greeting.txt").write_text("hello\n")
    task.index.add(["greeting.txt"])
    made = task.index.commit("Add a greeting")
    [pushed] = task.remote("origin").push(f"{BRANCH}:{BRANCH}")
    assert not pushed.flags & pushed.ERROR, pushed.summary
    assert api.get(f"{REPO}/branches/{BRANCH}").json()["commit"]["id"] == made.hexsha
    number = open_pull(api)
    [changed] = api.get(f"{REPO}/pulls/{number}/files").json()
    assert (changed["filename"], changed["additions"]) == ("greeting.txt", 1)


# --- lifetime --------------------------------------------------------------------------------


def test_stop_removes_the_bare_repositories(forge_clock: Any) -> None:
    """The repositories live in a temporary directory that stop() removes."""
    sandbox = ForgejoSandbox(clock=forge_clock)
    sandbox.create_repo(DEMO_REPO)
    bare = sandbox.git_path(DEMO_REPO)
    assert (bare / "HEAD").read_text() == "ref: refs/heads/main\n"
    sandbox.stop()
    assert not bare.exists()
    with pytest.raises(RuntimeError, match="stopped"):
        sandbox.push(DEMO_REPO, "late", files={"a": "a"}, message="too late")
