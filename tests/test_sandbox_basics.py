"""The sandbox forge's users, repositories, issues and labels, through its REST API."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from reconciler.sandbox import ForgejoSandbox

pytest_plugins = ("tests.sandbox_fixtures",)

REPO_API = "/repos/fleet-admin/demo"


def test_request_without_token_is_refused_with_401(
    forge_as: Callable[[str], httpx.Client],
) -> None:
    """An API call without a token answers 401 in Forgejo's error shape."""
    answer = forge_as("").get("/user")
    assert answer.status_code == 401
    assert answer.json()["message"] == "token is required"


def test_unknown_token_is_refused_with_401(forge_as: Callable[[str], httpx.Client]) -> None:
    """A token the forge never issued answers 401."""
    assert forge_as("0" * 40).get(REPO_API).status_code == 401


def test_bearer_scheme_is_accepted_case_insensitively(
    forge: ForgejoSandbox, forge_as: Callable[[str], httpx.Client]
) -> None:
    """``Authorization: BEARER <t>`` authenticates like ``token <t>``."""
    client = forge_as("")
    client.headers["Authorization"] = f"BEARER {forge.admin_token}"
    assert client.get("/user").json()["login"] == "fleet-admin"


def test_created_user_token_identifies_that_user(
    forge: ForgejoSandbox, forge_as: Callable[[str], httpx.Client]
) -> None:
    """``create_user`` returns a token that ``GET /user`` resolves to the new user."""
    me = forge_as(forge.create_user("alice")).get("/user").json()
    assert (me["login"], me["is_admin"]) == ("alice", False)


def test_auto_init_repo_has_initial_commit_on_default_branch(forge_http: httpx.Client) -> None:
    """``POST /user/repos`` with auto_init creates the default branch with one commit."""
    created = forge_http.post(
        "/user/repos", json={"name": "fresh", "auto_init": True, "default_branch": "trunk"}
    )
    assert created.status_code == 201
    branch = forge_http.get("/repos/fleet-admin/fresh/branches/trunk")
    assert branch.status_code == 200
    assert branch.json()["commit"]["message"] == "Initial commit\n"


def test_duplicate_repo_is_a_409(forge_http: httpx.Client) -> None:
    """Creating a repository whose name exists answers 409."""
    assert forge_http.post("/user/repos", json={"name": "demo"}).status_code == 409


def test_issue_round_trip(forge_http: httpx.Client) -> None:
    """An issue created with a label is read back with it, open, numbered 1."""
    label = forge_http.post(
        f"{REPO_API}/labels", json={"name": "fleet/task", "color": "#ff0000"}
    ).json()
    created = forge_http.post(
        f"{REPO_API}/issues", json={"title": "Fix it", "body": "b", "labels": [label["id"]]}
    )
    assert created.status_code == 201
    issue = forge_http.get(f"{REPO_API}/issues/1").json()
    assert (issue["title"], issue["state"], issue["number"]) == ("Fix it", "open", 1)
    assert [x["name"] for x in issue["labels"]] == ["fleet/task"]
    assert issue["pull_request"] is None


def test_missing_issue_is_a_404_in_forgejo_shape(forge_http: httpx.Client) -> None:
    """A missing issue answers 404 with message, url and errors."""
    answer = forge_http.get(f"{REPO_API}/issues/42")
    assert answer.status_code == 404
    assert set(answer.json()) == {"message", "url", "errors"}
