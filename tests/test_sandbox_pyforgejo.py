"""The real pyforgejo client works against the sandbox served on loopback.

pyforgejo sends ``Authorization: token <t>`` and parses answers into its own models, so these
tests show the sandbox's shapes are ones the client agent-fleet uses can read.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import TYPE_CHECKING

import pyforgejo
import pytest
from pyforgejo.errors import NotFoundError, UnprocessableEntityError

from reconciler.sandbox import ForgejoSandbox

if TYPE_CHECKING:
    from tests.sandbox_fixtures import ManualClock

pytest_plugins = ("tests.sandbox_fixtures",)

OWNER, NAME = "fleet-admin", "demo"


def _client(forge: ForgejoSandbox, token: str) -> pyforgejo.PyforgejoApi:
    return pyforgejo.PyforgejoApi(base_url=f"{forge.url}/api/v1", api_key=token, timeout=10)


def test_issue_and_label_flow_through_pyforgejo(
    served_forge: ForgejoSandbox, forge_clock: ManualClock
) -> None:
    """Labels, issues, label edits and comments round-trip through the real client."""
    client = _client(served_forge, served_forge.admin_token)
    assert client.user.get_current().login == "fleet-admin"
    task = client.issue.create_label(OWNER, NAME, name="fleet/task", color="#00aa00")
    client.issue.create_label(OWNER, NAME, name="status/todo", color="ff0000", exclusive=True)
    client.issue.create_label(OWNER, NAME, name="status/doing", color="ff0000", exclusive=True)
    issue = client.issue.create_issue(OWNER, NAME, title="Do it", labels=[task.id])
    assert issue.number == 1

    start = forge_clock.advance(60)
    client.issue.add_label(OWNER, NAME, 1, labels=["status/todo"])
    labels = client.issue.replace_labels(
        OWNER,
        NAME,
        1,
        labels=["fleet/task", "status/todo", "status/doing"],
    )
    assert sorted(label.name for label in labels) == ["fleet/task", "status/doing"]
    client.issue.remove_label(OWNER, NAME, 1, "status/doing")

    listed = client.issue.list_issues(OWNER, NAME, labels="fleet/task", since=start)
    assert [i.number for i in listed] == [1]
    assert client.issue.list_issues(OWNER, NAME, since=start + timedelta(seconds=1)) == []

    comment = client.issue.create_comment(OWNER, NAME, 1, body="<!-- fleet --> working")
    client.issue.edit_comment(OWNER, NAME, comment.id, body="<!-- fleet --> done")
    bodies = [c.body for c in client.issue.get_comments(OWNER, NAME, 1)]
    assert bodies == ["<!-- fleet --> done"]
    closed = client.issue.edit_issue(OWNER, NAME, 1, state="closed")
    assert closed.state == "closed" and closed.closed_at is not None


def test_pull_request_flow_through_pyforgejo(served_forge: ForgejoSandbox) -> None:
    """Open, review, report status on, and merge a pull request with the real client."""
    client = _client(served_forge, served_forge.admin_token)
    reviewer = _client(served_forge, served_forge.create_user("reviewer"))
    sha = served_forge.push(
        f"{OWNER}/{NAME}", "task/1-do-it", files={"it.py": "done = 1\n"}, message="do it"
    )
    pull = client.repository.repo_create_pull_request(
        OWNER, NAME, head="task/1-do-it", base="main", title="Do it", body="Closes #1"
    )
    assert pull.head is not None and pull.head.sha == sha
    found = client.repository.repo_get_pull_request_by_base_head(
        OWNER, NAME, "main", "task/1-do-it"
    )
    assert found.number == pull.number

    review = reviewer.repository.repo_create_pull_review(
        OWNER, NAME, pull.number, event="REQUEST_CHANGES", body="add tests"
    )
    assert review.state == "REQUEST_CHANGES"
    client.repository.repo_create_status(OWNER, NAME, sha, state="pending", context="ci")
    client.repository.repo_create_status(OWNER, NAME, sha, state="success", context="ci")
    combined = client.repository.repo_get_combined_status_by_ref(OWNER, NAME, sha)
    assert combined.state == "success"

    files = client.repository.repo_get_pull_request_files(OWNER, NAME, pull.number)
    assert [f.filename for f in files] == ["it.py"]
    with pytest.raises(NotFoundError):
        client.repository.repo_pull_request_is_merged(OWNER, NAME, pull.number)
    client.repository.repo_merge_pull_request(OWNER, NAME, pull.number, do="merge")
    client.repository.repo_pull_request_is_merged(OWNER, NAME, pull.number)
    merged = client.repository.repo_get_pull_request(OWNER, NAME, pull.number)
    assert merged.merged and merged.state == "closed"
    permission = client.repository.repo_get_repo_permissions(OWNER, NAME, "reviewer")
    assert permission.permission == "read"


def test_pyforgejo_sees_forgejo_errors(served_forge: ForgejoSandbox) -> None:
    """A missing issue raises pyforgejo's NotFoundError, a bad body its 422 error."""
    client = _client(served_forge, served_forge.admin_token)
    with pytest.raises(NotFoundError):
        client.issue.get_issue(OWNER, NAME, 99)
    with pytest.raises(UnprocessableEntityError):
        client.issue.create_label(OWNER, NAME, name="bad", color="not-a-color")


def test_webhook_created_through_pyforgejo_is_listed(served_forge: ForgejoSandbox) -> None:
    """A hook created with the client comes back with its config URL and events."""
    client = _client(served_forge, served_forge.admin_token)
    hook = client.repository.repo_create_hook(
        OWNER,
        NAME,
        type="forgejo",
        config={"url": "http://127.0.0.1:9/hooks", "content_type": "json", "secret": "x"},
        events=["issues", "pull_request"],
        active=True,
    )
    [listed] = client.repository.repo_list_hooks(OWNER, NAME)
    assert listed.id == hook.id
    assert listed.config is not None and listed.config["url"] == "http://127.0.0.1:9/hooks"
    assert listed.events is not None and "pull_request_sync" in listed.events


def test_file_created_through_pyforgejo_is_read_back(served_forge: ForgejoSandbox) -> None:
    """repo_create_file and repo_get_contents parse the sandbox's FileResponse and
    ContentsResponse; an existing file is the client's 422."""
    client = _client(served_forge, served_forge.admin_token)
    created = client.repository.repo_create_file(
        OWNER,
        NAME,
        "notes/todo.md",
        content=base64.b64encode(b"- one\n").decode(),
        new_branch="task/3-notes",
        message="Write notes",
    )
    assert created.commit is not None and created.content is not None
    assert created.commit.message == "Write notes\n"
    assert created.content.path == "notes/todo.md"
    got = client.repository.repo_get_contents(OWNER, NAME, "notes/todo.md", ref="task/3-notes")
    assert got.content is not None and base64.b64decode(got.content) == b"- one\n"
    assert got.last_commit_sha == created.commit.sha
    with pytest.raises(UnprocessableEntityError):
        client.repository.repo_create_file(
            OWNER, NAME, "notes/todo.md", content="eA==", branch="task/3-notes"
        )
