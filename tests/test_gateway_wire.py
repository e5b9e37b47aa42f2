"""The Forgejo gateway on a misbehaving wire: retries, Retry-After, error mapping, odd paging.

A small scripted server (``httpx.MockTransport``) answers each request from a queue, so every
failure is injected deliberately; ``sleep`` and ``clock`` are injected, so no test waits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from reconciler.errors import (
    ForgejoConflict,
    ForgejoError,
    ForgejoForbidden,
    ForgejoNotFound,
    ForgejoRateLimited,
    ForgejoServerError,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import CommitState, LabelSpec

TOKEN = "s3cret-token-value"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]

REPO_JSON = {"id": 7, "name": "r", "full_name": "o/r", "owner": {"login": "o"}}
ISSUE_JSON = {
    "number": 1,
    "title": "t",
    "state": "open",
    "created_at": "2026-03-01T10:00:00Z",
    "updated_at": "2026-03-01T11:00:00Z",
}


class ScriptedForgejo:
    """Answers requests in order from a script and remembers what it was sent."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            pytest.fail(f"unexpected extra request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    @property
    def urls(self) -> list[str]:
        return [str(r.url) for r in self.requests]


class Harness:
    """A gateway on a scripted server, with the sleeps and calls it made."""

    def __init__(self, *answers: Answer, read_retries: int = 3) -> None:
        self.server = ScriptedForgejo(*answers)
        self.sleeps: list[float] = []
        self.calls: list[tuple[str, int]] = []
        self.gateway = ForgejoGateway(
            "https://forgejo.test",
            TOKEN,
            transport=httpx.MockTransport(self.server),
            read_retries=read_retries,
            sleep=self.sleeps.append,
            on_call=lambda operation, status: self.calls.append((operation, status)),
            clock=NOW.timestamp,
        )


def ok(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def failing(
    status: int, *, headers: dict[str, str] | None = None, message: str = "nope"
) -> httpx.Response:
    return httpx.Response(status, json={"message": message}, headers=headers)


# --- retries ---------------------------------------------------------------------------------


def test_read_honours_retry_after_seconds_on_429() -> None:
    """A 429 with Retry-After: 7 waits 7 s once, then the retried GET succeeds."""
    h = Harness(failing(429, headers={"Retry-After": "7"}), ok(REPO_JSON))
    assert h.gateway.get_repo("o/r").full_name == "o/r"
    assert h.sleeps == [7.0]
    assert h.calls == [("get_repo", 429), ("get_repo", 200)]
    assert h.gateway.calls == 2


def test_read_honours_retry_after_as_an_http_date_on_503() -> None:
    """Retry-After as an HTTP date 30 s after the injected clock waits 30 s."""
    when = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    h = Harness(failing(503, headers={"Retry-After": when}), ok(REPO_JSON))
    h.gateway.get_repo("o/r")
    assert h.sleeps == [30.0]


def test_read_backs_off_exponentially_then_gives_up_as_server_error() -> None:
    """Four 502s without Retry-After: waits 0.5, 1, 2 s, then ForgejoServerError."""
    h = Harness(*(failing(502) for _ in range(4)))
    with pytest.raises(ForgejoServerError) as raised:
        h.gateway.get_repo("o/r")
    assert h.sleeps == [0.5, 1.0, 2.0]
    assert raised.value.status == 502 and raised.value.operation == "get_repo"


def test_a_retry_after_longer_than_the_cap_goes_back_to_the_caller() -> None:
    """Retry-After: 3600 is not slept through: ForgejoRateLimited carries it for the loop."""
    h = Harness(failing(429, headers={"Retry-After": "3600"}))
    with pytest.raises(ForgejoRateLimited) as raised:
        h.gateway.get_repo("o/r")
    assert raised.value.retry_after == 3600.0
    assert h.sleeps == []


def test_connection_errors_are_retried_for_reads_and_reported_as_status_zero() -> None:
    """A refused connection, then a timeout, then an answer: two waits, three calls."""
    h = Harness(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok(REPO_JSON))
    assert h.gateway.get_repo("o/r").id == 7
    assert h.calls == [("get_repo", 0), ("get_repo", 0), ("get_repo", 200)]
    assert h.sleeps == [0.5, 1.0]


def test_no_response_at_all_is_a_server_error_without_the_token() -> None:
    """After every retry fails to connect, ForgejoServerError(status 0) names the operation."""
    h = Harness(*(httpx.ConnectError("refused") for _ in range(2)), read_retries=1)
    with pytest.raises(ForgejoServerError) as raised:
        h.gateway.whoami()
    assert raised.value.status == 0 and "whoami" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_a_redirect_loop_is_a_server_error_not_an_httpx_exception() -> None:
    """No httpx exception leaves the gateway: a redirect loop is a ForgejoServerError."""
    loop = httpx.Response(302, headers={"Location": "https://forgejo.test/api/v1/user"})
    h = Harness(*(loop for _ in range(25)), read_retries=0)
    with pytest.raises(ForgejoServerError, match="maximum allowed redirects"):
        h.gateway.whoami()


def test_post_is_not_retried_on_a_server_error() -> None:
    """A comment POST answered 502 is sent once: a retry could post the comment twice."""
    h = Harness(failing(502))
    with pytest.raises(ForgejoServerError):
        h.gateway.create_comment("o/r", 1, "hello")
    assert [r.method for r in h.server.requests] == ["POST"]
    assert h.sleeps == []


def test_post_conflict_is_sent_once_with_pyforgejo_retries_off() -> None:
    """pyforgejo would retry a 409 twice; the gateway sends the POST exactly once."""
    h = Harness(failing(409, message="exists"))
    with pytest.raises(ForgejoConflict):
        h.gateway.create_repo("r")
    assert len(h.server.requests) == 1


def test_idempotent_label_replace_is_retried() -> None:
    """PUT of an issue's label set is retried after a 503: sending it twice is harmless."""
    labels = [{"id": 3, "name": "fleet/task", "color": "00ff00"}]
    h = Harness(ok(labels, headers={"X-Total-Count": "1"}), failing(503), ok(labels))
    assert h.gateway.replace_labels("o/r", 1, ["fleet/task"]) == ("fleet/task",)
    assert [r.method for r in h.server.requests] == ["GET", "PUT", "PUT"]
    assert h.sleeps == [0.5]


def test_idempotent_issue_edit_is_retried() -> None:
    """PATCH of an issue's state is retried after a 500."""
    h = Harness(failing(500), ok({**ISSUE_JSON, "state": "closed"}, status=201))
    assert h.gateway.edit_issue("o/r", 1, state="closed").state == "closed"
    assert [r.method for r in h.server.requests] == ["PATCH", "PATCH"]


# --- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ForgejoError),
        (401, ForgejoForbidden),
        (403, ForgejoForbidden),
        (404, ForgejoNotFound),
        (409, ForgejoConflict),
        (422, ForgejoConflict),
        (429, ForgejoRateLimited),
        (500, ForgejoServerError),
    ],
)
def test_status_codes_map_onto_the_error_family(status: int, error: type[ForgejoError]) -> None:
    """Each status becomes its ForgejoError subclass with the status and operation."""
    h = Harness(failing(status, message="the reason"), read_retries=0)
    with pytest.raises(error) as raised:
        h.gateway.create_issue("o/r", title="t")
    assert type(raised.value) is error
    assert (raised.value.status, raised.value.operation) == (status, "create_issue")
    assert "the reason" in str(raised.value)


