"""Webhook event → work-queue keys: every recorded Forgejo payload, every action, bad payloads."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from reconciler.fleet.knowledge_api import knowledge_key
from reconciler.forgejo.seen import SeenItems
from reconciler.keys import Key, branch_key, issue_key, pull_key
from tests.forgejo_data import EXAMPLES
from webhook.events import MalformedPayload, keys_for, note_merge

# file → (X-Forgejo-Event from SOURCES.md, the keys it must map to).
RECORDED: dict[str, tuple[str, tuple[str, ...]]] = {
    "webhook-issue_comment-created.json": ("issue_comment", ("assignment:example/example#1",)),
    "webhook-issue_comment-edited.json": ("issue_comment", ("assignment:gogits/hello-world#1",)),
    "webhook-issues-assigned.json": ("issues", ("assignment:example/example#1",)),
    "webhook-issues-closed.json": ("issues", ("assignment:gogits/hello-world#1",)),
    "webhook-issues-edited.json": ("issues", ("assignment:kostekIV/test#3",)),
    "webhook-issues-opened.json": ("issues", ("assignment:example/example#1",)),
    "webhook-pull_request-edited.json": ("pull_request", ("review:a_nice_user/hello_world_ci#7",)),
    "webhook-pull_request-label_updated.json": (
        "pull_request",
        ("review:a_nice_user/hello_world_ci#7",),
    ),
    "webhook-pull_request-merged-legacy.json": ("pull_request", ("review:jcitizen/my-repo#1",)),
    "webhook-pull_request-opened.json": ("pull_request", ("review:example/example#2",)),
    "webhook-pull_request-synchronized.json": ("pull_request", ("review:jcitizen/my-repo#1",)),
    "webhook-pull_request_review-rejected.json": (
        "pull_request_rejected",
        ("review:a_nice_user/hello_world_ci#7",),
    ),
    # A push to master: no task branch, nothing to look at.
    "webhook-push.json": ("push", ()),
}

REPO = "acme/web"
TASK_BRANCH = "task/12-3f9a1c2b-fix-login"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return loaded


def issue_payload(*, action: str = "opened", number: int = 12) -> dict[str, Any]:
    payload = example("webhook-issues-opened.json")
    payload["action"] = action
    payload["number"] = number
    payload["issue"]["number"] = number
    payload["repository"]["full_name"] = REPO
    return payload


def comment_payload(*, is_pull: bool | None, number: int = 12) -> dict[str, Any]:
    payload = example("webhook-issue_comment-created.json")
    payload["repository"]["full_name"] = REPO
    payload["issue"]["number"] = number
    if is_pull is None:
        del payload["is_pull"]
    else:
        payload["is_pull"] = is_pull
    return payload


def pull_payload(
    *, action: str = "opened", number: int = 7, head: str = TASK_BRANCH, head_repo: str = REPO
) -> dict[str, Any]:
    payload = example("webhook-pull_request-label_updated.json")
    payload["action"] = action
    payload["number"] = number
    payload["pull_request"]["number"] = number
    payload["repository"]["full_name"] = REPO
    payload["pull_request"]["head"]["ref"] = head
    payload["pull_request"]["head"]["label"] = head
    payload["pull_request"]["head"]["repo"]["full_name"] = head_repo
    payload["pull_request"]["base"]["repo"]["full_name"] = REPO
    return payload


def review_payload(*, number: int = 7) -> dict[str, Any]:
    payload = example("webhook-pull_request_review-rejected.json")
    payload["number"] = number
    payload["pull_request"]["number"] = number
    payload["repository"]["full_name"] = REPO
    return payload


def push_payload(*, ref: str) -> dict[str, Any]:
    payload = example("webhook-push.json")
    payload["ref"] = ref
    payload["repository"]["full_name"] = REPO
    return payload


def ref_payload(*, ref: str, ref_type: str) -> dict[str, Any]:
    """A create/delete payload: Forgejo's CreatePayload/DeletePayload fields around a repository."""
    return {
        "ref": ref,
        "ref_type": ref_type,
        "pusher_type": "user",
        "repository": push_payload(ref="refs/heads/main")["repository"],
        "sender": example("webhook-push.json")["sender"],
    }


