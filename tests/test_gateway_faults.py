"""Marker comments stay exactly once when a write's outcome is unknown (issue 11, finding 1).

A transport in front of the in-memory Forgejo times out chosen writes either after they
landed (the answer is lost) or before (the request is held and delivered later, as a slow
proxy does). Whatever the order, Forgejo ends with one bot comment per marker holding the
newest text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from reconciler.errors import ForgejoServerError, WaitingError
from reconciler.forgejo.gateway import ForgejoGateway, marker_tag
from reconciler.forgejo.types import Comment
from reconciler.sandbox import ForgejoSandbox

BASE_URL = "http://localhost:3000"
REPO = "fleet-admin/widgets"
SETTLE = 10.0


class FaultyTransport(httpx.BaseTransport):
    """Forwards to the sandbox; the writes a test picks time out before or after landing."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.fail: Callable[[httpx.Request], str | None] = lambda request: None
        self.held: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        mode = self.fail(request)
        if mode == "after":  # the write lands, its answer is lost
            self.inner.handle_request(request).read()
            raise httpx.ReadTimeout("timed out after the write", request=request)
        if mode == "before":  # held on the way; lands when the test releases it
            request.read()
            self.held.append(request)
            raise httpx.ReadTimeout("timed out before the write", request=request)
        return self.inner.handle_request(request)

    def release(self) -> None:
        """The held requests reach Forgejo now, late."""
        held, self.held = self.held, []
        for request in held:
            self.inner.handle_request(request).read()


class Seconds:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def once(
    method: str, suffix: str, mode: str, *, times: int = 1
) -> Callable[[httpx.Request], str | None]:
    """Fail the first ``times`` requests with this method whose path ends with ``suffix``."""
    left = [times]

    def pick(request: httpx.Request) -> str | None:
        if request.method == method and request.url.path.endswith(suffix) and left[0]:
            left[0] -= 1
            return mode
        return None

    return pick


@pytest.fixture
def sandbox() -> ForgejoSandbox:
    forge = ForgejoSandbox()
    forge.create_repo(REPO)
    forge.create_issue(REPO, title="make widgets")
    return forge


@pytest.fixture
def transport(sandbox: ForgejoSandbox) -> FaultyTransport:
    return FaultyTransport(httpx.WSGITransport(app=sandbox.app))


@pytest.fixture
def seconds() -> Seconds:
    return Seconds()


@pytest.fixture
def gateway(
    sandbox: ForgejoSandbox, transport: FaultyTransport, seconds: Seconds
) -> Iterator[ForgejoGateway]:
    with ForgejoGateway(
        BASE_URL,
        sandbox.admin_token,
        transport=transport,
        clock=seconds,
        settle_after=SETTLE,
        sleep=lambda s: None,
    ) as gw:
        yield gw


def marked(gateway: ForgejoGateway, marker: str) -> list[Comment]:
    tag = marker_tag(marker)
    return [c for c in gateway.list_comments(REPO, 1) if tag in c.body]


def upsert_until_done(
    gateway: ForgejoGateway,
    body: str,
    *,
    transport: FaultyTransport,
    seconds: Seconds,
    comments: tuple[Comment, ...] | None = None,
) -> None:
    """What the loop does with the key: try again after each waiting answer, until written."""
    for _ in range(5):
        try:
            gateway.upsert_marker_comment(REPO, 1, marker="status", body=body, comments=comments)
            return
        except WaitingError as exc:
            transport.release()  # the held write lands while the key waits
            seconds.now += exc.retry_after
    pytest.fail("the upsert never went through")


def test_a_create_whose_answer_was_lost_is_found_not_made_again(
    gateway: ForgejoGateway, transport: FaultyTransport, seconds: Seconds
) -> None:
    """A create that landed but timed out is found by re-reading: one comment, no error."""
    transport.fail = once("POST", "/issues/1/comments", "after")
    comment, outcome = gateway.upsert_marker_comment(
        REPO, 1, marker="status", body="⏳ waiting", comments=()
    )
    assert outcome == "created"
    upsert_until_done(gateway, "⏳ waiting", transport=transport, seconds=seconds)
    assert [c.id for c in marked(gateway, "status")] == [comment.id]