def test_an_echoed_token_never_reaches_the_error_message() -> None:
    """A proxy echoing the Authorization header into its error page is redacted."""
    h = Harness(httpx.Response(403, text=f"denied for token {TOKEN}"), read_retries=0)
    with pytest.raises(ForgejoForbidden) as raised:
        h.gateway.get_repo("o/r")
    assert TOKEN not in str(raised.value) and TOKEN not in raised.value.body
    assert "denied for token ***" in str(raised.value)


def test_a_long_body_is_cut_to_an_excerpt() -> None:
    """Error messages carry at most a short excerpt of the body."""
    h = Harness(httpx.Response(400, text="x" * 5000), read_retries=0)
    with pytest.raises(ForgejoError) as raised:
        h.gateway.get_repo("o/r")
    assert len(str(raised.value)) < 300


def test_a_body_missing_required_fields_is_an_error_naming_the_operation() -> None:
    """An issue without a number cannot be used: ForgejoError, not a half-filled model."""
    h = Harness(ok({"title": "no number", "state": "open"}))
    with pytest.raises(ForgejoError, match="get_issue: unexpected response shape.*number"):
        h.gateway.get_issue("o/r", 1)


def test_a_non_json_body_is_an_error() -> None:
    """An HTML page where JSON was expected (a login proxy) is refused clearly."""
    h = Harness(httpx.Response(200, text="<html>sign in</html>"))
    with pytest.raises(ForgejoError, match="not JSON"):
        h.gateway.version()


# --- paging ----------------------------------------------------------------------------------


def _issue(number: int) -> dict[str, object]:
    return {**ISSUE_JSON, "number": number}


def test_a_null_body_counts_as_an_empty_page() -> None:
    """Forgejo has answered ``null`` with X-Total-Count 0 for an empty list."""
    h = Harness(httpx.Response(200, content=b"null", headers={"X-Total-Count": "0"}))
    assert h.gateway.list_issues("o/r") == ()


def test_next_link_is_followed_by_page_number_on_the_gateways_own_host() -> None:
    """A Link built from another ROOT_URL only lends its page number; the host stays ours."""
    link = '<http://internal:3000/api/v1/repos/o/r/issues?limit=50&page=2&state=open>; rel="next"'
    h = Harness(
        ok([_issue(n) for n in range(1, 51)], headers={"Link": link, "X-Total-Count": "51"}),
        ok([_issue(51)], headers={"X-Total-Count": "51"}),
    )
    assert len(h.gateway.list_issues("o/r")) == 51
    assert h.server.requests[1].url.host == "forgejo.test"
    assert h.server.requests[1].url.params["page"] == "2"


