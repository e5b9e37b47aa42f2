"""Hostile input on every HTTP surface of the daemon: headers that are not UTF-8, JSON nested
beyond reason, text that is not Unicode, and failures inside handlers — always a 4xx (or one
clean 500) JSON answer, never a credential or a raw traceback in the log."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bottle  # type: ignore[import-untyped]
import httpx
import pytest
from pydantic import SecretStr

from reconciler.engine.logs import configure_logging
from reconciler.fleet import operations
from reconciler.settings import StoreSettings, WebhookSettings
from reconciler.store import Store
from tests.test_fleet import ENROLMENT, OPERATOR, make_settings
from webhook.app import make_app
from webhook.daemon import Assembly, build, http_app
from webhook.inputs import MAX_JSON_DEPTH, InputError, parse_json

SECRET = "webhook-secret-for-tests"


@dataclass
class Served:
    """The daemon's whole HTTP app in process, with a registered agent and the log stream."""

    http: httpx.Client
    assembly: Assembly
    app: bottle.Bottle
    token: str
    log: io.StringIO


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    log = io.StringIO()
    configure_logging(level="debug", json=True, stream=log)
    base = make_settings()
    settings = base.model_copy(
        update={
            "store": StoreSettings(path=tmp_path / "s"),
            "webhook": WebhookSettings(secret=SecretStr(SECRET), max_body_bytes=256 * 1024),
            "forgejo": base.forgejo.model_copy(update={"repos": ()}),
        }
    )
    with Store.open(tmp_path / "s") as store:
        assembly = build(settings, store=store)
        try:
            app = http_app(assembly, readiness=dict)
            with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://d") as http:
                registered = http.post(
                    "/api/v1/agents/register",
                    headers={"Authorization": f"Bearer {ENROLMENT}"},
                    json={"agent_id": "a1", "type": "claude-code"},
                )
                assert registered.status_code == 201, registered.text
                yield Served(http, assembly, app, str(registered.json()["token"]), log)
        finally:
            assembly.gateway.close()
            configure_logging(level="info", json=True, stream=io.StringIO())


def routes(app: bottle.Bottle) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the app, path parameters filled in."""
    return sorted({(r.method, re.sub(r"<(\w+)(?::[^>]*)?>", "a1", r.rule)) for r in app.routes})


def wsgi_call(
    app: bottle.Bottle, method: str, path: str, *, authorization: str, body: bytes
) -> httpx.Response:
    """One request straight through WSGI, with an ``Authorization`` value as the server would
    pass it (latin-1 text of the raw bytes), which an HTTP client would refuse to send."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "d",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "HTTP_AUTHORIZATION": authorization,
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        started.append((status, headers))

    content = b"".join(app(environ, start_response))
    status, headers = started[-1]
    return httpx.Response(int(status.split()[0]), headers=headers, content=content)


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    return str(body["error"])


def log_lines(served: Served) -> list[dict[str, object]]:
    """Every line of the log, each parsed as JSON (a raw traceback line would fail here)."""
    return [json.loads(line) for line in served.log.getvalue().splitlines() if line.strip()]


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- finding 3: non-UTF-8 credentials --------------------------------------------------------


def test_a_non_utf8_authorization_is_a_401_json_on_every_endpoint(served: Served) -> None:
    """A real token followed by a byte that is not UTF-8 is refused with 401 JSON wherever
    credentials are read; no route answers 5xx; the token appears in no log line."""
    header = (b"Bearer " + served.token.encode() + b"\xff\xfe").decode("latin-1")
    answers = {}
    for method, path in routes(served.app):
        response = wsgi_call(served.app, method, path, authorization=header, body=b"{}")
        assert response.status_code < 500, (method, path, response.text)
        answers[(method, path)] = response
    needing_credentials = {
        key: r
        for key, r in answers.items()
        if key[1].startswith("/api/v1/") and "openapi" not in key[1]
    }
    assert needing_credentials
    for (method, path), response in needing_credentials.items():
        assert (response.status_code, error_of(response)) == (401, "malformed_token"), (
            method,
            path,
        )
    text = served.log.getvalue()
    assert served.token not in text and served.token[:12] not in text
    log_lines(served)


def test_a_500_is_one_json_log_line_without_the_message_or_a_raw_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A handler that fails answers 500 JSON; the log has the error's type and where it was
    raised as one JSON line, not its message (which may quote a credential), and nothing is
    written raw to stderr."""
    log = io.StringIO()
    configure_logging(level="info", json=True, stream=log)
    app = make_app()

    @app.get("/boom")  # type: ignore[untyped-decorator]
    def boom() -> str:
        raise ValueError("Bearer sekrit-token-value")

    try:
        transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
        with httpx.Client(transport=transport, base_url="http://d") as http:
            response = http.get("/boom")
    finally:
        configure_logging(level="info", json=True, stream=io.StringIO())
    assert (response.status_code, error_of(response)) == (500, "internal_error")
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    [line] = [each for each in lines if each["event"] == "http.internal_error"]
    assert line["error_type"] == "ValueError" and any("in boom" in w for w in line["where"])
    assert "sekrit" not in log.getvalue()
    assert "Traceback" not in capsys.readouterr().err


def test_an_error_handler_that_fails_still_answers_json() -> None:
    """Even when Bottle's own machinery fails after the handler, the answer is JSON 500."""
    app = make_app()

    @app.get("/bad")  # type: ignore[untyped-decorator]
    def bad() -> object:
        return object()  # not something Bottle can send

    transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    with httpx.Client(transport=transport, base_url="http://d") as http:
        response = http.get("/bad")
    assert response.status_code == 500
    assert error_of(response) == "internal_error"