def test_a_create_held_past_the_timeout_is_not_made_twice(
    gateway: ForgejoGateway, transport: FaultyTransport, seconds: Seconds
) -> None:
    """A create delayed past the client timeout lands late; the retry still makes no second."""
    transport.fail = once("POST", "/issues/1/comments", "before")
    with pytest.raises(ForgejoServerError):
        gateway.upsert_marker_comment(REPO, 1, marker="status", body="⏳ waiting", comments=())
    # The issue still shows no comments (the write is in flight): the caller says so.
    upsert_until_done(gateway, "⏳ waiting", transport=transport, seconds=seconds, comments=())
    transport.release()
    bodies = [c.body for c in marked(gateway, "status")]
    assert len(bodies) == 1, bodies
    assert bodies[0].endswith("⏳ waiting")


def test_an_edit_that_lands_late_does_not_leave_stale_text(
    gateway: ForgejoGateway, transport: FaultyTransport, seconds: Seconds
) -> None:
    """An edit delayed past the timeout cannot overwrite the newer text written after it."""
    gateway.upsert_marker_comment(REPO, 1, marker="status", body="🤖 assigned")
    # An edit is idempotent, so the gateway itself tries it 1 + read_retries times: all held.
    transport.fail = once("PATCH", "/issues/comments/1", "before", times=4)
    with pytest.raises(ForgejoServerError):
        gateway.upsert_marker_comment(REPO, 1, marker="status", body="🏃 running")
    upsert_until_done(gateway, "✅ done", transport=transport, seconds=seconds)
    transport.release()
    bodies = [c.body for c in marked(gateway, "status")]
    assert len(bodies) == 1 and bodies[0].endswith("✅ done"), bodies


def test_no_write_is_repeated_while_a_doubtful_one_may_still_land(
    gateway: ForgejoGateway, transport: FaultyTransport, seconds: Seconds
) -> None:
    """Until the settle time has passed, the gateway answers 'wait' and writes nothing."""
    transport.fail = once("POST", "/issues/1/comments", "before")
    with pytest.raises(ForgejoServerError):
        gateway.upsert_marker_comment(REPO, 1, marker="status", body="a", comments=())
    writes = gateway.writes
    seconds.now += SETTLE / 2
    with pytest.raises(WaitingError) as waiting:
        gateway.upsert_marker_comment(REPO, 1, marker="status", body="a", comments=())
    assert waiting.value.retry_after == pytest.approx(SETTLE / 2)
    assert gateway.writes == writes


def test_a_refused_connection_is_certain_and_leaves_nothing_in_doubt(
    gateway: ForgejoGateway, transport: FaultyTransport
) -> None:
    """A write that never left (connection refused) is simply tried again on the next pass."""

    def refuse(request: httpx.Request) -> str | None:
        if request.method == "POST":
            raise httpx.ConnectError("refused", request=request)
        return None

    transport.fail = refuse
    with pytest.raises(ForgejoServerError) as error:
        gateway.upsert_marker_comment(REPO, 1, marker="status", body="a", comments=())
    assert error.value.outcome_unknown is False
    transport.fail = lambda request: None
    _, outcome = gateway.upsert_marker_comment(REPO, 1, marker="status", body="a", comments=())
    assert outcome == "created"


def test_duplicate_marker_comments_are_folded_into_the_oldest(
    gateway: ForgejoGateway,
) -> None:
    """Two bot comments with one marker (a write held longer than anyone waits): the newer
    ones are deleted and the oldest carries the text."""
    tag = marker_tag("status")
    first = gateway.create_comment(REPO, 1, f"{tag}\nold")
    gateway.create_comment(REPO, 1, f"{tag}\nold")
    gateway.create_comment(REPO, 1, "a person's comment")
    comment, outcome = gateway.upsert_marker_comment(REPO, 1, marker="status", body="new")
    assert (comment.id, outcome) == (first.id, "edited")
    assert [c.id for c in marked(gateway, "status")] == [first.id]
    assert len(gateway.list_comments(REPO, 1)) == 2
