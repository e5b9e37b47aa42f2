"""Which work-queue keys a Forgejo webhook delivery names: a pure mapping, no I/O.

Called by the webhook receiver (`webhook.receiver`) after the signature is verified and the body
parsed. A delivery only says "look at this issue / pull request / task branch soon": the
controllers read the current state themselves, so nothing here looks past the few fields that
identify the thing that changed (repository, number, branch).

| event (``X-Forgejo-Event``)                          | keys                                    |
|------------------------------------------------------|-----------------------------------------|
| ``issues`` (every action)                            | ``assignment`` key of the issue         |
| ``issue_comment``                                    | issue → ``assignment``; PR → ``review`` |
| ``pull_request`` (every action)                      | ``review`` key of the PR (its reconcile |
|                                                      | reports the tip of a task PR's branch)  |
| ``pull_request_approved`` / ``_rejected`` /          | ``review`` key of the PR                |
| ``_comment`` (action ``reviewed``)                   |                                         |
| ``push`` to ``refs/heads/task/…``                    | branch key of the task branch           |
| ``create`` / ``delete`` of a ``task/…`` branch       | branch key of the task branch           |
| ``wiki`` (a ``fleet-notes-<topic>`` page)            | ``knowledge`` key of the topic          |
| anything else                                        | nothing                                 |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.fleet.knowledge_api import knowledge_key, topic_of_web_path
from reconciler.forgejo.seen import SeenItems
from reconciler.forgejo.types import Issue
from reconciler.keys import Key, branch_key, issue_key, pull_key

# The branch prefix agent-fleet gives every task branch (`reconciler.models.branch_for`).
TASK_BRANCH_PREFIX = "task/"
_HEADS = "refs/heads/"


class MalformedPayload(ValueError):
    """The payload lacks a field its event needs, or a field has the wrong type."""


def is_task_branch(branch: str) -> bool:
    return branch.startswith(TASK_BRANCH_PREFIX) and len(branch) > len(TASK_BRANCH_PREFIX)


# --- field access ------------------------------------------------------------------------


def _repo(payload: Mapping[str, Any]) -> str:
    repository = payload.get("repository")
    if not isinstance(repository, Mapping):
        raise MalformedPayload("payload has no 'repository' object")
    full_name = repository.get("full_name")
    if not isinstance(full_name, str) or full_name.count("/") != 1 or "" in full_name.split("/"):
        raise MalformedPayload(f"repository.full_name must be 'owner/name', got {full_name!r}")
    return full_name


def _positive_int(value: object, *, field: str) -> int:
    # bool is an int subclass; `"number": true` is a broken payload, not issue #1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MalformedPayload(f"{field} must be a positive integer, got {value!r}")
    return value


def _object(payload: Mapping[str, Any], field: str) -> Mapping[str, Any] | None:
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedPayload(f"{field} must be an object, got {type(value).__name__}")
    return value


def _number(payload: Mapping[str, Any], *objects: str) -> int:
    """The issue/PR number: from the first of ``objects`` present, else the top-level ``number``.

    Forgejo sends both ``number`` and ``issue.number`` / ``pull_request.number``; some older
    payloads carry only one of them, and comment payloads have no top-level ``number``.
    """
    for field in objects:
        found = _object(payload, field)
        if found is not None and "number" in found:
            return _positive_int(found["number"], field=f"{field}.number")
    if "number" in payload:
        return _positive_int(payload["number"], field="number")
    where = " or ".join([f"{field}.number" for field in objects] + ["number"])
    raise MalformedPayload(f"payload has no {where}")


# --- one mapping per event ---------------------------------------------------------------


def _issues(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    repo = _repo(payload)
    return (issue_key(repo, _number(payload, "issue")),)


def _issue_comment(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    repo = _repo(payload)
    issue = _object(payload, "issue")
    if issue is None:
        raise MalformedPayload("issue_comment payload has no 'issue' object")
    number = _positive_int(issue.get("number"), field="issue.number")
    is_pull = payload.get("is_pull")
    if is_pull is None:
        # Payloads from before `is_pull` existed: a PR's issue carries a `pull_request` object.
        is_pull = issue.get("pull_request") is not None
    elif not isinstance(is_pull, bool):
        raise MalformedPayload(f"is_pull must be a boolean, got {is_pull!r}")
    return (pull_key(repo, number) if is_pull else issue_key(repo, number),)


def _pull_request(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    """The PR's review key alone, whatever its head: the PR's reconcile reads the PR, and an
    open PR's head is the tip of its branch, so the task branch's key would only read again
    (``get_branch``) what that reconcile reports."""
    return (pull_key(_repo(payload), _number(payload, "pull_request")),)


def _pull_request_review(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    repo = _repo(payload)
    # `issue` as a last resort: `pull_request_comment` is also the finer event type of a plain
    # comment on a PR, whose payload is an issue_comment one.
    return (pull_key(repo, _number(payload, "pull_request", "issue")),)


def _push(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    repo = _repo(payload)
    ref = payload.get("ref")
    if not isinstance(ref, str):
        raise MalformedPayload(f"push payload 'ref' must be a string, got {ref!r}")
    if not ref.startswith(_HEADS):
        return ()  # tags and other refs
    branch = ref[len(_HEADS) :]
    return (branch_key(repo, branch),) if is_task_branch(branch) else ()


def _ref_created_or_deleted(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    repo = _repo(payload)
    ref, ref_type = payload.get("ref"), payload.get("ref_type")
    if not isinstance(ref, str) or not isinstance(ref_type, str):
        raise MalformedPayload("create/delete payload needs string 'ref' and 'ref_type'")
    # Forgejo sends the short branch name here; strip a full ref in case a sender does not.
    branch = ref.removeprefix(_HEADS)
    if ref_type != "branch" or not is_task_branch(branch):
        return ()
    return (branch_key(repo, branch),)


def _wiki(payload: Mapping[str, Any]) -> tuple[Key, ...]:
    """A wiki page written or deleted: the topic's key when it is a shared-notes page."""
    page = payload.get("page")
    if not isinstance(page, str):
        raise MalformedPayload(f"page must be a string, got {page!r}")
    topic = topic_of_web_path(page)
    return () if topic is None else (knowledge_key(_repo(payload), topic),)


