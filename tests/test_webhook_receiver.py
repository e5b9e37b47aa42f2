"""The Forgejo webhook receiver over plain WSGI: signatures, limits, parsing, answers, records."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import bottle  # type: ignore[import-untyped]
import pytest
from structlog.testing import capture_logs

from reconciler.forgejo.seen import SeenItems
from reconciler.forgejo.types import Issue
from reconciler.keys import Key, issue_key, pull_key
from tests.forgejo_data import EXAMPLES
from webhook.events import is_own_echo
from webhook.receiver import WEBHOOK_PATH, install_forgejo_webhook

SECRET = "s3cret-hook-key"
LIMIT = 64 * 1024

ISSUE_OPENED = (EXAMPLES / "webhook-issues-opened.json").read_bytes()
COMMENT_CREATED = (EXAMPLES / "webhook-issue_comment-created.json").read_bytes()
PUSH_TO_MASTER = (EXAMPLES / "webhook-push.json").read_bytes()
REVIEW_REJECTED = (EXAMPLES / "webhook-pull_request_review-rejected.json").read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class UnreadableStream(io.RawIOBase):
    """A request body that must never be read."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the receiver read a body it should have refused unread")


@dataclass
class Receiver:
    """A Bottle app with the receiver installed, recording what it enqueues and reports."""

    secret: str | None = SECRET
    max_body_bytes: int = LIMIT
    enqueued: list[Key] = field(default_factory=list)
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    is_echo: Callable[[str, Mapping[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        # catchall=False: a bug in the handler fails the test instead of becoming a 500.
        self.app = bottle.Bottle()
        self.app.config["catchall"] = False
        install_forgejo_webhook(
            self.app,
            secret=self.secret,
            enqueue=self.enqueued.append,
            max_body_bytes=self.max_body_bytes,
            on_delivery=lambda event, result: self.deliveries.append((event, result)),
            is_echo=self.is_echo,
        )

    def post(
        self,
        body: bytes,
        *,
        event: str = "issues",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        content_length: str | None = None,
        stream: io.RawIOBase | io.BytesIO | None = None,
        input_terminated: bool = False,
    ) -> Answer:
        """POST ``body``; signed with ``SECRET`` in X-Forgejo-Signature unless headers say."""
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ.update(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": WEBHOOK_PATH,
                "CONTENT_TYPE": content_type,
                "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
                "wsgi.input": stream if stream is not None else io.BytesIO(body),
                "HTTP_X_FORGEJO_EVENT": event,
                "HTTP_X_FORGEJO_EVENT_TYPE": event,
                "HTTP_X_FORGEJO_DELIVERY": "6b4b5d6e-0c55-4d3b-9a36-3d1f0c5e2a11",
            }
        )
        if input_terminated:
            environ["wsgi.input_terminated"] = True
        if not content_length and content_length is not None:
            del environ["CONTENT_LENGTH"]
        given = {"X-Forgejo-Signature": sign(body)} if headers is None else headers
        for name, value in given.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headerlist: list[tuple[str, str]], exc: Any = None) -> Any:
            started.append((status, headerlist))
            return lambda data: None

        chunks = self.app(environ, start_response)
        try:
            answer = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        status, headerlist = started[0]
        return Answer(int(status.split()[0]), dict(headerlist), answer)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


# --- accepted ------------------------------------------------------------------------------


def test_signed_delivery_is_accepted_and_its_keys_enqueued(receiver: Receiver) -> None:
    """A correctly signed issues delivery answers 202 and enqueues the issue's key."""
    answer = receiver.post(ISSUE_OPENED, event="issues")
    assert answer.status == 202
    assert answer.body == b""  # the status says it; the keys are in the debug log
    assert receiver.enqueued == [issue_key("example/example", 1)]
    assert receiver.deliveries == [("issues", "accepted")]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitea-Signature": sign(ISSUE_OPENED)},
        {"X-Hub-Signature-256": "sha256=" + sign(ISSUE_OPENED)},
        {"X-Forgejo-Signature": sign(ISSUE_OPENED).upper()},
        # What Forgejo really sends: every header, the same value each time.
        {
            "X-Forgejo-Signature": sign(ISSUE_OPENED),
            "X-Gitea-Signature": sign(ISSUE_OPENED),
            "X-Gogs-Signature": sign(ISSUE_OPENED),
            "X-Hub-Signature": "sha1=0000",
            "X-Hub-Signature-256": "sha256=" + sign(ISSUE_OPENED),
        },
        # An empty X-Forgejo-Signature counts as absent; the next header decides.
        {"X-Forgejo-Signature": "", "X-Gitea-Signature": sign(ISSUE_OPENED)},
    ],
    ids=["gitea", "hub-sha256", "uppercase-hex", "all-headers", "empty-forgejo-then-gitea"],
)
def test_other_signature_headers_are_accepted(receiver: Receiver, headers: dict[str, str]) -> None:
    """X-Gitea-Signature and X-Hub-Signature-256 carry the same HMAC and are honoured."""
    answer = receiver.post(ISSUE_OPENED, headers=headers)
    assert answer.status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