# --- every recorded payload ---------------------------------------------------------------


def test_every_recorded_webhook_payload_is_in_the_table() -> None:
    """A new example file cannot go unchecked: the table lists exactly the files on disk."""
    assert sorted(p.name for p in EXAMPLES.glob("webhook-*.json")) == sorted(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_payload_maps_to_its_keys(name: str) -> None:
    """Each real Forgejo/Gitea payload names the issue, PR or branch it is about."""
    event, expected = RECORDED[name]
    assert tuple(str(key) for key in keys_for(event, example(name))) == expected


# --- actions ------------------------------------------------------------------------------

ISSUE_ACTIONS = (
    "opened",
    "edited",
    "closed",
    "reopened",
    "assigned",
    "unassigned",
    "label_updated",
    "label_cleared",
    "milestoned",
    "demilestoned",
)


@pytest.mark.parametrize("action", ISSUE_ACTIONS)
def test_every_issue_action_names_the_issue(action: str) -> None:
    """Any change to an issue may change its task, so every action enqueues its key."""
    assert keys_for("issues", issue_payload(action=action, number=12)) == (issue_key(REPO, 12),)


@pytest.mark.parametrize(
    ("is_pull", "pull_request", "expected"),
    [
        (False, None, issue_key(REPO, 12)),
        (True, {"merged": False}, pull_key(REPO, 12)),
        # Payloads from before `is_pull`: the issue's `pull_request` object decides.
        (None, None, issue_key(REPO, 12)),
        (None, {"merged": False}, pull_key(REPO, 12)),
    ],
)
def test_comment_names_the_issue_or_the_pull_request(
    is_pull: bool | None, pull_request: dict[str, Any] | None, expected: Key
) -> None:
    """A comment on a PR goes to the review controller, one on an issue to assignment."""
    payload = comment_payload(is_pull=is_pull, number=12)
    payload["issue"]["pull_request"] = pull_request
    assert keys_for("issue_comment", payload) == (expected,)


PULL_ACTIONS = (
    "opened",
    "synchronized",
    "closed",
    "reopened",
    "edited",
    "label_updated",
    "label_cleared",
    "review_requested",
    "review_request_removed",
    "assigned",
    "unassigned",
)


@pytest.mark.parametrize("action", PULL_ACTIONS)
def test_pull_request_on_a_task_branch_names_only_the_pull(action: str) -> None:
    """No branch key: the PR's own reconcile reports its task branch's tip (the PR's head)."""
    keys = keys_for("pull_request", pull_payload(action=action, number=7))
    assert keys == (pull_key(REPO, 7),)
    assert branch_key(REPO, TASK_BRANCH) not in keys


@pytest.mark.parametrize("action", PULL_ACTIONS)
def test_pull_request_on_another_branch_names_only_the_pull(action: str) -> None:
    """A PR from a branch agent-fleet did not create still names the PR (it may say Closes #N)."""
    payload = pull_payload(action=action, number=7, head="feature/login")
    assert keys_for("pull_request", payload) == (pull_key(REPO, 7),)


def test_pull_request_from_a_fork_names_the_pull() -> None:
    """A fork's PR is looked at too (its body may close a task's issue)."""
    payload = pull_payload(head_repo="mallory/web")
    assert keys_for("pull_request", payload) == (pull_key(REPO, 7),)


def test_pull_request_whose_head_repo_was_deleted_names_only_the_pull() -> None:
    """Forgejo sends head.repo null once the head repository is gone."""
    payload = pull_payload()
    payload["pull_request"]["head"]["repo"] = None
    assert keys_for("pull_request", payload) == (pull_key(REPO, 7),)


@pytest.mark.parametrize(
    "event",
    [
        "pull_request_approved",
        "pull_request_rejected",
        "pull_request_comment",
        "pull_request_review",
    ],
)
def test_review_events_name_the_pull_request(event: str) -> None:
    """Approvals, change requests and review comments all go to the review controller."""
    assert keys_for(event, review_payload(number=9)) == (pull_key(REPO, 9),)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (f"refs/heads/{TASK_BRANCH}", (branch_key(REPO, TASK_BRANCH),)),
        ("refs/heads/main", ()),
        ("refs/heads/feature/task/x", ()),
        ("refs/heads/task/", ()),
        ("refs/tags/task/v1", ()),
        ("refs/tags/v1.0.0", ()),
    ],
)
def test_only_pushes_to_task_branches_name_a_key(ref: str, expected: tuple[Key, ...]) -> None:
    """Task-branch pushes update the task's activity; other branches and tags are not ours."""
    assert keys_for("push", push_payload(ref=ref)) == expected


