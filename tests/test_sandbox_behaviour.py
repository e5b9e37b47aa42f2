"""The sandbox forge behaves as Forgejo does where clients depend on it.

Paging and its headers, the issue list filters, exclusive label scopes, pull requests in the
issue list, merging, combined commit status, comment edits, timestamps and error shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from reconciler.sandbox import ForgejoSandbox

if TYPE_CHECKING:
    # Imported for annotations only: importing the plugin module early defeats its loading.
    from tests.sandbox_fixtures import ManualClock

pytest_plugins = ("tests.sandbox_fixtures",)

DEMO = "fleet-admin/demo"
REPO = f"/repos/{DEMO}"
from tests.forgejo_data import EXAMPLES


def _issues(client: httpx.Client, count: int) -> None:
    for n in range(count):
        assert client.post(f"{REPO}/issues", json={"title": f"issue {n}"}).status_code == 201


def _numbers(answer: httpx.Response) -> list[int]:
    assert answer.status_code == 200, answer.text
    return [item["number"] for item in answer.json()]


def _label(client: httpx.Client, name: str, *, exclusive: bool = False) -> int:
    answer = client.post(
        f"{REPO}/labels", json={"name": name, "color": "ededed", "exclusive": exclusive}
    )
    assert answer.status_code == 201, answer.text
    label_id: int = answer.json()["id"]
    return label_id


def _label_names(client: httpx.Client, number: int) -> list[str]:
    return [x["name"] for x in client.get(f"{REPO}/issues/{number}/labels").json()]


# --- paging ----------------------------------------------------------------------------------


def test_link_header_matches_the_recorded_forgejo_format(forge_http: httpx.Client) -> None:
    """Page 3 of 4 carries next, last, first and prev links shaped like the recording."""
    _issues(forge_http, 7)
    answer = forge_http.get(
        f"{REPO}/issues", params={"limit": 2, "page": 3, "state": "all", "type": "issues"}
    )
    recorded = json.loads((EXAMPLES / "api-issues-list-page3.headers.json").read_text())
    expected = (
        recorded["headers"]["Link"]
        .replace("https://gitea.com/", "http://localhost:3000/")
        .replace("gitea/test_repo", DEMO)
    )
    assert answer.headers["Link"] == expected
    assert answer.headers["X-Total-Count"] == "7"
    assert answer.headers["Access-Control-Expose-Headers"] == "Link, X-Total-Count"
    assert _numbers(answer) == [3, 2]


def test_limit_zero_means_thirty_and_above_fifty_means_fifty(forge_http: httpx.Client) -> None:
    """``limit`` <= 0 falls back to 30 items, > 50 is clamped to 50, as Forgejo does."""
    _issues(forge_http, 55)
    assert len(forge_http.get(f"{REPO}/issues", params={"limit": 0}).json()) == 30
    assert len(forge_http.get(f"{REPO}/issues", params={"limit": 500}).json()) == 50


def test_empty_list_is_an_empty_array_with_zero_count(forge_http: httpx.Client) -> None:
    """An empty result is ``[]`` with ``X-Total-Count: 0`` and no Link."""
    answer = forge_http.get(f"{REPO}/pulls")
    assert answer.json() == []
    assert answer.headers["X-Total-Count"] == "0"
    assert "Link" not in answer.headers


def test_last_page_has_only_first_and_prev_links(forge_http: httpx.Client) -> None:
    """On the last page there is no next/last link."""
    _issues(forge_http, 3)
    link = forge_http.get(f"{REPO}/issues", params={"limit": 2, "page": 2}).headers["Link"]
    assert [part.split("rel=")[1] for part in link.split(",")] == ['"first"', '"prev"']


# --- issue list filters ---------------------------------------------------------------------


def test_labels_filter_requires_all_listed_labels(forge_http: httpx.Client) -> None:
    """``labels=a,b`` matches only issues carrying both, unlike the spec's "any" wording."""
    a, b = _label(forge_http, "a"), _label(forge_http, "b")
    forge_http.post(f"{REPO}/issues", json={"title": "both", "labels": [a, b]})
    forge_http.post(f"{REPO}/issues", json={"title": "only a", "labels": [a]})
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"labels": "a,b"})) == [1]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"labels": "a"})) == [2, 1]