def _echo_receiver(seen: SeenItems, bot_login: str) -> Receiver:
    return Receiver(
        is_echo=lambda event, payload: is_own_echo(event, payload, seen=seen, bot_login=bot_login)
    )


def test_the_echo_of_our_own_write_is_answered_204_and_not_enqueued() -> None:
    """A delivery the bot caused, showing the issue as last seen, enqueues nothing; its
    updated_at becomes the one seen, so the resync skips the issue too."""
    seen = SeenItems()
    seen.note("example/example", 1, None, labels=(), state="open")
    receiver = _echo_receiver(seen, bot_login="example")
    answer = receiver.post(ISSUE_OPENED, event="issues")
    assert answer.status == 204
    assert receiver.enqueued == []
    assert receiver.deliveries == [("issues", "echo")]
    listed = json.loads(ISSUE_OPENED)["issue"]["updated_at"]
    assert seen.is_unchanged("example/example", 1, datetime.fromisoformat(listed))


@pytest.mark.parametrize(
    ("bot_login", "labels", "state"),
    [
        ("fleet-bot", (), "open"),  # a person sent it
        ("example", ("status/todo",), "open"),  # the labels differ from what we left
        ("example", (), "closed"),  # the state differs
    ],
)
def test_a_delivery_that_shows_something_new_is_enqueued(
    bot_login: str, labels: tuple[str, ...], state: str
) -> None:
    """Another sender, other labels or another state: the delivery is not an echo."""
    seen = SeenItems()
    seen.note("example/example", 1, None, labels=labels, state=state)
    receiver = _echo_receiver(seen, bot_login=bot_login)
    assert receiver.post(ISSUE_OPENED, event="issues").status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


def test_the_echo_of_an_earlier_or_unanswered_write_of_ours_is_an_echo() -> None:
    """Deliveries lag: the echo of our first label write arriving after our second, or of a
    write whose answer has not come back yet, is still an echo; a fresh read forgets them."""
    seen = SeenItems()
    seen.note("example/example", 1, None, labels=("fleet/task",), state="open")
    seen.expect_labels("example/example", 1, ())  # the delivery's labels: none
    seen.note_labels("example/example", 1, ("fleet/task", "status/todo"))
    seen.note_labels("example/example", 1, ("fleet/task", "status/doing"))
    receiver = _echo_receiver(seen, bot_login="example")
    assert receiver.post(ISSUE_OPENED, event="issues").status == 204
    seen.note("example/example", 1, None, labels=("fleet/task",), state="open")
    assert receiver.post(ISSUE_OPENED, event="issues").status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


def test_an_edit_by_the_bots_account_that_this_process_did_not_make_is_not_an_echo() -> None:
    """While the issue as last read is kept, a delivery by the bot's account showing another
    title, body or assignees (a script using the bot's token, another process) is news: it is
    enqueued and the kept copy dropped, so the reconcile reads the issue afresh."""
    delivered = json.loads(ISSUE_OPENED)["issue"]
    kept = Issue.from_api({**delivered, "title": "An older title"})
    seen = SeenItems()
    seen.note("example/example", 1, None, labels=(), state="open", copy=kept)
    receiver = _echo_receiver(seen, bot_login="example")
    assert receiver.post(ISSUE_OPENED, event="issues").status == 202
    assert seen.get("example/example", 1).copy is None
    same = Issue.from_api(delivered)
    seen.note("example/example", 1, None, labels=(), state="open", copy=same)
    assert receiver.post(ISSUE_OPENED, event="issues").status == 204


