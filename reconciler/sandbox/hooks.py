"""Webhooks of the sandbox forge: which hooks an event reaches, payloads, signed delivery.

``ForgejoSandbox`` passes every ``ForgeEvent`` of ``state`` to ``WebhookDispatcher.announce``,
which renders the payload at once (from the state as it is at that moment, under the state lock)
and queues one request per subscribed, active hook. One background thread delivers the queue in
order, like Forgejo's hook task queue: a 5 s timeout, any 2xx is success, never retried, every
attempt recorded. Payloads are Forgejo's (``modules/structs/hook.go``), marshalled with 2-space
indentation and signed with HMAC-SHA256 of the exact body bytes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.sandbox import shapes
from reconciler.sandbox.state import ForgeEvent, ForgeState, Hook

DELIVER_TIMEOUT = 5.0

# Forgejo's fine-grained hook event -> the X-Forgejo-Event header (modules/webhook/type.go).
EVENT_HEADER = {
    "issues": "issues",
    "issue_assign": "issues",
    "issue_label": "issues",
    "issue_milestone": "issues",
    "issue_comment": "issue_comment",
    "pull_request": "pull_request",
    "pull_request_assign": "pull_request",
    "pull_request_label": "pull_request",
    "pull_request_milestone": "pull_request",
    "pull_request_sync": "pull_request",
    "pull_request_review_request": "pull_request",
    "pull_request_comment": "issue_comment",
    "pull_request_review_approved": "pull_request_approved",
    "pull_request_review_rejected": "pull_request_rejected",
    "pull_request_review_comment": "pull_request_comment",
    "push": "push",
    "wiki": "wiki",
}

# What a subscription name in a hook's ``events`` covers (routers/api/v1/utils/hook.go):
# "issues" implies every issue sub-event and issue comments, "pull_request" every PR one.
_ISSUE_EVENTS = ("issue_assign", "issue_label", "issue_milestone", "issue_comment")
_PULL_EVENTS = (
    "pull_request_assign",
    "pull_request_label",
    "pull_request_milestone",
    "pull_request_comment",
    "pull_request_review_approved",
    "pull_request_review_rejected",
    "pull_request_review_comment",
    "pull_request_sync",
    "pull_request_review_request",
)
_REVIEW_EVENTS = (
    "pull_request_review_approved",
    "pull_request_review_rejected",
    "pull_request_review_comment",
)
# The order Forgejo lists a hook's events in (models/webhook/webhook.go EventsArray).
_EVENTS_ORDER = (
    "create",
    "delete",
    "fork",
    "issues",
    *_ISSUE_EVENTS,
    "push",
    "pull_request",
    *_PULL_EVENTS,
    "wiki",
    "repository",
    "release",
    "package",
    "action_run",
)


def subscribed_events(names: list[str]) -> list[str]:
    """The fine-grained events a hook's ``events`` list subscribes to, in Forgejo's order.

    Names are matched case-insensitively; "issues" implies every issue sub-event and issue
    comments, "pull_request" every pull request one, "pull_request_review" the three reviews.
    """
    given = {name.lower() for name in names}
    wanted = set(given)
    if "issues" in given:
        wanted.update(_ISSUE_EVENTS)
    if "issues_only" in given:
        wanted.add("issues")
    if "pull_request" in given:
        wanted.update(_PULL_EVENTS)
    if "pull_request_only" in given:
        wanted.add("pull_request")
    if "pull_request_review" in given:
        wanted.update(_REVIEW_EVENTS)
    return [name for name in _EVENTS_ORDER if name in wanted]


def _branch_matches(pattern: str, branch: str) -> bool:
    """Forgejo's branch filter: a glob, with ``{a,b}`` alternatives."""
    if not pattern or pattern == "*":
        return True
    alternatives = [pattern]
    if pattern.startswith("{") and pattern.endswith("}"):
        alternatives = pattern[1:-1].split(",")
    return any(fnmatch.fnmatchcase(branch, alt.strip()) for alt in alternatives)


def is_subscribed(hook: Hook, event_type: str, *, ref: str = "") -> bool:
    """Whether an active hook receives this event (branch filter applies to pushes)."""
    if not hook.active or event_type not in subscribed_events(hook.events):
        return False
    if event_type == "push":
        return _branch_matches(hook.branch_filter, ref.removeprefix("refs/heads/"))
    return True