def test_unknown_label_names_are_dropped_from_the_filter(forge_http: httpx.Client) -> None:
    """An unknown name is ignored; if no name is known the filter disappears entirely."""
    a = _label(forge_http, "a")
    forge_http.post(f"{REPO}/issues", json={"title": "labelled", "labels": [a]})
    forge_http.post(f"{REPO}/issues", json={"title": "plain"})
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"labels": "a,ghost"})) == [1]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"labels": "ghost"})) == [2, 1]


def test_since_and_before_compare_updated_at_inclusively(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """``since`` keeps updated_at >= since and ``before`` keeps updated_at <= before."""
    forge_http.post(f"{REPO}/issues", json={"title": "old"})
    middle = forge_clock.advance(60)
    forge_http.post(f"{REPO}/issues", json={"title": "new"})
    stamp = middle.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"since": stamp})) == [2]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"before": stamp})) == [2, 1]
    earlier = forge_clock.now.replace(second=0).isoformat()
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"before": earlier})) == [2, 1]


def test_updated_at_moves_on_labels_comments_and_state(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """Every change of an issue bumps its updated_at, so ``since`` polling sees it."""
    label = _label(forge_http, "a")
    forge_http.post(f"{REPO}/issues", json={"title": "t"})
    stamps = []
    changes: tuple[Callable[[], httpx.Response], ...] = (
        lambda: forge_http.post(f"{REPO}/issues/1/labels", json={"labels": [label]}),
        lambda: forge_http.post(f"{REPO}/issues/1/comments", json={"body": "c"}),
        lambda: forge_http.patch(f"{REPO}/issues/1", json={"state": "closed"}),
    )
    for change in changes:
        forge_clock.advance(10)
        change()
        stamps.append(forge_http.get(f"{REPO}/issues/1").json()["updated_at"])
    assert stamps == sorted(set(stamps))


def test_closing_sets_closed_at_and_reopening_clears_it(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """closed_at is the close time in RFC 3339 with zone; null once reopened."""
    forge_http.post(f"{REPO}/issues", json={"title": "t"})
    closed = forge_http.patch(f"{REPO}/issues/1", json={"state": "closed"}).json()
    assert closed["closed_at"] == forge_clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert forge_http.patch(f"{REPO}/issues/1", json={"state": "open"}).json()["closed_at"] is None


def test_closed_issues_are_listed_only_when_asked(forge_http: httpx.Client) -> None:
    """state defaults to open; closed and all select the others."""
    _issues(forge_http, 2)
    forge_http.patch(f"{REPO}/issues/1", json={"state": "closed"})
    assert _numbers(forge_http.get(f"{REPO}/issues")) == [2]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"state": "closed"})) == [1]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"state": "all"})) == [2, 1]


# --- exclusive scoped labels ----------------------------------------------------------------


def test_adding_an_exclusive_label_removes_others_of_its_scope(forge_http: httpx.Client) -> None:
    """status/doing replaces status/todo; labels outside the scope stay."""
    todo = _label(forge_http, "status/todo", exclusive=True)
    doing = _label(forge_http, "status/doing", exclusive=True)
    task = _label(forge_http, "fleet/task")
    forge_http.post(f"{REPO}/issues", json={"title": "t", "labels": [todo, task]})
    forge_http.post(f"{REPO}/issues/1/labels", json={"labels": [doing]})
    assert sorted(_label_names(forge_http, 1)) == ["fleet/task", "status/doing"]


def test_several_labels_of_one_scope_in_one_request_keep_the_last(
    forge_http: httpx.Client,
) -> None:
    """A replace listing status/todo then status/doing leaves only status/doing."""
    _label(forge_http, "status/todo", exclusive=True)
    _label(forge_http, "status/doing", exclusive=True)
    forge_http.post(f"{REPO}/issues", json={"title": "t"})
    forge_http.put(f"{REPO}/issues/1/labels", json={"labels": ["status/todo", "status/doing"]})
    assert _label_names(forge_http, 1) == ["status/doing"]