def _closed(payload: bytes, **changes: object) -> bytes:
    body = json.loads(payload)
    body["issue"]["state"] = "closed"
    body.update(changes)
    return json.dumps(body).encode()


def test_the_echo_of_our_comment_or_label_on_an_issue_closed_meanwhile_is_an_echo() -> None:
    """The echo of our comment, or of our label write, shows the issue closed by someone
    meanwhile (a merge's "Closes #N"): the close is delivered as such, and that delivery is the
    news — this one is an echo. The kept copy, from before the close, is dropped, and its
    ``updated_at`` is not taken as seen, so the resync still finds the close should its own
    delivery be lost. A close delivered by the bot itself is news."""
    delivered = json.loads(ISSUE_OPENED)["issue"]
    seen = SeenItems()
    seen.note("example/example", 1, None, labels=(), state="open",
              copy=Issue.from_api(delivered))  # fmt: skip
    receiver = _echo_receiver(seen, bot_login="example")
    comment = _closed(COMMENT_CREATED)
    assert receiver.post(comment, event="issue_comment").status == 204
    item = seen.get("example/example", 1)
    assert item is not None and item.copy is None and item.updated_at is None
    labelled = _closed(ISSUE_OPENED, action="label_updated")
    assert receiver.post(labelled, event="issues").status == 204
    assert receiver.enqueued == []
    closed = _closed(ISSUE_OPENED, action="closed")
    assert receiver.post(closed, event="issues").status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]
    # Other labels than ours, on the closed issue: news as ever.
    relabelled = json.loads(labelled)
    relabelled["issue"]["labels"] = [json.loads((EXAMPLES / "api-label.json").read_bytes())]
    assert receiver.post(json.dumps(relabelled).encode(), event="issues").status == 202


def test_an_issue_never_seen_is_not_an_echo() -> None:
    """Without a record of the issue the delivery is enqueued (a new issue, a restart)."""
    receiver = _echo_receiver(SeenItems(), bot_login="example")
    assert receiver.post(ISSUE_OPENED, event="issues").status == 202


def test_review_delivery_enqueues_the_pull_request(receiver: Receiver) -> None:
    """A recorded rejected-review delivery names its PR for the review controller."""
    answer = receiver.post(REVIEW_REJECTED, event="pull_request_rejected")
    assert answer.status == 202
    assert receiver.enqueued == [pull_key("a_nice_user/hello_world_ci", 7)]


def test_event_name_falls_back_to_the_gitea_header(receiver: Receiver) -> None:
    """Without X-Forgejo-Event the X-Gitea-Event header names the event."""
    headers = {
        "X-Forgejo-Event": "",
        "X-Gitea-Event": "issues",
        "X-Forgejo-Signature": sign(ISSUE_OPENED),
    }
    answer = receiver.post(ISSUE_OPENED, event="", headers=headers)
    assert answer.status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


def test_duplicate_delivery_enqueues_the_same_key_again(receiver: Receiver) -> None:
    """Deduplication is the queue's job: a replayed delivery enqueues an equal key."""
    receiver.post(ISSUE_OPENED)
    receiver.post(ISSUE_OPENED)
    assert len(receiver.enqueued) == 2
    assert receiver.enqueued[0] == receiver.enqueued[1] == issue_key("example/example", 1)


def test_form_encoded_delivery_is_verified_over_the_raw_body(receiver: Receiver) -> None:
    """A hook set to form content type signs the whole form; the payload field is parsed."""
    form = urlencode({"payload": ISSUE_OPENED.decode()}).encode()
    answer = receiver.post(
        form,
        content_type="application/x-www-form-urlencoded",
        headers={"X-Forgejo-Signature": sign(form)},
    )
    assert answer.status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


def test_body_without_content_length_is_read_to_its_end(receiver: Receiver) -> None:
    """A chunked body (no Content-Length, a server that ends the stream) is accepted."""
    answer = receiver.post(ISSUE_OPENED, content_length="", input_terminated=True)
    assert answer.status == 202
    assert receiver.enqueued == [issue_key("example/example", 1)]


# --- ignored -------------------------------------------------------------------------------