def marshal(payload: Mapping[str, Any]) -> bytes:
    """Go's ``json.MarshalIndent(payload, "", "  ")``: 2 spaces, HTML characters escaped."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


# Events whose payload shows the repository as its owner sees it; the others show the
# permissions of the user who acted (services/webhook/notifier.go).
_OWNER_VIEW = ("push", "pull_request_sync", "pull_request_label")
# Forgejo's [webhook] PAYLOAD_COMMIT_LIMIT default.
PAYLOAD_COMMIT_LIMIT = 15


def build_payload(app_url: str, state: ForgeState, event: ForgeEvent) -> dict[str, Any]:
    """The payload Forgejo sends for ``event``."""
    repo = event.repo
    viewer = repo.owner if event.event_type in _OWNER_VIEW else event.sender
    repository = shapes.repository(app_url, state, repo, viewer=viewer)
    sender = shapes.user(app_url, event.sender)
    changes = (
        {name: {"from": old} for name, old in event.changes.items()} if event.changes else None
    )
    if event.event_type == "wiki":
        # structs.WikiPayload (services/webhook/notifier.go NewWikiPage/EditWikiPage/DeleteWikiPage).
        return {
            "action": event.action,
            "repository": repository,
            "sender": sender,
            "page": event.page,
            "comment": event.message,
        }
    if event.event_type == "push":
        commits = [shapes.payload_commit(app_url, repo, c) for c in event.commits]
        return {
            "ref": event.ref,
            "before": event.before,
            "after": event.after,
            "compare_url": f"{app_url}{repo.full_name}/compare/{event.before}...{event.after}",
            "commits": commits[:PAYLOAD_COMMIT_LIMIT],
            "total_commits": len(commits),
            "head_commit": commits[0] if commits else None,
            "repository": repository,
            "pusher": sender,
            "sender": sender,
        }
    issue = event.issue
    assert issue is not None
    if event.comment is not None:
        payload: dict[str, Any] = {
            "action": event.action,
            "issue": shapes.issue(app_url, state, issue),
        }
        if issue.is_pull:
            payload["pull_request"] = shapes.pull_request(app_url, state, issue)
        payload["comment"] = shapes.comment(app_url, event.comment)
        if changes:
            payload["changes"] = changes
        payload.update(repository=repository, sender=sender, is_pull=issue.is_pull)
        return payload
    payload = {"action": event.action, "number": issue.number}
    if changes:
        payload["changes"] = changes
    if not issue.is_pull:
        payload.update(
            issue=shapes.issue(app_url, state, issue),
            repository=repository,
            sender=sender,
            commit_id="",
        )
        return payload
    review = event.review
    payload.update(
        pull_request=shapes.pull_request(app_url, state, issue),
        # A review names its reviewer here (services/webhook/notifier.go PullRequestReview).
        requested_reviewer=shapes.user(app_url, review.user) if review else None,
        repository=repository,
        sender=sender,
        commit_id="",
        review={"type": event.event_type, "content": review.body} if review else None,
    )
    return payload


def signed_headers(*, hook: Hook, event_type: str, delivery_id: str, body: bytes) -> dict[str, str]:
    """Forgejo's delivery headers (services/webhook/shared/payloader.go AddDefaultHeaders)."""
    secret = hook.secret.encode()
    sha256 = hmac.new(secret, body, hashlib.sha256).hexdigest() if hook.secret else ""
    sha1 = hmac.new(secret, body, hashlib.sha1).hexdigest() if hook.secret else ""
    event = EVENT_HEADER[event_type]
    headers = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
    for prefix in ("X-Forgejo", "X-Gitea", "X-Gogs"):
        headers[f"{prefix}-Delivery"] = delivery_id
        headers[f"{prefix}-Event"] = event
        headers[f"{prefix}-Event-Type"] = event_type
    headers["X-Forgejo-Signature"] = sha256
    headers["X-Gitea-Signature"] = sha256
    headers["X-Gogs-Signature"] = sha256
    headers["X-Hub-Signature"] = f"sha1={sha1}"
    headers["X-Hub-Signature-256"] = f"sha256={sha256}"
    headers["X-GitHub-Delivery"] = delivery_id
    headers["X-GitHub-Event"] = event
    headers["X-GitHub-Event-Type"] = event_type
    if hook.authorization_header:
        headers["Authorization"] = hook.authorization_header
    return headers


