"""Forgejo edges the in-memory Forgejo and the gateway must get right (issue 11, findings 8, 9).

Each expectation is what Forgejo's source does (``routers/api/v1/repo/pull.go`` MergePullRequest
and ``services/pull/check.go`` CheckPullMergeable; ``services/convert/pull.go``
ToAPIPullRequest; ``routers/api/v1/repo/status.go`` GetCombinedCommitStatusByRef); the shapes
themselves are checked against the OpenAPI document by ``test_sandbox_spec.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import PullRequest
from reconciler.sandbox import ForgejoSandbox

pytest_plugins = ("tests.sandbox_fixtures",)

DEMO = "fleet-admin/demo"
REPO = f"/repos/{DEMO}"
BRANCH = "task/7-3f9a1c2b-widgets"


def _pull(client: httpx.Client, head: str = BRANCH) -> int:
    answer = client.post(f"{REPO}/pulls", json={"head": head, "base": "main", "title": "Widgets"})
    assert answer.status_code == 201, answer.text
    number: int = answer.json()["number"]
    return number


@pytest.fixture
def gateway(forge: ForgejoSandbox) -> Iterator[ForgejoGateway]:
    with ForgejoGateway(
        "http://localhost:3000",
        forge.admin_token,
        transport=httpx.WSGITransport(app=forge.app),
        sleep=lambda s: pytest.fail("slept against a healthy forge"),
    ) as gw:
        yield gw


def test_merging_a_closed_unmerged_pull_request_answers_404(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """Forgejo's CheckPullMergeable says ErrIsClosed, which the API answers with 404."""
    forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    number = _pull(forge_http)
    assert forge_http.patch(f"{REPO}/pulls/{number}", json={"state": "closed"}).status_code == 201
    answer = forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"})
    assert answer.status_code == 404


def test_a_conflicting_pull_request_is_not_mergeable_and_merging_answers_405(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """Both sides changed one line: ``mergeable`` is false and a merge is 405, not 409."""
    forge.push(DEMO, BRANCH, files={"README.md": "# ours\n"}, message="ours")
    forge.push(DEMO, "main", files={"README.md": "# theirs\n"}, message="theirs")
    number = _pull(forge_http)
    assert forge_http.get(f"{REPO}/pulls/{number}").json()["mergeable"] is False
    answer = forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"})
    assert answer.status_code == 405


def test_a_clean_open_pull_request_is_mergeable(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """The other side of the conflict check: a PR that merges cleanly says so."""
    forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    number = _pull(forge_http)
    pull = forge_http.get(f"{REPO}/pulls/{number}").json()
    assert pull["mergeable"] is True
    assert pull["requested_reviewers"] == []


def test_delete_branch_after_merge_deletes_the_head_branch(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """The branch is gone after the merge; the PR then shows ``head.ref`` as
    ``refs/pull/N/head`` and keeps the branch name in ``head.label``."""
    forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    number = _pull(forge_http)
    merge = {"Do": "merge", "delete_branch_after_merge": True}
    assert forge_http.post(f"{REPO}/pulls/{number}/merge", json=merge).status_code == 200
    assert forge_http.get(f"{REPO}/branches/{BRANCH}").status_code == 404
    head = forge_http.get(f"{REPO}/pulls/{number}").json()["head"]
    assert (head["ref"], head["label"]) == (f"refs/pull/{number}/head", BRANCH)
    assert head["sha"]


def test_a_merge_without_the_flag_keeps_the_branch(
    forge: ForgejoSandbox, forge_http: httpx.Client
) -> None:
    """Without ``delete_branch_after_merge`` the head branch and its ``ref`` stay."""
    forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    number = _pull(forge_http)
    assert forge_http.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 200
    assert forge_http.get(f"{REPO}/branches/{BRANCH}").status_code == 200
    assert forge_http.get(f"{REPO}/pulls/{number}").json()["head"]["ref"] == BRANCH


def test_combined_status_without_statuses_is_forgejos_empty_answer(
    forge: ForgejoSandbox, forge_http: httpx.Client, gateway: ForgejoGateway
) -> None:
    """No statuses: the zero value of CombinedStatus (state ""), no X-Total-Count; the gateway
    reads it as state None."""
    sha = forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    answer = forge_http.get(f"{REPO}/commits/{sha}/status")
    assert answer.status_code == 200
    assert answer.json()["state"] == "" and answer.json()["statuses"] is None
    assert "X-Total-Count" not in answer.headers
    assert gateway.combined_status(DEMO, sha).state is None


def test_the_gateway_reads_the_branch_from_the_label_once_it_is_deleted() -> None:
    """``head.ref`` = ``refs/pull/N/head`` (branch deleted): ``head_branch`` is ``head.label``."""
    raw = {
        "number": 12,
        "state": "closed",
        "head": {"ref": "refs/pull/12/head", "label": BRANCH, "sha": "a" * 40},
        "base": {"ref": "main", "label": "main"},
    }
    assert PullRequest.from_api(raw).head_branch == BRANCH
    live = {**raw, "head": {"ref": BRANCH, "label": BRANCH}}
    assert PullRequest.from_api(live).head_branch == BRANCH


def test_a_task_pull_request_is_found_by_branch_after_the_branch_is_deleted(
    forge: ForgejoSandbox, forge_http: httpx.Client, gateway: ForgejoGateway
) -> None:
    """find_pull_by_head (receipts, review) still finds a merged PR whose branch is gone."""
    forge.push(DEMO, BRANCH, files={"w.py": "1\n"}, message="w")
    number = _pull(forge_http)
    gateway.merge_pull(DEMO, number, delete_branch=True)
    assert gateway.get_branch(DEMO, BRANCH) is None
    found = gateway.find_pull_by_head(DEMO, BRANCH)
    assert found is not None and (found.number, found.merged) == (number, True)
    assert found.head_branch == BRANCH