def test_event_agent_fleet_does_not_care_about_answers_204(receiver: Receiver) -> None:
    """A push to master is signed and well formed, but names no key: 204, empty body."""
    answer = receiver.post(PUSH_TO_MASTER, event="push")
    assert answer.status == 204
    assert answer.body == b""
    assert "Content-Type" not in answer.headers
    assert receiver.enqueued == []
    assert receiver.deliveries == [("push", "ignored")]


def test_unknown_event_name_is_reported_as_other(receiver: Receiver) -> None:
    """A made-up event name never becomes a metrics label of its own."""
    answer = receiver.post(ISSUE_OPENED, event="made-up-event")
    assert answer.status == 204
    assert receiver.deliveries == [("other", "ignored")]


# --- refused -------------------------------------------------------------------------------


def _deep_json() -> bytes:
    return b"[" * 30_000 + b"]" * 30_000


def _form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


# (name, body, post() keyword arguments, status, error code, on_delivery result)
REFUSALS: list[tuple[str, bytes, dict[str, Any], int, str, str]] = [
    (
        "wrong-secret",
        ISSUE_OPENED,
        {"headers": {"X-Forgejo-Signature": sign(ISSUE_OPENED, "another-secret")}},
        401,
        "bad_signature",
        "bad_signature",
    ),
    (
        "signature-of-other-body",
        ISSUE_OPENED,
        {"headers": {"X-Forgejo-Signature": sign(PUSH_TO_MASTER)}},
        401,
        "bad_signature",
        "bad_signature",
    ),
    (
        # The first non-empty header decides; a right one further down does not rescue it.
        "wrong-forgejo-right-gitea",
        ISSUE_OPENED,
        {
            "headers": {
                "X-Forgejo-Signature": "00" * 32,
                "X-Gitea-Signature": sign(ISSUE_OPENED),
            }
        },
        401,
        "bad_signature",
        "bad_signature",
    ),
    (
        "hub-without-prefix",
        ISSUE_OPENED,
        {"headers": {"X-Hub-Signature-256": sign(ISSUE_OPENED)}},
        401,
        "bad_signature",
        "bad_signature",
    ),
    (
        "non-ascii-signature",
        ISSUE_OPENED,
        {"headers": {"X-Forgejo-Signature": "é" * 64}},
        401,
        "bad_signature",
        "bad_signature",
    ),
    ("missing-signature", ISSUE_OPENED, {"headers": {}}, 401, "missing_signature", "bad_signature"),
    (
        # What Forgejo sends for a hook without a secret.
        "empty-signatures",
        ISSUE_OPENED,
        {
            "headers": {
                "X-Forgejo-Signature": "",
                "X-Gitea-Signature": "",
                "X-Hub-Signature-256": "sha256=",
            }
        },
        401,
        "missing_signature",
        "bad_signature",
    ),
    (
        "declared-too-large",
        ISSUE_OPENED,
        {"content_length": str(LIMIT + 1), "stream": UnreadableStream()},
        413,
        "body_too_large",
        "too_large",
    ),
    (
        "turns-out-too-large",
        b" " * (LIMIT + 1),
        {"content_length": "", "input_terminated": True},
        413,
        "body_too_large",
        "too_large",
    ),
    (
        "shorter-than-content-length",
        ISSUE_OPENED,
        {"content_length": str(len(ISSUE_OPENED) + 10)},
        400,
        "bad_content_length",
        "malformed",
    ),
    (
        "content-length-not-a-number",
        ISSUE_OPENED,
        {"content_length": "lots"},
        400,
        "bad_content_length",
        "malformed",
    ),
    (
        "truncated-body",
        ISSUE_OPENED[: len(ISSUE_OPENED) // 2],
        {},
        400,
        "malformed_json",
        "malformed",
    ),
    ("not-json", b"payload of the hook\n", {}, 400, "malformed_json", "malformed"),
    ("json-array", b"[" + ISSUE_OPENED + b"]", {}, 400, "malformed_json", "malformed"),
    ("json-string", b'"issues"', {}, 400, "malformed_json", "malformed"),
    ("not-utf8", b'{"action": "\xff"}', {}, 400, "malformed_json", "malformed"),
    ("deeply-nested", _deep_json(), {}, 400, "malformed_json", "malformed"),
    ("empty-body", b"", {}, 400, "malformed_json", "malformed"),
    (
        "payload-without-repository",
        b'{"action": "opened", "number": 1, "issue": {"number": 1}}',
        {},
        400,
        "malformed_payload",
        "malformed",
    ),
    (
        "form-without-payload-field",
        _form({"body": "{}"}),
        {"content_type": "application/x-www-form-urlencoded"},
        400,
        "malformed_payload",
        "malformed",
    ),
    (
        "form-payload-not-json",
        _form({"payload": "{not json"}),
        {"content_type": "application/x-www-form-urlencoded"},
        400,
        "malformed_json",
        "malformed",
    ),
    (
        "unsupported-content-type",
        ISSUE_OPENED,
        {"content_type": "text/xml"},
        415,
        "unsupported_content_type",
        "malformed",
    ),
]


@pytest.mark.parametrize(
    ("body", "options", "status", "code", "result"),
    [refusal[1:] for refusal in REFUSALS],
    ids=[refusal[0] for refusal in REFUSALS],
)
def test_refused_delivery_is_a_json_error_and_enqueues_nothing(
    receiver: Receiver,
    body: bytes,
    options: dict[str, Any],
    status: int,
    code: str,
    result: str,
) -> None:
    """Each refusal has its status and stable code, a message, and no key reaches the queue."""
    answer = receiver.post(body, **options)
    assert answer.status == status
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()
    assert set(error) == {"error", "message"}
    assert error["error"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert receiver.enqueued == []
    assert receiver.deliveries == [("issues", result)]


@pytest.mark.parametrize("secret", [None, ""])
def test_without_a_secret_every_delivery_is_refused(secret: str | None) -> None:
    """An unauthenticated receiver would let anyone drive the fleet, so none is offered."""
    receiver = Receiver(secret=secret)
    for headers in ({"X-Forgejo-Signature": sign(ISSUE_OPENED, "")}, {}):
        answer = receiver.post(ISSUE_OPENED, headers=headers)
        assert answer.status == 401
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"] == "webhook_secret_not_configured"
        assert "not configured" in answer.json()["message"]
    assert receiver.enqueued == []


def test_body_at_the_limit_is_accepted() -> None:
    """The limit is inclusive: a body of exactly max_body_bytes is read and judged."""
    receiver = Receiver(max_body_bytes=len(ISSUE_OPENED))
    assert receiver.post(ISSUE_OPENED).status == 202


def test_limit_must_be_positive() -> None:
    """A zero limit would refuse everything; it is a configuration mistake."""
    with pytest.raises(ValueError, match="max_body_bytes"):
        install_forgejo_webhook(
            bottle.Bottle(), secret=SECRET, enqueue=lambda key: None, max_body_bytes=0
        )


# --- records -------------------------------------------------------------------------------


def test_each_delivery_is_logged_with_its_headers_and_keys(receiver: Receiver) -> None:
    """webhook.received carries event, event type, delivery id, result and keys."""
    with capture_logs() as logs:
        receiver.post(
            ISSUE_OPENED,
            headers={
                "X-Forgejo-Signature": sign(ISSUE_OPENED),
                "X-Forgejo-Event-Type": "issue_assign",
            },
        )
    assert logs == [
        {
            "event": "webhook.received",
            "log_level": "debug",
            "forgejo_event": "issues",
            "event_type": "issue_assign",
            "delivery": "6b4b5d6e-0c55-4d3b-9a36-3d1f0c5e2a11",
            "result": "accepted",
            "keys": ["assignment:example/example#1"],
        }
    ]


def test_refused_delivery_is_logged_with_its_error_code(receiver: Receiver) -> None:
    """A refusal's log line says which check refused it."""
    with capture_logs() as logs:
        receiver.post(ISSUE_OPENED, headers={})
    assert [(line["result"], line["error"]) for line in logs] == [
        ("bad_signature", "missing_signature")
    ]


def test_receiver_works_without_a_delivery_callback() -> None:
    """on_delivery is optional."""
    app = bottle.Bottle()
    app.config["catchall"] = False
    enqueued: list[Key] = []
    install_forgejo_webhook(app, secret=SECRET, enqueue=enqueued.append)
    receiver = Receiver()
    receiver.app = app
    assert receiver.post(ISSUE_OPENED).status == 202
    assert enqueued == [issue_key("example/example", 1)]