@pytest.mark.parametrize("event", ["create", "delete"])
@pytest.mark.parametrize(
    ("ref", "ref_type", "expected"),
    [
        (TASK_BRANCH, "branch", (branch_key(REPO, TASK_BRANCH),)),
        (f"refs/heads/{TASK_BRANCH}", "branch", (branch_key(REPO, TASK_BRANCH),)),
        ("main", "branch", ()),
        ("task/v1", "tag", ()),
    ],
)
def test_created_or_deleted_task_branch_names_the_branch(
    event: str, ref: str, ref_type: str, expected: tuple[Key, ...]
) -> None:
    """A task branch that appears or disappears is news for the review controller."""
    assert keys_for(event, ref_payload(ref=ref, ref_type=ref_type)) == expected


@pytest.mark.parametrize("event", ["release", "fork", "repository", "status", "", "x"])
def test_events_agent_fleet_does_not_watch_name_nothing(event: str) -> None:
    """Unknown or uninteresting events map to no keys, whatever the payload."""
    assert keys_for(event, issue_payload()) == ()
    assert keys_for(event, {}) == ()


def test_finer_event_type_names_map_like_their_event() -> None:
    """X-Forgejo-Event-Type spellings (issue_label, pull_request_sync, ...) are understood too."""
    assert keys_for("issue_label", issue_payload(number=3)) == (issue_key(REPO, 3),)
    assert keys_for("pull_request_sync", pull_payload(number=4)) == (pull_key(REPO, 4),)
    assert keys_for("pull_request_review_approved", review_payload(number=5)) == (
        pull_key(REPO, 5),
    )


def test_number_falls_back_to_the_top_level_number() -> None:
    """Payloads whose issue object lacks `number` still name the issue by the top-level one."""
    payload = issue_payload(number=12)
    del payload["issue"]["number"]
    assert keys_for("issues", payload) == (issue_key(REPO, 12),)


# --- malformed payloads -------------------------------------------------------------------


def _without_repository(payload: dict[str, Any]) -> None:
    del payload["repository"]


def _repository_a_string(payload: dict[str, Any]) -> None:
    payload["repository"] = "acme/web"


def _without_full_name(payload: dict[str, Any]) -> None:
    del payload["repository"]["full_name"]


def _full_name_without_owner(payload: dict[str, Any]) -> None:
    payload["repository"]["full_name"] = "web"


def _full_name_empty_owner(payload: dict[str, Any]) -> None:
    payload["repository"]["full_name"] = "/web"


def _without_any_number(payload: dict[str, Any]) -> None:
    del payload["number"]
    del payload["issue"]["number"]


def _number_as_text(payload: dict[str, Any]) -> None:
    payload["issue"]["number"] = "12"


def _number_as_bool(payload: dict[str, Any]) -> None:
    payload["issue"]["number"] = True


def _number_zero(payload: dict[str, Any]) -> None:
    payload["issue"]["number"] = 0


def _issue_a_list(payload: dict[str, Any]) -> None:
    payload["issue"] = [12]