def test_without_link_headers_the_total_count_decides() -> None:
    """A proxy that strips Link: X-Total-Count alone drives paging, also when clamped to 30."""
    h = Harness(
        ok([_issue(n) for n in range(1, 31)], headers={"X-Total-Count": "45"}),
        ok([_issue(n) for n in range(31, 46)], headers={"X-Total-Count": "45"}),
    )
    assert len(h.gateway.list_issues("o/r")) == 45
    assert len(h.server.requests) == 2


def test_without_any_paging_header_an_empty_page_ends_the_list() -> None:
    """No Link and no X-Total-Count: pages are read until one comes back empty."""
    h = Harness(ok([_issue(1), _issue(2)]), ok([]))
    assert [i.number for i in h.gateway.list_issues("o/r")] == [1, 2]
    assert len(h.server.requests) == 2


def test_list_filters_are_sent_as_forgejo_expects() -> None:
    """labels comma-joined, type, state, since as RFC 3339 UTC, limit 50."""
    h = Harness(ok([]))
    since = datetime(2026, 3, 1, 14, 30, 15, 999, tzinfo=timezone(timedelta(hours=1)))
    h.gateway.list_issues("o/r", state="all", labels=["a/b", "c"], kind="issues", since=since)
    params = h.server.requests[0].url.params
    assert dict(params) == {
        "state": "all",
        "type": "issues",
        "labels": "a/b,c",
        "since": "2026-03-01T13:30:15Z",
        "page": "1",
        "limit": "50",
    }


def test_naive_since_is_refused_before_any_call() -> None:
    """A timestamp without a zone is ambiguous and refused."""
    h = Harness()
    with pytest.raises(ValueError, match="timezone-aware"):
        h.gateway.list_issues("o/r", since=datetime(2026, 3, 1))
    assert h.server.requests == []


def test_a_malformed_repo_name_is_refused() -> None:
    """Repositories are 'owner/name'."""
    h = Harness()
    with pytest.raises(ValueError, match="owner/name"):
        h.gateway.get_repo("just-a-name")


# --- request shapes ----------------------------------------------------------------------------


def test_requests_carry_the_token_header_and_json_bodies() -> None:
    """Authorization: token …, and the label create body Forgejo expects."""
    h = Harness(ok([]), ok({"id": 1, "name": "x", "color": "00ff00"}, status=201))

    h.gateway.ensure_labels("o/r", [LabelSpec(name="x", color="#00FF00", exclusive=True)])
    create = h.server.requests[1]
    assert create.headers["authorization"] == f"token {TOKEN}"
    assert json.loads(create.content) == {
        "color": "#00ff00",
        "description": "",
        "exclusive": True,
        "name": "x",
    }


def test_create_file_sends_base64_and_returns_the_commit_sha() -> None:
    """The contents API gets the file base64-encoded and answers with the new commit."""
    h = Harness(ok({"content": {"path": "a.txt"}, "commit": {"sha": "ab" * 20}}, status=201))
    sha = h.gateway.create_file(
        "o/r", "docs/a.txt", content=b"hi\n", message="m", branch="main", new_branch="task/1-x"
    )
    assert sha == "ab" * 20
    sent = h.server.requests[0]
    assert sent.url.path == "/api/v1/repos/o/r/contents/docs/a.txt"
    assert json.loads(sent.content) == {
        "content": base64.b64encode(b"hi\n").decode(),
        "message": "m",
        "branch": "main",
        "new_branch": "task/1-x",
    }


def test_combined_status_of_a_commit_without_statuses_has_no_state() -> None:
    """Forgejo answers ``CombinedStatus{}`` (empty state, null statuses) when none exist."""
    empty = {"state": "", "sha": "", "total_count": 0, "statuses": None}
    h = Harness(ok(empty))
    combined = h.gateway.combined_status("o/r", "ab" * 20)
    assert (combined.state, combined.statuses, combined.is_success) == (None, (), False)


def test_combined_status_past_one_page_takes_the_worst_state() -> None:
    """51 contexts over two pages: all statuses kept, and one failure makes the whole fail."""

    def status(n: int, state: str) -> dict[str, object]:
        return {"id": n, "context": f"ci/{n}", "status": state}

    first = {
        "state": "success",
        "sha": "ab" * 20,
        "total_count": 50,
        "statuses": [status(n, "success") for n in range(50)],
    }
    second = {
        "state": "failure",
        "sha": "ab" * 20,
        "total_count": 1,
        "statuses": [status(50, "failure")],
    }
    h = Harness(
        ok(first, headers={"X-Total-Count": "51"}), ok(second, headers={"X-Total-Count": "51"})
    )
    combined = h.gateway.combined_status("o/r", "ab" * 20)
    assert combined.state is CommitState.FAILURE
    assert combined.total_count == 51 and len(combined.statuses) == 51


def test_gateway_refuses_an_empty_token_and_a_bad_url() -> None:
    """Configuration mistakes fail at construction, not at the first call."""
    with pytest.raises(ValueError, match="token"):
        ForgejoGateway("https://f.test", "")
    with pytest.raises(ValueError, match="http"):
        ForgejoGateway("f.test", TOKEN)