_MAPPINGS: dict[str, Callable[[Mapping[str, Any]], tuple[Key, ...]]] = {
    "issues": _issues,
    # Finer event types (X-Forgejo-Event-Type) that Forgejo folds into `issues`.
    "issue_assign": _issues,
    "issue_label": _issues,
    "issue_milestone": _issues,
    "issue_comment": _issue_comment,
    "pull_request": _pull_request,
    # Finer event types that Forgejo folds into `pull_request`.
    "pull_request_assign": _pull_request,
    "pull_request_label": _pull_request,
    "pull_request_milestone": _pull_request,
    "pull_request_sync": _pull_request,
    "pull_request_review_request": _pull_request,
    "pull_request_approved": _pull_request_review,
    "pull_request_rejected": _pull_request_review,
    "pull_request_comment": _pull_request_review,
    # Event-type spellings of the three above, and the GitHub-style name.
    "pull_request_review_approved": _pull_request_review,
    "pull_request_review_rejected": _pull_request_review,
    "pull_request_review_comment": _pull_request_review,
    "pull_request_review": _pull_request_review,
    "push": _push,
    "create": _ref_created_or_deleted,
    "delete": _ref_created_or_deleted,
    "wiki": _wiki,
}

# Every event name Forgejo sends (modules/webhook/type.go), whether or not it names keys:
# the receiver reports any other name as "other" so a caller cannot invent metric labels.
KNOWN_EVENTS: frozenset[str] = frozenset(_MAPPINGS) | {
    "fork",
    "repository",
    "release",
    "package",
    "status",
    "schedule",
    "action_run_failure",
    "action_run_recover",
    "action_run_success",
}


def keys_for(event: str, payload: Mapping[str, Any]) -> tuple[Key, ...]:
    """The keys a delivery of ``event`` with ``payload`` names; ``()`` when none concern us.

    Raises ``MalformedPayload`` when the event is one agent-fleet handles but the payload lacks
    the fields it needs or has them with the wrong type.
    """
    mapping = _MAPPINGS.get(event)
    if mapping is None:
        return ()
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"payload must be a JSON object, got {type(payload).__name__}")
    return mapping(payload)


def note_merge(event: str, payload: Mapping[str, Any], *, seen: SeenItems) -> None:
    """Note in ``seen`` a pull request a signed ``pull_request`` delivery shows merged.

    Memory only, and only ever used to hold back a write that the merge makes out of date
    (the ``status/review`` label of a task whose receipt check is all that is left): what the
    task becomes is still decided from reads.
    """
    if event != "pull_request":
        return
    pull = payload.get("pull_request")
    if not isinstance(pull, Mapping) or pull.get("merged") is not True:
        return
    try:
        seen.note_merged(_repo(payload), _number(payload, "pull_request"))
    except MalformedPayload:
        return


LABEL_ACTIONS = frozenset({"label_updated", "label_cleared"})
"""The ``issues`` delivery actions of a label write."""


def is_own_echo(event: str, payload: Mapping[str, Any], *, seen: SeenItems, bot_login: str) -> bool:
    """Whether a delivery is the echo of agent-fleet's own write on an issue.

    It is when the bot is its sender and the issue it carries shows exactly the labels and
    state this process last read or wrote (``reconciler.forgejo.seen``), and the title, body
    and assignees of the issue as last read while that copy is kept: the reconcile that
    made the write already planned from that state, so looking again would read and decide the
    same. Anything else — a person's change, a Matrix command's label (written by the bot but
    not by a reconcile), a close — is not an echo. A comment or label delivery of ours that
    shows the issue closed (or reopened) meanwhile is an echo all the same: the close has its
    own delivery, which is news. Only issues (not pull requests) qualify.
    """
    if event not in ("issues", "issue_comment"):
        return False
    sender = payload.get("sender")
    login = sender.get("login") if isinstance(sender, Mapping) else None
    if not isinstance(login, str) or login.lower() != bot_login.lower():
        return False
    issue = payload.get("issue")
    if not isinstance(issue, Mapping) or issue.get("pull_request") is not None:
        return False
    try:
        repo = _repo(payload)
        # Parsed as a read of the issue is, so it compares field for field with the kept copy.
        shown = Issue.from_api(issue)
    except (MalformedPayload, ValueError):  # MalformedResponse is a ValueError
        return False
    return seen.is_echo(
        repo,
        shown.number,
        labels=shown.labels,
        state=str(shown.state),
        updated_at=shown.updated_at,
        shown_fields={"title": shown.title, "body": shown.body, "assignees": shown.assignees},
        # The echo of our comment or label write may show the issue closed or reopened
        # meanwhile: the close or reopen is delivered as such (`issues` closed/reopened,
        # whoever made it, a merge's "Closes #N" included), and that delivery is the news.
        state_delivered_apart=event == "issue_comment" or payload.get("action") in LABEL_ACTIONS,
    )