@pytest.mark.parametrize(
    "breakage",
    [
        _without_repository,
        _repository_a_string,
        _without_full_name,
        _full_name_without_owner,
        _full_name_empty_owner,
        _without_any_number,
        _number_as_text,
        _number_as_bool,
        _number_zero,
        _issue_a_list,
    ],
)
def test_issue_payload_without_what_it_needs_is_malformed(breakage: Any) -> None:
    """An issues payload missing its repository or number, or with the wrong types, is refused."""
    payload = issue_payload()
    breakage(payload)
    with pytest.raises(MalformedPayload):
        keys_for("issues", payload)


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("issue_comment", {**comment_payload(is_pull=True), "is_pull": "yes"}),
        ("issue_comment", {**comment_payload(is_pull=False), "issue": None}),
        ("pull_request", {"repository": {"full_name": REPO}, "action": "opened"}),
        ("pull_request_approved", {"repository": {"full_name": REPO}, "action": "reviewed"}),
        ("push", {**push_payload(ref="refs/heads/main"), "ref": None}),
        ("push", {**push_payload(ref="refs/heads/main"), "ref": 7}),
        ("delete", {**ref_payload(ref=TASK_BRANCH, ref_type="branch"), "ref_type": None}),
    ],
    ids=[
        "is_pull-text",
        "comment-without-issue",
        "pull-without-number",
        "review-without-number",
        "push-without-ref",
        "push-ref-number",
        "delete-without-ref-type",
    ],
)
def test_event_payload_without_what_it_needs_is_malformed(
    event: str, payload: dict[str, Any]
) -> None:
    """Each handled event checks the fields it reads."""
    with pytest.raises(MalformedPayload):
        keys_for(event, payload)


def test_a_pull_request_delivery_does_not_read_the_head() -> None:
    """Only the repository and the number name the key: an odd head is the PR reconcile's
    business (it reads the PR itself), not a reason to drop the delivery."""
    payload = pull_payload()
    payload["pull_request"]["head"]["ref"] = 12
    assert keys_for("pull_request", payload) == (pull_key(REPO, 7),)


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    """keys_for refuses a JSON array or string for an event it handles."""
    with pytest.raises(MalformedPayload):
        keys_for("issues", [issue_payload()])  # type: ignore[arg-type]


def test_malformed_payload_is_a_value_error() -> None:
    """Callers that only know ValueError still catch it."""
    assert issubclass(MalformedPayload, ValueError)


def test_mapping_does_not_change_the_payload() -> None:
    """keys_for is pure: the payload is left as it came."""
    payload = pull_payload()
    before = copy.deepcopy(payload)
    keys_for("pull_request", payload)
    assert payload == before


def _wiki_payload(page: object) -> dict[str, Any]:
    return {
        "action": "edited",
        "repository": {"full_name": REPO},
        "sender": {"login": "maint"},
        "page": page,
        "comment": "tip",
    }


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("fleet-notes-build-cache.-", (knowledge_key(REPO, "build-cache"),)),
        ("fleet-notes-ci.-", (knowledge_key(REPO, "ci"),)),
        ("Home", ()),
        ("Home-Page", ()),
        ("fleet-notes-Bad Topic.-", ()),
    ],
)
def test_a_wiki_event_names_the_topic_of_a_shared_notes_page(
    page: str, expected: tuple[Key, ...]
) -> None:
    """A fleet-notes page written or deleted is news for the knowledge controller; any other
    page is not."""
    assert keys_for("wiki", _wiki_payload(page)) == expected


def test_a_wiki_event_without_a_page_is_malformed() -> None:
    """The page is what the event is about: without it the delivery is refused."""
    with pytest.raises(MalformedPayload):
        keys_for("wiki", _wiki_payload(None))


# --- what a delivery notes in memory -----------------------------------------------------


def test_a_merged_pull_request_delivery_is_noted_and_nothing_else_is() -> None:
    """Only a ``pull_request`` delivery whose pull request says merged notes a merge; an open
    or closed-unmerged one, another event, or a payload without the fields notes nothing."""
    seen = SeenItems()
    note_merge("pull_request", pull_payload(action="closed", number=8), seen=seen)
    assert seen.merged_for(REPO, 8) is None  # closed, not merged
    merged = pull_payload(action="closed", number=9)
    merged["pull_request"]["merged"] = True
    note_merge("pull_request_approved", merged, seen=seen)
    assert seen.merged_for(REPO, 9) is None
    note_merge("pull_request", {"pull_request": {"merged": True}}, seen=seen)
    note_merge("pull_request", merged, seen=seen)
    since = seen.merged_for(REPO.upper(), 9)
    assert since is not None and 0 <= since < 60