# --- finding 4: deeply nested JSON -----------------------------------------------------------


def test_deeply_nested_json_is_400_on_every_body_reading_endpoint(served: Served) -> None:
    """With valid credentials, a body nested 1,000 (and 30,000) deep is 400 malformed_json on
    every POST route of the agent API, and on the webhook receiver when signed."""
    # The JSON endpoints; the fleet page's sign-in form reads a form, not JSON.
    posts = [
        path
        for method, path in routes(served.app)
        if method == "POST" and path.startswith(("/api/", "/webhooks/"))
    ]
    assert len(posts) >= 9
    # A run's own endpoints take its task token: every operation served to "task".
    task_posts = {
        re.sub(r"\{\w+\}", "a1", op.path)
        for op in operations.OPERATIONS
        if op.who == "task" and op.method == "post"
    }
    assert task_posts and task_posts <= set(posts)
    for depth in (MAX_JSON_DEPTH + 1, 1_000, 30_000):
        body = nested(depth)
        for path in posts:
            headers = {"Authorization": f"Bearer {served.token}"}
            if path in task_posts:
                token = served.assembly.tokens.issue("a1", 1)
                headers = {"Authorization": f"Bearer {token}"}
            if path.startswith("/webhooks/"):
                signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                headers = {"X-Forgejo-Event": "issues", "X-Forgejo-Signature": signature}
            response = served.http.post(path, headers=headers, content=body)
            assert (response.status_code, error_of(response)) == (400, "malformed_json"), (
                path,
                depth,
                response.text,
            )


def test_json_nested_to_the_limit_is_still_parsed(served: Served) -> None:
    """The limit refuses depth, not JSON: a body exactly at the limit reaches validation."""
    response = served.http.post(
        "/api/v1/agents/heartbeat",
        headers={"Authorization": f"Bearer {served.token}"},
        content=nested(MAX_JSON_DEPTH),
    )
    assert (response.status_code, error_of(response)) == (400, "invalid_body")


def test_registration_checks_credentials_before_it_parses_the_body(served: Served) -> None:
    """With an enrolment secret configured, a registration without it (or with a wrong one)
    is refused for its credentials, whatever its body holds."""
    deep = nested(30_000)
    missing = served.http.post("/api/v1/agents/register", content=deep)
    assert (missing.status_code, error_of(missing)) == (401, "missing_token")
    wrong = served.http.post(
        "/api/v1/agents/register", headers={"Authorization": "Bearer guess"}, content=deep
    )
    assert (wrong.status_code, error_of(wrong)) == (403, "registration_refused")
    with_secret = served.http.post(
        "/api/v1/agents/register", headers={"Authorization": f"Bearer {ENROLMENT}"}, content=deep
    )
    assert (with_secret.status_code, error_of(with_secret)) == (400, "malformed_json")
    operator = served.http.post(
        "/api/v1/agents/register", headers={"Authorization": f"Bearer {OPERATOR}"}, content=b"{}"
    )
    assert (operator.status_code, error_of(operator)) == (403, "registration_refused")


def test_text_that_is_not_unicode_is_refused_at_the_door(served: Served) -> None:
    """A lone surrogate escaped in JSON is 400 on the agent API and on the webhook, so no
    such text reaches the store, the log or a worker."""
    queued = served.assembly.queue.depth()
    body = json.dumps({"type": "claude-code", "hostname": "\ud800"}).encode()
    response = served.http.post(
        "/api/v1/agents/register", headers={"Authorization": f"Bearer {ENROLMENT}"}, content=body
    )
    assert (response.status_code, error_of(response)) == (400, "malformed_json")
    hook = json.dumps(
        {"action": "opened", "issue": {"number": 1}, "repository": {"full_name": "a\udcff/b"}}
    ).encode()
    signature = hmac.new(SECRET.encode(), hook, hashlib.sha256).hexdigest()
    delivered = served.http.post(
        "/webhooks/forgejo",
        headers={"X-Forgejo-Event": "issues", "X-Forgejo-Signature": signature},
        content=hook,
    )
    assert (delivered.status_code, error_of(delivered)) == (400, "malformed_json")
    assert served.assembly.queue.depth() == queued


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_lone_surrogate_is_refused_in_every_encoding_json_reads(encoding: str) -> None:
    """JSON text may come as UTF-8, -16 or -32: an escaped lone surrogate is refused in each,
    and valid text (an escaped pair, an escaped backslash before ``ud800``) is not."""
    bad = '{"title": "a\\ud800b"}'.encode(encoding)
    with pytest.raises(InputError) as refused:
        parse_json(bad)
    assert refused.value.status == 400 and "Unicode" in refused.value.message
    pair = '{"title": "\\ud83d\\ude00", "path": "C:\\\\ud800"}'
    assert parse_json(pair.encode(encoding)) == {"title": "\U0001f600", "path": "C:\\ud800"}
    assert parse_json(pair) == {"title": "\U0001f600", "path": "C:\\ud800"}
    with pytest.raises(InputError):
        parse_json('{"title": "a\\udc00"}')
    with pytest.raises(InputError):
        parse_json('{"title": "a\udc00"}')  # text that holds a surrogate itself