@dataclass(frozen=True)
class QueuedWebhook:
    """A webhook request waiting for the delivery thread."""

    hook_id: int
    url: str
    event: str  # X-Forgejo-Event, e.g. "issues"
    event_type: str  # X-Forgejo-Event-Type, e.g. "issue_label"
    delivery_id: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class Delivery(QueuedWebhook):
    """One delivery attempt: the response status, or the error, or that it was dropped."""

    status_code: int | None = None
    error: str | None = None
    dropped: bool = False

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


# Deliver straight to the hook URL: proxy variables of the environment do not apply, as
# Forgejo uses a proxy for webhooks only when [webhook] PROXY_URL is set.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def deliver(request: QueuedWebhook, *, timeout: float = DELIVER_TIMEOUT) -> Delivery:
    """POST one webhook and record the outcome; never raises, never retries."""
    http_request = urllib.request.Request(
        request.url, data=request.payload, headers=dict(request.headers), method="POST"
    )
    status: int | None = None
    error: str | None = None
    try:
        with _DIRECT.open(http_request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as refused:
        status = refused.code
        error = f"HTTP {refused.code}"
    except (OSError, ValueError) as failure:
        error = str(failure) or type(failure).__name__
    return Delivery(**_fields(request), status_code=status, error=error)


def _fields(request: QueuedWebhook) -> dict[str, Any]:
    return {
        "hook_id": request.hook_id,
        "url": request.url,
        "event": request.event,
        "event_type": request.event_type,
        "delivery_id": request.delivery_id,
        "payload": request.payload,
        "headers": request.headers,
    }


class WebhookDispatcher:
    """Turns forge events into queued requests and delivers them on one background thread."""

    def __init__(self, *, app_url: Callable[[], str], state: Callable[[], ForgeState]) -> None:
        self._app_url = app_url
        self._state = state
        self.enabled = True
        self.deliveries: list[Delivery] = []
        self._queue: deque[QueuedWebhook] = deque()
        self._in_flight = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def announce(self, event: ForgeEvent) -> None:
        """Queue ``event`` for every active hook of its repository that subscribes to it."""
        ref = event.ref
        hooks = [
            h for h in event.repo.hooks.values() if is_subscribed(h, event.event_type, ref=ref)
        ]
        if not hooks:
            return
        body = marshal(build_payload(self._app_url(), self._state(), event))
        for hook in hooks:
            delivery_id = str(uuid.uuid4())
            request = QueuedWebhook(
                hook_id=hook.id,
                url=hook.url,
                event=EVENT_HEADER[event.event_type],
                event_type=event.event_type,
                delivery_id=delivery_id,
                payload=body,
                headers=signed_headers(
                    hook=hook, event_type=event.event_type, delivery_id=delivery_id, body=body
                ),
            )
            self._enqueue(request)

    def _enqueue(self, request: QueuedWebhook) -> None:
        with self._changed:
            if not self.enabled:
                # Like a webhook lost on the way: recorded, never sent.
                self.deliveries.append(
                    Delivery(**_fields(request), error="webhooks disabled", dropped=True)
                )
                return
            self._queue.append(request)
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-webhooks", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def pending(self) -> list[QueuedWebhook]:
        """Requests queued and not yet attempted."""
        with self._changed:
            return list(self._queue)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every queued request has been attempted; TimeoutError past ``timeout``."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: not self._queue and not self._in_flight, timeout=timeout
            )
            if not done:
                raise TimeoutError(
                    f"{len(self._queue) + self._in_flight} webhook(s) still undelivered "
                    f"after {timeout} s"
                )

    def stop(self, timeout: float = DELIVER_TIMEOUT + 1) -> None:
        """Stop the delivery thread until ``resume``; queued requests stay in ``pending()``."""
        with self._changed:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._changed.notify_all()
        if thread is not None:
            thread.join(timeout)

    def resume(self) -> None:
        """Deliver again after ``stop`` (starting the thread if requests are waiting)."""
        with self._changed:
            self._stopping = False
            if self._queue and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-webhooks", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                request = self._queue.popleft()
                self._in_flight += 1
            outcome = deliver(request)
            with self._changed:
                self.deliveries.append(outcome)
                self._in_flight -= 1
                self._changed.notify_all()
