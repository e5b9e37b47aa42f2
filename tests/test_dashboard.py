"""The fleet page over HTTP (in process, through WSGI): who may see it, what it shows, that it
escapes what issues and agents say and never shows a secret, and the activity it charts.

The page in a real browser is tested in ``tests/test_dashboard_browser.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import bottle  # type: ignore[import-untyped]
import httpx
import pytest
from pydantic import SecretStr

from reconciler.console.views import status_report, task_why
from reconciler.fleet.activity import summarise
from reconciler.models import (
    AgentId,
    CheckOutcome,
    Receipt,
    ReceiptCheck,
    ReceiptId,
    Task,
    TaskEvent,
    TaskState,
    task_id_for,
    transition,
)
from reconciler.settings import DashboardSettings, Settings, WebhookSettings
from tests.test_fleet import ENROLMENT, NOW, OPERATOR, REPO, Harness, make_settings
from webhook.app import make_app
from webhook.dashboard import (
    MAX_LOGIN_BYTES,
    SESSION_COOKIE,
    install_dashboard,
    session_is_valid,
    session_value,
)

EVIL_TITLE = '<img src=x onerror="alert(1)"><script>window.pwned=1</script> & "quotes"'
WEBHOOK_SECRET = "webhook-secret-for-tests"
FORGEJO_TOKEN = "forgejo-token-for-tests"


def settings_with(**dashboard: object) -> Settings:
    base = make_settings()
    return base.model_copy(
        update={
            "dashboard": DashboardSettings.model_validate(dashboard),
            "webhook": WebhookSettings(secret=SecretStr(WEBHOOK_SECRET)),
            "forgejo": base.forgejo.model_copy(update={"token": SecretStr(FORGEJO_TOKEN)}),
        }
    )


class Page:
    """The fleet page's routes in process over a real store, with time in the test's hands."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.harness = Harness(path, settings)
        app = make_app()
        install_dashboard(
            app,
            fleet=self.harness.fleet,
            store=self.harness.store,
            settings=self.harness.settings,
        )
        self.app: bottle.Bottle = app
        self.http = httpx.Client(
            transport=httpx.WSGITransport(app=app), base_url="http://fleet.test"
        )

    def get(self, path: str, *, token: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def sign_in(self, token: str, **headers: str) -> httpx.Response:
        return self.http.post(
            "/login",
            content=f"token={token}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )

    def add_task(self, number: int, *, title: str = "Fix the widget", **fields: object) -> Task:
        now = self.harness.clock()
        task = Task(
            id=task_id_for(REPO, number),
            repo=REPO,
            issue_number=number,
            title=title,
            created_at=now,
            updated_at=now,
            **fields,  # type: ignore[arg-type]
        )
        self.harness.store.record(
            task,
            TaskEvent(
                task_id=task.id,
                at=now,
                actor="reconciler",
                to_state=TaskState.CREATED,
                reason=f"issue {REPO}#{number} asks for the fleet",
            ),
        )
        return task

    def move(self, task: Task, target: TaskState, **changes: object) -> Task:
        moved, event = transition(
            task, target, now=self.harness.clock(), actor="reconciler", **changes
        )
        self.harness.store.record(moved, event)
        return moved


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    p = Page(tmp_path, settings_with())
    yield p
    p.http.close()
    p.harness.store.close()


def visible_text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --- access ----------------------------------------------------------------------------------


def test_page_without_credentials_is_401_with_the_sign_in_form(page: Page) -> None:
    """No token, no cookie: 401 and the sign-in form, nothing of the fleet."""
    page.add_task(1, wait_reason="no agent has code:rust")
    response = page.get("/")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert 'name="token"' in response.text and 'type="password"' in response.text
    assert "code:rust" not in response.text


def test_operator_bearer_token_shows_agents_and_why_a_task_waits(page: Page) -> None:
    """``Authorization: Bearer <operator token>`` opens the page: agents with their status and
    the waiting task with its reason."""
    page.harness.register("a1", capabilities=("review",))
    page.add_task(1, wait_reason="no agent has role developer and code:rust")
    response = page.get("/", token=OPERATOR)
    assert response.status_code == 200, response.text
    text = visible_text(response.text)
    assert "a1" in text and "online" in text
    assert "Waiting 1" in text
    assert "no agent has role developer and code:rust" in text


@pytest.mark.parametrize("which", ["agent", "wrong", "empty"])
def test_an_agent_token_or_a_wrong_token_does_not_open_the_page(page: Page, which: str) -> None:
    """Only the operator token opens the page: an agent's registry token or a made-up one is
    refused (the page and its JSON alike)."""
    token = {
        "agent": page.harness.register("a1").token,
        "wrong": OPERATOR + "x",
        "empty": "",
    }[which]
    assert page.get("/", token=token).status_code == 401
    live = page.get("/live", token=token)
    assert live.status_code == 401 and live.json()["error"] == "unauthorized"


def test_sign_in_sets_an_http_only_strict_cookie_that_holds_no_token(page: Page) -> None:
    """The form with the operator token answers 303 to the page with a session cookie:
    HttpOnly, SameSite=Strict, scoped to the page's path, not the token itself; it opens the
    page and its JSON."""
    response = page.sign_in(OPERATOR)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" not in cookie, "plain http here; Secure is set over https"
    assert OPERATOR not in cookie
    assert page.get("/").status_code == 200
    assert page.get("/live").status_code == 200
    assert "Sign out" in page.get("/").text


def test_sign_in_over_https_marks_the_cookie_secure(page: Page) -> None:
    """Behind a TLS proxy (``X-Forwarded-Proto: https``) the cookie is sent over https only."""
    response = page.sign_in(OPERATOR, **{"X-Forwarded-Proto": "https"})
    assert response.status_code == 303
    assert "; Secure" in response.headers["set-cookie"]


def test_a_wrong_token_at_sign_in_is_refused_without_a_cookie(page: Page) -> None:
    """A wrong token: 401, the form again with a message, no cookie, and the token typed is not
    shown back."""
    response = page.sign_in("guess-123")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "not the operator token" in response.text
    assert "guess-123" not in response.text
    assert page.get("/").status_code == 401


def test_sign_out_clears_the_cookie(page: Page) -> None:
    """Signing out expires the cookie; the page asks for sign-in again."""
    page.sign_in(OPERATOR)
    response = page.http.post("/logout")
    assert response.status_code == 303
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert page.get("/").status_code == 401


def test_a_session_expires_and_a_forged_or_stale_one_is_refused(page: Page) -> None:
    """The cookie lasts session_ttl; one with a changed expiry or MAC, or made with another
    operator token, is refused."""
    now = page.harness.clock()
    good = session_value(OPERATOR, expires=int(now.timestamp()) + 60)
    assert session_is_valid(good, OPERATOR, now=now)
    assert not session_is_valid(good, OPERATOR, now=now + timedelta(seconds=61))
    expiry, mac = good.split(".")
    assert not session_is_valid(f"{int(expiry) + 999}.{mac}", OPERATOR, now=now)
    assert not session_is_valid(f"{expiry}.{'0' * len(mac)}", OPERATOR, now=now)
    assert not session_is_valid(good, "another-operator-token", now=now)
    for junk in ("", ".", "abc.def", "9" * 40 + ".x"):
        assert not session_is_valid(junk, OPERATOR, now=now)
    page.http.cookies.set(SESSION_COOKIE, f"{int(expiry) + 999}.{mac}")
    assert page.get("/").status_code == 401

    page.sign_in(OPERATOR)
    assert page.get("/").status_code == 200
    page.harness.clock.advance(43_200 + 1)
    assert page.get("/").status_code == 401, "the session outlived dashboard.session_ttl"


def test_read_only_without_token_shows_the_page_to_anyone_when_configured(
    tmp_path: Path,
) -> None:
    """With dashboard.read_only_without_token the page and its JSON open with no credentials,
    and no sign-out button is offered."""
    p = Page(tmp_path, settings_with(read_only_without_token=True))
    try:
        p.add_task(1, wait_reason="all agents at capacity")
        response = p.get("/")
        assert response.status_code == 200
        assert "all agents at capacity" in response.text
        assert "Sign out" not in response.text
        assert p.get("/live").status_code == 200
    finally:
        p.http.close()
        p.harness.store.close()


def test_a_form_posted_from_another_site_is_refused(page: Page) -> None:
    """A sign-in posted with another site's Origin is refused with a JSON 403."""
    response = page.sign_in(OPERATOR, Origin="https://evil.example")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "set-cookie" not in response.headers
    assert page.sign_in(OPERATOR, Origin="http://fleet.test").status_code == 303


def test_an_oversized_sign_in_form_is_413(page: Page) -> None:
    """A sign-in body over the limit is refused as JSON 413, never read whole."""
    response = page.http.post(
        "/login",
        content=b"token=" + b"a" * (MAX_LOGIN_BYTES + 10),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


# --- what it shows ---------------------------------------------------------------------------


def test_no_secret_or_token_is_ever_rendered(page: Page) -> None:
    """The operator token, the Forgejo token, the webhook and enrolment secrets and an agent's
    registry token appear nowhere in the page, a task page or the JSON."""
    agent_token = page.harness.register("a1").token
    task = page.add_task(1)
    page.sign_in(OPERATOR)
    bodies = [
        page.get("/").text,
        page.get("/live").text,
        page.get(f"/tasks/{task.id}").text,
        page.get(f"/tasks/{task.id}/live").text,
        page.get("/login").text,
    ]
    for secret in (OPERATOR, ENROLMENT, WEBHOOK_SECRET, FORGEJO_TOKEN, agent_token):
        for body in bodies:
            assert secret not in body


def test_untrusted_text_from_an_issue_title_is_escaped_everywhere(page: Page) -> None:
    """An issue title full of markup is shown as text on the page, in its JSON and on the
    task's page: no tag of it survives."""
    task = page.add_task(1, title=EVIL_TITLE, wait_reason="waits <b>bold</b>")
    for path in ("/", f"/tasks/{task.id}"):
        body = page.get(path, token=OPERATOR).text
        assert "<img src=x" not in body and "<script>window.pwned" not in body
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body
        assert "&lt;b&gt;bold&lt;/b&gt;" in body
    live = page.get("/live", token=OPERATOR).json()["html"]
    assert "<img src=x" not in live and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in live


def test_pages_carry_a_content_security_policy_that_allows_only_their_own_script(
    page: Page,
) -> None:
    """Every page names a fresh nonce in its CSP and only its own style and script carry it;
    nothing loads from elsewhere and it may not be framed."""
    first = page.get("/", token=OPERATOR)
    second = page.get("/", token=OPERATOR)
    policy = first.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert first.text.count(f'nonce="{nonce.group(1)}"') == 2
    assert nonce.group(1) not in second.headers["content-security-policy"]
    assert first.headers["x-frame-options"] == "DENY"
    assert first.headers["cache-control"] == "no-store"
    assert not re.search(r"""(src|href)=["']https?://(?!forgejo\.example\.org)""", first.text)


def test_a_task_page_shows_its_timeline_checks_and_forgejo_links(page: Page) -> None:
    """A finished task's page: each event oldest first with who did it, the receipt checks,
    links to the issue and the pull request on Forgejo."""
    task = page.add_task(7)
    task = page.move(task, TaskState.ASSIGNED, agent_id=AgentId("a1"), lease_generation=1)
    task = page.move(task, TaskState.RUNNING)
    task = page.move(task, TaskState.REVIEW_PENDING, pr_number=12)
    checks = (ReceiptCheck(name="diff", outcome=CheckOutcome.PASSED, detail="changes 2 file(s)"),)
    task = page.move(task, TaskState.COMPLETED, checks=checks)
    body = page.get(f"/tasks/{task.id}", token=OPERATOR).text
    text = visible_text(body)
    order = [
        text.index(step)
        for step in (
            "new → created",
            "created → assigned",
            "assigned → running",
            "running → review_pending",
            "review_pending → completed",
        )
    ]
    assert order == sorted(order)
    assert "✓ diff : changes 2 file(s)" in text
    assert 'href="https://forgejo.example.org/acme/web/issues/7"' in body
    assert 'href="https://forgejo.example.org/acme/web/pulls/12"' in body
    live = page.get(f"/tasks/{task.id}/live", token=OPERATOR).json()
    assert "review_pending → completed" in live["html"]


def test_an_unknown_task_is_a_404_page_that_escapes_the_id(page: Page) -> None:
    """A task id that does not exist: 404 with a page naming it, escaped; its JSON is a 404."""
    response = page.get("/tasks/%3Cb%3Enope", token=OPERATOR)
    assert response.status_code == 404
    assert "&lt;b&gt;nope" in response.text and "<b>nope" not in response.text
    assert page.get("/tasks/nope/live", token=OPERATOR).status_code == 404


def test_the_page_says_why_each_task_waits_in_the_cli_s_own_words(page: Page) -> None:
    """One source: every task's why on the page is what ``agent-fleet status`` prints."""
    waiting = page.add_task(1, wait_reason="backing off until 14:05")
    working = page.move(
        page.add_task(2, branch="task/2-fix-it"),
        TaskState.ASSIGNED,
        agent_id=AgentId("a1"),
        lease_generation=1,
        attempt=1,
    )
    failed = page.move(page.add_task(3), TaskState.FAILED, failure_reason="timed out after 1h")
    text = visible_text(page.get("/", token=OPERATOR).text)
    report = status_report([waiting, working, failed], now=page.harness.clock())
    for task in (waiting, working, failed):
        why = task_why(task)
        assert why in text and why in report


def test_the_page_can_live_under_a_configured_path(tmp_path: Path) -> None:
    """With dashboard.path = "/fleet/" the page, its JSON and its sign-in live there and its
    links point there; "/" is not served."""
    p = Page(tmp_path, settings_with(path="/fleet/"))
    try:
        task = p.add_task(1)
        assert p.get("/", token=OPERATOR).status_code == 404
        without_slash = p.get("/fleet", token=OPERATOR)
        assert without_slash.status_code == 308 and without_slash.headers["location"] == "/fleet/"
        body = p.get("/fleet/", token=OPERATOR).text
        assert f'href="/fleet/tasks/{task.id}"' in body and 'data-live="/fleet/live"' in body
        assert (
            p.http.post("/fleet/login", content=f"token={OPERATOR}".encode())
            .headers["set-cookie"]
            .count("Path=/fleet/")
        )
    finally:
        p.http.close()
        p.harness.store.close()


# --- activity --------------------------------------------------------------------------------


def test_activity_counts_finished_tasks_per_hour_and_spend_per_day() -> None:
    """Transitions to completed and failed land in their hour; receipts' cost and tokens in
    their day; what falls outside the window is left out."""
    now = NOW.replace(minute=30)
    task_id = task_id_for(REPO, 1)

    def moved(hours_ago: float, target: TaskState) -> TaskEvent:
        return TaskEvent(
            task_id=task_id,
            at=now - timedelta(hours=hours_ago),
            actor="reconciler",
            from_state=TaskState.REVIEW_PENDING,
            to_state=target,
        )

    def receipt(days_ago: int, cost: float) -> Receipt:
        return Receipt(
            id=ReceiptId(f"r{days_ago}-{cost}"),
            task_id=task_id,
            agent_id=AgentId("a1"),
            lease_generation=1,
            cost_usd=cost,
            tokens=100,
            submitted_at=now - timedelta(days=days_ago),
        )

    events = [
        moved(0, TaskState.COMPLETED),
        moved(0.2, TaskState.COMPLETED),
        moved(2, TaskState.FAILED),
        moved(30, TaskState.COMPLETED),  # outside the 12 hours
        TaskEvent(task_id=task_id, at=now, actor="a", kind="progress", reason="half way"),
    ]
    receipts = [receipt(0, 1.5), receipt(0, 0.25), receipt(3, 2.0), receipt(9, 5.0)]
    activity = summarise(events, receipts, now=now, hours=12, days=7)
    assert len(activity.hours) == 12 and activity.hours[-1].start == now.replace(minute=0)
    assert (activity.hours[-1].completed, activity.hours[-1].failed) == (2, 0)
    assert (activity.hours[-3].completed, activity.hours[-3].failed) == (0, 1)
    assert activity.completed == 2
    assert [d.cost_usd for d in activity.days] == [0, 0, 0, 2.0, 0, 0, 1.75]
    assert activity.days[-1].tokens == 200 and activity.cost_usd == 3.75


def test_the_page_charts_throughput_and_spend(page: Page) -> None:
    """The page's charts are inline SVG and count what the store holds: a task completed this
    hour, a receipt's cost today, an agent's spend."""
    page.harness.register("a1")
    task = page.move(page.add_task(1), TaskState.ASSIGNED, agent_id="a1", lease_generation=1)
    task = page.move(page.move(task, TaskState.RUNNING), TaskState.COMPLETED)
    page.harness.store.put_receipt(
        Receipt(
            id=ReceiptId("r1"),
            task_id=task.id,
            agent_id=AgentId("a1"),
            lease_generation=1,
            cost_usd=1.25,
            tokens=4000,
            submitted_at=page.harness.clock(),
        )
    )
    body = page.get("/", token=OPERATOR).text
    assert body.count("<svg") == 3
    hour = page.harness.clock().strftime("%H:00")
    assert f"{hour}–" in body and "1 completed, 0 failed" in body
    assert "$1.25, 4,000 tokens" in body
    assert "completed, last 12 h" in visible_text(body)


def test_completed_tasks_show_the_most_recent_ones_with_the_full_count(page: Page) -> None:
    """A week of finished tasks does not flood the page: the 25 latest, newest first, under
    the full count."""
    for number in range(1, 31):
        page.move(page.add_task(number), TaskState.CANCELLED)
        page.harness.clock.advance(60)
    text = visible_text(page.get("/", token=OPERATOR).text)
    assert "Cancelled 30" in text and "the 25 most recent of 30" in text
    shown = re.findall(r"acme/web#(\d+)", text)
    assert shown[0] == "30" and "5" not in shown and len(shown) == 25


def test_the_charts_are_read_again_once_their_figures_are_15_seconds_old(page: Page) -> None:
    """Polling pages share one reading of the charts' figures for 15 s; after that a task
    completed meanwhile is counted."""

    def completed_now() -> str:
        body = page.get("/", token=OPERATOR).text
        found = re.search(r"<b>(\d+)</b><span>completed, last 12 h", body)
        assert found is not None
        return found.group(1)

    def finish(number: int) -> None:
        task = page.move(page.add_task(number), TaskState.ASSIGNED, agent_id="a1")
        page.move(page.move(task, TaskState.RUNNING), TaskState.COMPLETED)

    finish(1)
    assert completed_now() == "1"
    finish(2)
    assert completed_now() == "1", "read again within 15 s"
    page.harness.clock.advance(15)
    assert completed_now() == "2"
