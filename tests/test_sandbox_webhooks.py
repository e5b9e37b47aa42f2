"""The sandbox forge's webhooks: real payload shapes, Forgejo's headers, signatures, delivery.

Payload key sets are compared with recorded payloads of real Gitea/Forgejo servers; keys the
recordings lack are accepted only where Forgejo v16 declares them (the spec's definition of the
nested object, or the v16 payload structs in modules/structs/hook.go).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from reconciler.sandbox import ForgejoSandbox

if TYPE_CHECKING:
    from tests.sandbox_fixtures import WebhookReceiver

pytest_plugins = ("tests.sandbox_fixtures",)

DEMO = "fleet-admin/demo"
from tests.forgejo_data import EXAMPLES
from tests.forgejo_data import SPEC_PATH as SPEC

SECRET = "s3cret"

# Top-level payload fields Forgejo v16's payload structs have and the older recordings lack
# (modules/structs/hook.go: IssuePayload.CommitID, PullRequestPayload.RequestedReviewer/
# CommitID/Review, IssueCommentPayload.IsPull/PullRequest, PushPayload.TotalCommits).
V16_TOP_LEVEL = {"commit_id", "requested_reviewer", "review", "is_pull", "total_commits"}
# Recorded fields Forgejo no longer sends: the hook secret in the body (legacy Gitea).
LEGACY_TOP_LEVEL = {"secret"}
# Nested object -> the spec definition that declares its v16 fields.
NESTED = {
    "issue": "Issue",
    "pull_request": "PullRequest",
    "comment": "Comment",
    "repository": "Repository",
    "sender": "User",
    "pusher": "User",
    "head_commit": "PayloadCommit",
}


def _spec_fields(definition: str) -> set[str]:
    properties = json.loads(SPEC.read_text())["definitions"][definition]["properties"]
    fields = set(properties)
    if definition == "User":
        fields.add("username")  # added by Forgejo's User.MarshalJSON
    return fields


def _hook(forge: ForgejoSandbox, url: str, events: list[str], **extra: Any) -> None:
    with forge.state.lock:
        repo = forge.state.repo(DEMO, forge.state.user_named("fleet-admin"))
        forge.state.create_hook(
            repo,
            repo.owner,
            type="forgejo",
            config={"url": url, "content_type": "json", "secret": SECRET},
            events=events,
            active=True,
            **extra,
        )


def _all_events(forge: ForgejoSandbox, url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Performs one of each announced change; returns payloads by (event type, action)."""
    _hook(forge, url, ["issues", "pull_request", "push"])
    forge.create_user("bob")
    bug = forge.create_label(DEMO, "bug")
    number = forge.create_issue(DEMO, "Broken", labels=["bug"])
    with forge.state.lock:
        state = forge.state
        repo = state.repo(DEMO, state.user_named("fleet-admin"))
        admin = repo.owner
        state.edit_issue(repo, admin, number, title="Broken badly")
        state.add_collaborator(repo, admin, "bob", permission="write")  # may be assigned
        state.edit_issue(repo, admin, number, assignees=["bob"])
        comment = state.create_comment(repo, admin, number, body="looking")
        state.edit_comment(repo, admin, comment.id, body="looking now")
        state.set_issue_state(repo, admin, number, "closed")
    forge.push(DEMO, "task/1-fix", files={"fix.py": "fixed = True\n"}, message="fix")
    pull = forge.open_pull(DEMO, "task/1-fix", title="Fix it")
    with forge.state.lock:
        state.edit_issue(repo, admin, pull, title="Fix it well")
        state.add_labels(repo, admin, pull, [bug])
    forge.push(DEMO, "task/1-fix", files={"fix.py": "fixed = 'yes'\n"}, message="fix more")
    forge.review(DEMO, pull, "REQUEST_CHANGES", body="not yet", author="bob")
    forge.merge(DEMO, pull)
    forge.flush_webhooks()
    payloads: dict[tuple[str, str], dict[str, Any]] = {}
    for delivery in forge.deliveries:
        body = delivery.json()
        payloads.setdefault((delivery.event_type, body.get("action", "")), body)
    return payloads


EXAMPLE_OF = {
    "issues-opened": ("issues", "opened"),
    "issues-edited": ("issues", "edited"),
    "issues-closed": ("issues", "closed"),
    "issues-assigned": ("issue_assign", "assigned"),
    "issue_comment-created": ("issue_comment", "created"),
    "issue_comment-edited": ("issue_comment", "edited"),
    "pull_request-opened": ("pull_request", "opened"),
    "pull_request-edited": ("pull_request", "edited"),
    "pull_request-synchronized": ("pull_request_sync", "synchronized"),
    "pull_request-label_updated": ("pull_request_label", "label_updated"),
    "pull_request-merged-legacy": ("pull_request", "closed"),
    "pull_request_review-rejected": ("pull_request_review_rejected", "reviewed"),
    "push": ("push", ""),
}