def test_non_exclusive_labels_with_a_slash_stand_together(forge_http: httpx.Client) -> None:
    """needs/a and needs/b are plain names when not exclusive."""
    a, b = _label(forge_http, "needs/a"), _label(forge_http, "needs/b")
    forge_http.post(f"{REPO}/issues", json={"title": "t", "labels": [a]})
    forge_http.post(f"{REPO}/issues/1/labels", json={"labels": [b]})
    assert sorted(_label_names(forge_http, 1)) == ["needs/a", "needs/b"]


def test_scope_is_the_text_before_the_last_slash(forge_http: httpx.Client) -> None:
    """a/b/c and a/b/d share scope a/b; a/x is another scope."""
    abc = _label(forge_http, "a/b/c", exclusive=True)
    abd = _label(forge_http, "a/b/d", exclusive=True)
    ax = _label(forge_http, "a/x", exclusive=True)
    forge_http.post(f"{REPO}/issues", json={"title": "t", "labels": [abc, ax]})
    forge_http.post(f"{REPO}/issues/1/labels", json={"labels": [abd]})
    assert sorted(_label_names(forge_http, 1)) == ["a/b/d", "a/x"]


def test_label_removed_by_name_or_id(forge_http: httpx.Client) -> None:
    """DELETE .../labels/{identifier} accepts the label's id or its name."""
    a, b = _label(forge_http, "fleet/retry"), _label(forge_http, "fleet/hold")
    forge_http.post(f"{REPO}/issues", json={"title": "t", "labels": [a, b]})
    assert forge_http.delete(f"{REPO}/issues/1/labels/fleet%2Fretry").status_code == 204
    assert forge_http.delete(f"{REPO}/issues/1/labels/{b}").status_code == 204
    assert _label_names(forge_http, 1) == []


# --- pull requests --------------------------------------------------------------------------


def _open_pull(forge: ForgejoSandbox, branch: str = "task/1-x") -> int:
    forge.push(DEMO, branch, files={"x.py": "print('x')\n"}, message="add x")
    return forge.open_pull(DEMO, branch, title="Add x")


def test_pull_requests_share_numbers_and_appear_in_the_issue_list(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """A PR takes the next issue number and is listed with a non-null pull_request."""
    _issues(forge_http, 1)
    number = _open_pull(forge)
    assert number == 2
    listed = {i["number"]: i["pull_request"] for i in forge_http.get(f"{REPO}/issues").json()}
    assert listed[1] is None
    assert listed[2]["merged"] is False
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"type": "issues"})) == [1]
    assert _numbers(forge_http.get(f"{REPO}/issues", params={"type": "pulls"})) == [2]


def test_merge_puts_the_commits_on_the_base_and_closes_the_pr(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """After a merge the base branch holds the head's files and the PR is merged and closed."""
    number = _open_pull(forge)
    head = forge_http.get(f"{REPO}/pulls/{number}").json()["head"]["sha"]
    assert forge_http.get(f"{REPO}/pulls/{number}/merge").status_code == 404
    assert forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 200
    pull = forge_http.get(f"{REPO}/pulls/{number}").json()
    assert (pull["merged"], pull["state"]) == (True, "closed")
    assert forge_http.get(f"{REPO}/pulls/{number}/merge").status_code == 204
    log = forge_http.get(f"{REPO}/commits", params={"sha": "main"}).json()
    assert log[0]["sha"] == pull["merge_commit_sha"]
    assert head in {c["sha"] for c in log}
    assert forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 405


def test_squash_merge_makes_one_commit_with_the_changes(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """A squash merge adds a single non-merge commit to the base."""
    number = _open_pull(forge)
    forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "squash"})
    newest = forge_http.get(f"{REPO}/commits", params={"sha": "main"}).json()[0]
    assert len(newest["parents"]) == 1
    assert newest["files"] == [{"filename": "x.py", "status": "added"}]