@pytest.fixture
def payloads(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> dict[tuple[str, str], dict[str, Any]]:
    """One payload of each kind the sandbox sends, delivered to a loopback receiver."""
    return _all_events(forge, webhook_receiver.url)


@pytest.mark.parametrize("example", sorted(EXAMPLE_OF))
def test_payload_keys_match_the_recorded_payload(
    payloads: dict[tuple[str, str], dict[str, Any]], example: str
) -> None:
    """Every recorded key is sent; extra keys are only the ones Forgejo v16 declares."""
    recorded = json.loads((EXAMPLES / f"webhook-{example}.json").read_text())
    ours = payloads[EXAMPLE_OF[example]]
    assert set(recorded) - set(ours) <= LEGACY_TOP_LEVEL
    assert set(ours) - set(recorded) <= V16_TOP_LEVEL
    for key, definition in NESTED.items():
        if not isinstance(recorded.get(key), dict):
            continue
        missing = set(recorded[key]) - set(ours[key])
        assert not missing, f"{key} lacks recorded fields {sorted(missing)}"
        extra = set(ours[key]) - set(recorded[key]) - _spec_fields(definition)
        assert not extra, f"{key} has fields Forgejo v16 does not declare: {sorted(extra)}"
    if isinstance(recorded.get("review"), dict):
        assert set(ours["review"]) == set(recorded["review"])


def test_review_payload_names_the_review_kind(
    payloads: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """A requested-changes review arrives as action reviewed with its type and content."""
    review = payloads[("pull_request_review_rejected", "reviewed")]
    assert review["review"] == {"type": "pull_request_review_rejected", "content": "not yet"}
    assert review["requested_reviewer"]["login"] == "bob"


def test_merge_announces_closed_with_merged_true(
    payloads: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """A merge sends pull_request closed whose pull_request says merged."""
    closed = payloads[("pull_request", "closed")]["pull_request"]
    assert (closed["merged"], closed["state"]) == (True, "closed")


def test_comment_on_issue_says_is_pull_false(
    payloads: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """issue_comment payloads tell issues from pull requests with is_pull."""
    created = payloads[("issue_comment", "created")]
    assert created["is_pull"] is False
    assert created["comment"]["body"] == "looking"


def test_edit_payload_carries_the_previous_title(
    payloads: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """An edited issue announces what the title was before."""
    assert payloads[("issues", "edited")]["changes"] == {"title": {"from": "Broken"}}


def test_push_payload_lists_the_new_commits(
    payloads: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """The first push of a branch lists the commit made on it, head first."""
    push = payloads[("push", "")]
    assert push["ref"] == "refs/heads/task/1-fix"
    assert push["before"] == "0" * 40
    assert [c["message"] for c in push["commits"]] == ["fix\n"]
    assert push["head_commit"]["id"] == push["after"]
    assert push["head_commit"]["added"] == ["fix.py"]


# --- labels ---------------------------------------------------------------------------------


def test_label_update_carries_the_full_label_set_and_clear_is_label_cleared(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """Adding sends label_updated with every current label; clearing sends label_cleared."""
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.create_label(DEMO, "fleet/task")
    hold = forge.create_label(DEMO, "fleet/hold")
    number = forge.create_issue(DEMO, "t", labels=["fleet/task"])
    with forge.state.lock:
        repo = forge.state.repo(DEMO, forge.state.user_named("fleet-admin"))
        forge.state.add_labels(repo, repo.owner, number, [hold])
        forge.state.clear_labels(repo, repo.owner, number)
    forge.flush_webhooks()
    labelled = [d for d in forge.deliveries if d.event_type == "issue_label"]
    assert [d.json()["action"] for d in labelled] == ["label_updated", "label_cleared"]
    names = [x["name"] for x in labelled[0].json()["issue"]["labels"]]
    assert sorted(names) == ["fleet/hold", "fleet/task"]
    assert labelled[0].event == "issues"


# --- headers, signature, delivery -----------------------------------------------------------


def test_delivery_is_signed_and_carries_forgejo_headers(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """The receiver gets the exact signed bytes, 2-space indented, with every header."""
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.create_issue(DEMO, "t")
    forge.create_issue(DEMO, "u")
    forge.flush_webhooks()
    assert len(webhook_receiver.received) == 2
    first = webhook_receiver.received[0]
    headers = {k.lower(): v for k, v in first.headers.items()}
    digest = hmac.new(SECRET.encode(), first.body, hashlib.sha256).hexdigest()
    assert headers["x-forgejo-signature"] == digest
    assert headers["x-gitea-signature"] == digest
    assert headers["x-hub-signature-256"] == f"sha256={digest}"
    for prefix in ("x-forgejo", "x-gitea", "x-gogs"):
        assert headers[f"{prefix}-event"] == "issues"
        assert headers[f"{prefix}-event-type"] == "issues"
    assert headers["content-type"] == "application/json"
    assert first.body.startswith(b'{\n  "action": "opened"')
    second = {k.lower(): v for k, v in webhook_receiver.received[1].headers.items()}
    assert second["x-forgejo-delivery"] != headers["x-forgejo-delivery"]


def test_disabled_webhooks_are_dropped_and_recorded(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """With webhooks_enabled False nothing is sent; the lost delivery is recorded as dropped."""
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.webhooks_enabled = False
    forge.create_issue(DEMO, "t")
    forge.flush_webhooks()
    assert webhook_receiver.received == []
    assert [(d.event_type, d.dropped) for d in forge.deliveries] == [("issues", True)]


def test_failed_delivery_is_recorded_and_not_retried(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """A 500 from the receiver is recorded once and never sent again."""
    webhook_receiver.status = 500
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.create_issue(DEMO, "t")
    forge.flush_webhooks()
    assert [(d.status_code, d.ok) for d in forge.deliveries] == [(500, False)]
    assert len(webhook_receiver.received) == 1
    assert forge.pending_webhooks() == []


def test_unreachable_receiver_is_recorded_as_an_error(forge: ForgejoSandbox) -> None:
    """A refused connection is recorded with no status code and an error text."""
    _hook(forge, "http://127.0.0.1:9/unreachable", ["issues"])
    forge.create_issue(DEMO, "t")
    forge.flush_webhooks()
    [delivery] = forge.deliveries
    assert delivery.status_code is None
    assert delivery.error


def test_stopped_sandbox_keeps_webhooks_pending(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """After stop() new webhooks wait in pending_webhooks() instead of being sent."""
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.stop()
    forge.create_issue(DEMO, "t")
    assert [p.event_type for p in forge.pending_webhooks()] == ["issues"]
    with pytest.raises(TimeoutError):
        forge.flush_webhooks(timeout=0.01)
    assert webhook_receiver.received == []


# --- subscriptions --------------------------------------------------------------------------


def test_issues_subscription_includes_comments_but_not_pushes(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """A hook on "issues" gets issue and comment events, and nothing for a push."""
    _hook(forge, webhook_receiver.url, ["issues"])
    forge.create_issue(DEMO, "t")
    forge.comment(DEMO, 1, "c")
    forge.push(DEMO, "main", files={"a": "b"}, message="m")
    forge.flush_webhooks()
    assert [(d.event, d.event_type) for d in forge.deliveries] == [
        ("issues", "issues"),
        ("issue_comment", "issue_comment"),
    ]


def test_push_to_a_pull_head_announces_synchronized(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """A push to an open PR's head branch sends push and pull_request synchronized."""
    forge.push(DEMO, "task/2-x", files={"x": "1"}, message="one")
    forge.open_pull(DEMO, "task/2-x", title="X")
    _hook(forge, webhook_receiver.url, ["pull_request", "push"])
    forge.push(DEMO, "task/2-x", files={"x": "2"}, message="two")
    forge.flush_webhooks()
    assert [(d.event, d.event_type) for d in forge.deliveries] == [
        ("push", "push"),
        ("pull_request", "pull_request_sync"),
    ]
    assert forge.deliveries[1].json()["action"] == "synchronized"


def test_branch_filter_limits_push_events(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver
) -> None:
    """A hook with branch_filter "task/*" hears pushes to task branches only."""
    _hook(forge, webhook_receiver.url, ["push"], branch_filter="task/*")
    forge.push(DEMO, "main", files={"a": "1"}, message="main")
    forge.push(DEMO, "task/3-y", files={"a": "2"}, message="task")
    forge.flush_webhooks()
    assert [d.json()["ref"] for d in forge.deliveries] == ["refs/heads/task/3-y"]


@pytest.mark.parametrize(
    ("event", "header"),
    [
        ("APPROVED", "pull_request_approved"),
        ("REQUEST_CHANGES", "pull_request_rejected"),
        ("COMMENT", "pull_request_comment"),
    ],
)
def test_review_events_use_forgejo_event_names(
    forge: ForgejoSandbox, webhook_receiver: WebhookReceiver, event: str, header: str
) -> None:
    """Each review kind is its own X-Forgejo-Event, with action reviewed."""
    forge.push(DEMO, "task/4-z", files={"z": "1"}, message="z")
    number = forge.open_pull(DEMO, "task/4-z", title="Z")
    forge.create_user("carol")
    _hook(forge, webhook_receiver.url, ["pull_request_review"])
    forge.review(DEMO, number, event, body="ok", author="carol")
    forge.flush_webhooks()
    [delivery] = forge.deliveries
    assert (delivery.event, delivery.json()["action"]) == (header, "reviewed")


def test_hook_events_list_is_expanded_like_forgejo(
    forge: ForgejoSandbox, forge_http: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    """GET hooks shows the fine-grained events a subscription implies, never the secret."""
    _hook(forge, webhook_receiver.url, ["issues"])
    [hook] = forge_http.get(f"/repos/{DEMO}/hooks").json()
    assert hook["events"] == [
        "issues",
        "issue_assign",
        "issue_label",
        "issue_milestone",
        "issue_comment",
    ]
    assert SECRET not in json.dumps(hook)