def test_pull_commits_and_files_describe_the_branch(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """/commits lists the branch's commits newest first; /files its changes with line counts."""
    number = _open_pull(forge)
    forge.push(DEMO, "task/1-x", files={"x.py": "print('y')\nprint('z')\n"}, message="change x")
    commits = forge_http.get(f"{REPO}/pulls/{number}/commits").json()
    assert [c["commit"]["message"] for c in commits] == ["change x\n", "add x\n"]
    files = forge_http.get(f"{REPO}/pulls/{number}/files").json()
    assert [(f["filename"], f["status"], f["additions"]) for f in files] == [("x.py", "added", 2)]


def test_pull_is_found_by_base_and_head_branch(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """GET /pulls/{base}/{head} finds the PR even when the head branch has a slash."""
    number = _open_pull(forge, "task/7-slashes")
    assert forge_http.get(f"{REPO}/pulls/main/task/7-slashes").json()["number"] == number


def test_pull_list_filters_by_head_and_base_branch(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """GET /pulls?head=&base= keeps only the PRs from that head branch into that base."""
    first = _open_pull(forge, "task/1-a")
    second = _open_pull(forge, "task/2-b")
    listed = forge_http.get(f"{REPO}/pulls", params={"state": "all", "head": "task/2-b"})
    assert _numbers(listed) == [second]
    assert listed.headers["X-Total-Count"] == "1"
    both = forge_http.get(f"{REPO}/pulls", params={"base": "main"})
    assert sorted(_numbers(both)) == sorted([first, second])
    assert _numbers(forge_http.get(f"{REPO}/pulls", params={"base": "other"})) == []
    assert _numbers(forge_http.get(f"{REPO}/pulls", params={"head": "task/9-none"})) == []


def test_author_cannot_approve_their_own_pull(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """Forgejo refuses a self-approval with 422; another user may approve."""
    number = _open_pull(forge)
    refused = forge_http.post(f"{REPO}/pulls/{number}/reviews", json={"event": "APPROVED"})
    assert refused.status_code == 422
    forge.create_user("reviewer")
    forge.review(DEMO, number, "APPROVED", author="reviewer")
    states = [r["state"] for r in forge_http.get(f"{REPO}/pulls/{number}/reviews").json()]
    assert states == ["APPROVED"]


# --- commit statuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reports", "combined"),
    [
        ([], ""),
        ([("ci", "success"), ("lint", "success")], "success"),
        ([("ci", "success"), ("lint", "pending")], "pending"),
        ([("ci", "success"), ("lint", "failure")], "failure"),
        ([("ci", "error"), ("lint", "failure")], "error"),
        ([("ci", "failure"), ("ci", "success")], "success"),
    ],
)
def test_combined_status_is_the_worst_latest_status_per_context(
    forge_http: httpx.Client, reports: list[tuple[str, str]], combined: str
) -> None:
    """Only the newest status of each context counts; none at all is Forgejo's empty answer
    (the zero value of its CombinedStatus: state "")."""
    for context, state in reports:
        answer = forge_http.post(f"{REPO}/statuses/main", json={"context": context, "state": state})
        assert answer.status_code == 201, answer.text
    status = forge_http.get(f"{REPO}/commits/main/status").json()
    assert status["state"] == combined
    assert status["total_count"] == len({context for context, _ in reports})


# --- comments -------------------------------------------------------------------------------


def test_comment_edit_changes_body_and_timestamps(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """Editing a comment keeps its id, changes its body and bumps comment and issue."""
    forge_http.post(f"{REPO}/issues", json={"title": "t"})
    created = forge_http.post(f"{REPO}/issues/1/comments", json={"body": "v1"}).json()
    forge_clock.advance(30)
    edited = forge_http.patch(f"{REPO}/issues/comments/{created['id']}", json={"body": "v2"}).json()
    assert (edited["id"], edited["body"]) == (created["id"], "v2")
    assert edited["updated_at"] > created["updated_at"]
    assert forge_http.get(f"{REPO}/issues/1").json()["updated_at"] == edited["updated_at"]


def test_comment_list_since_filters_on_updated_at(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """``since`` on the comment list keeps comments updated at or after it."""
    forge_http.post(f"{REPO}/issues", json={"title": "t"})
    forge_http.post(f"{REPO}/issues/1/comments", json={"body": "old"})
    later = forge_clock.advance(60).strftime("%Y-%m-%dT%H:%M:%SZ")
    forge_http.post(f"{REPO}/issues/1/comments", json={"body": "new"})
    bodies = [
        c["body"]
        for c in forge_http.get(f"{REPO}/issues/1/comments", params={"since": later}).json()
    ]
    assert bodies == ["new"]


def test_only_poster_or_writer_may_edit_a_comment(
    forge: ForgejoSandbox, forge_as: Callable[[str], httpx.Client]
) -> None:
    """Another reader's edit is refused with 403."""
    forge.create_issue(DEMO, "t")
    comment_id = forge.comment(DEMO, 1, "mine")
    stranger = forge_as(forge.create_user("stranger"))
    answer = stranger.patch(f"{REPO}/issues/comments/{comment_id}", json={"body": "x"})
    assert answer.status_code == 403


# --- access and errors ----------------------------------------------------------------------


def test_permission_reports_forgejo_access_mode_names(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """The owner reads "owner", a site admin "admin", a collaborator its grant, others "read"."""
    forge.create_user("root", admin=True)
    forge.create_user("dev")
    forge.create_user("guest")
    forge_http.put(f"{REPO}/collaborators/dev", json={"permission": "write"})

    def permission(login: str) -> Any:
        return forge_http.get(f"{REPO}/collaborators/{login}/permission").json()["permission"]

    assert [permission(u) for u in ("fleet-admin", "root", "dev", "guest")] == [
        "owner",
        "admin",
        "write",
        "read",
    ]


def test_private_repo_is_a_404_for_outsiders(
    forge: ForgejoSandbox, forge_as: Callable[[str], httpx.Client]
) -> None:
    """A private repository is hidden (404), not forbidden, from users without access."""
    forge.create_repo("fleet-admin/secret", private=True)
    outsider = forge_as(forge.create_user("outsider"))
    assert outsider.get("/repos/fleet-admin/secret").status_code == 404


def test_unknown_route_answers_json_404(forge_http: httpx.Client) -> None:
    """A path the API does not have answers 404 in Forgejo's JSON shape, not HTML."""
    answer = forge_http.get("/repos/fleet-admin/demo/wiki/pages")
    assert answer.status_code == 404
    assert answer.json()["message"] == "The target couldn't be found."


def test_malformed_json_body_is_a_422(forge_http: httpx.Client) -> None:
    """A body that is not a JSON object is refused with 422."""
    answer = forge_http.post(
        f"{REPO}/issues", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422


def test_push_helper_creates_branch_from_base(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """push() on a new branch starts from ``base`` and returns the new head sha."""
    forge.push(DEMO, "dev", files={"a.txt": "a\n"}, message="a")
    sha = forge.push(DEMO, "feature", files={"b.txt": "b\n"}, message="b", base="dev")
    branch = forge_http.get(f"{REPO}/branches/feature").json()
    assert branch["commit"]["id"] == sha
    log = forge_http.get(f"{REPO}/commits", params={"sha": "feature"}).json()
    assert [c["commit"]["message"] for c in log] == ["b\n", "a\n", "Initial commit\n"]


def test_merging_a_pull_request_closes_the_issues_its_text_closes(forge: ForgejoSandbox) -> None:
    """As Forgejo: "Closes #N" (and fixes/resolves, any case, "owner/repo#N" too) in the merged
    pull request's title or body closes those issues; one with an open dependency stays open
    and the merge still succeeds; an issue only mentioned stays open."""
    closed = forge.create_issue(DEMO, "closed by the merge")
    fixed = forge.create_issue(DEMO, "fixed by the merge")
    blocked = forge.create_issue(DEMO, "has an open dependency")
    blocker = forge.create_issue(DEMO, "the open dependency")
    mentioned = forge.create_issue(DEMO, "only mentioned")
    forge.add_dependency(DEMO, blocked, on=blocker)
    forge.push(DEMO, "task/9-x", files={"x.py": "print('x')\n"}, message="add x")
    number = forge.open_pull(
        DEMO,
        "task/9-x",
        title=f"Add x (fixes: {DEMO}#{fixed})",
        body=f"Closes #{closed}\nresolves #{blocked}\nSee #{mentioned}.",
    )
    forge.merge(DEMO, number)
    with forge.state.lock:
        repo = next(iter(forge.state.repos.values()))
        state = {n: repo.issues[n].state for n in (closed, fixed, blocked, blocker, mentioned)}
    assert state == {
        closed: "closed",
        fixed: "closed",
        blocked: "open",
        blocker: "open",
        mentioned: "open",
    }
