"""The live fleet page: its routes, who may see it, and the data it shows.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_dashboard` once
when ``dashboard.enabled``. Under ``dashboard.path`` (``/`` by default):

| method | path                 | what                                                       |
|--------|----------------------|------------------------------------------------------------|
| GET    | ``{path}``           | the fleet: agents, tasks by state with why each waits, charts |
| GET    | ``{path}live``       | JSON ``{"html", "at"}``: the overview's live part, for its script |
| GET    | ``{path}tasks/{id}`` | one task: facts, receipt checks, timeline, Forgejo links    |
| GET    | ``{path}tasks/{id}/live`` | JSON: that page's live part                            |
| GET/POST | ``{path}login``    | the sign-in form; a good token sets the session cookie      |
| POST   | ``{path}logout``     | clears the session cookie                                   |

Who may look: a request with ``Authorization: Bearer <api.operator_token>`` (scripts, probes),
a browser holding the session cookie the sign-in form set (HTTP-only, ``SameSite=Strict``,
``Secure`` over https, valid ``dashboard.session_ttl`` seconds: an HMAC of its expiry keyed
with the operator token, so changing the token signs everyone out), or anyone when
``dashboard.read_only_without_token`` is set. Tokens are compared in constant time and never
rendered. The page only reads: the data comes from the same :class:`~reconciler.fleet.agents.Fleet`
calls that answer ``GET /api/v1/agents``, ``/api/v1/tasks`` and ``/api/v1/tasks/{id}``, and
the CLI's own wording of why a task waits and of each event (``reconciler/console``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.errors import NotFoundError
from reconciler.fleet.activity import Activity, read_activity
from reconciler.fleet.agents import Fleet
from reconciler.fleet.api import AgentSummary
from reconciler.models import Task
from reconciler.settings import Settings
from reconciler.store import Store
from webhook.agents_api import bearer_token
from webhook.app import json_response
from webhook.dashboard_pages import (
    Chrome,
    Overview,
    document,
    login_page,
    message_page,
    overview,
    task_href,
    task_page,
)

SESSION_COOKIE = "agent_fleet_session"
ACTIVITY_MAX_AGE = timedelta(seconds=15)
# A sign-in form carries one short field; anything larger is not a person signing in.
MAX_LOGIN_BYTES = 4096
_SESSION_PURPOSE = b"agent-fleet dashboard session\x00"


def session_value(operator_token: str, *, expires: int) -> str:
    """The cookie for a sign-in valid until ``expires`` (Unix seconds): the expiry and its
    HMAC keyed with the operator token. It holds no secret; it cannot be made without one."""
    mac = hmac.new(
        operator_token.encode(), _SESSION_PURPOSE + str(expires).encode(), hashlib.sha256
    )
    return f"{expires}.{mac.hexdigest()}"


def session_is_valid(value: str, operator_token: str, *, now: datetime) -> bool:
    """Whether ``value`` is a cookie :func:`session_value` made and not yet expired."""
    expiry_text, _, _ = value.partition(".")
    if not expiry_text.isdigit() or len(expiry_text) > 12:
        return False
    expires = int(expiry_text)
    if expires <= now.timestamp():
        return False
    expected = session_value(operator_token, expires=expires)
    return hmac.compare_digest(value.encode(), expected.encode())


def _security_headers(nonce: str) -> dict[str, str]:
    # Only this response's own style sheet and script run; data can never bring its own.
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


class _ActivityCache:
    """The charts' figures, read again at most every :data:`ACTIVITY_MAX_AGE`: every open page
    polls every few seconds, and hourly and daily sums need not be fresher than that."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[datetime, Activity] | None = None

    def get(self, tasks: Sequence[Task], *, now: datetime) -> Activity:
        with self._lock:
            if (
                self._cached is not None
                and timedelta(0) <= now - self._cached[0] < ACTIVITY_MAX_AGE
            ):
                return self._cached[1]
            fresh = read_activity(self._store, tasks, now=now)
            self._cached = (now, fresh)
            return fresh


class _Access:
    """Works out whether a request may see the page, and how it signed in."""

    def __init__(self, fleet: Fleet, settings: Callable[[], Settings]) -> None:
        self._fleet = fleet
        self._settings = settings

    def operator_token(self) -> str | None:
        configured = self._settings().api.operator_token
        return configured.get_secret_value() if configured is not None else None

    def signed_in(self) -> bool:
        """A valid operator bearer token, or a valid session cookie."""
        token = bearer_token()
        if token is not None and self._fleet.is_operator(token):
            return True
        operator = self.operator_token()
        cookie = bottle.request.get_cookie(SESSION_COOKIE)
        if operator and cookie:
            return session_is_valid(str(cookie), operator, now=self._fleet.clock())
        return False

    def allowed(self) -> bool:
        return self.signed_in() or self._settings().dashboard.read_only_without_token


def install_dashboard(
    app: bottle.Bottle, *, fleet: Fleet, store: Store, settings: Callable[[], Settings]
) -> None:
    """Add the fleet page's routes to ``app`` under ``dashboard.path``."""
    base = settings().dashboard.path
    access = _Access(fleet, settings)
    activity = _ActivityCache(store, clock=fleet.clock)

    def chrome(nonce: str) -> Chrome:
        return Chrome(
            base=base,
            refresh_seconds=settings().dashboard.refresh_interval,
            nonce=nonce,
            signed_in=access.signed_in(),
        )

    def html(status: int, title: str, body: str, *, live_url: str | None) -> bottle.HTTPResponse:
        nonce = secrets.token_urlsafe(16)
        now = fleet.clock()
        text = document(title, body, chrome(nonce), live_url=live_url, at=f"{now:%H:%M:%S} UTC")
        return bottle.HTTPResponse(body=text, status=status, headers=_security_headers(nonce))

    def live_json(body: str) -> bottle.HTTPResponse:
        response = json_response(200, {"html": body, "at": f"{fleet.clock():%H:%M:%S} UTC"})
        response.set_header("Cache-Control", "no-store")
        return response

    def refused(*, json_wanted: bool) -> bottle.HTTPResponse:
        if json_wanted:
            return json_response(
                401,
                {
                    "error": "unauthorized",
                    "message": "sign in on the page, or send Authorization: Bearer "
                    "<operator token>",
                },
            )
        configured = access.operator_token() is not None
        return html(
            401,
            "Sign in · agent-fleet",
            login_page(action=f"{base}login", configured=configured),
            live_url=None,
        )

    def overview_body() -> str:
        now = fleet.clock()
        tasks = fleet.tasks()
        data = Overview(
            agents=tuple(AgentSummary.of(v) for v in fleet.agents()),
            tasks=tuple(tasks),
            activity=activity.get(tasks, now=now),
            now=now,
            forgejo_url=settings().forgejo.url,
        )
        return overview(data, base=base)

    def task_body(task_id: str) -> str | None:
        try:
            task, events = fleet.read_task(task_id, agent_id=None)
        except NotFoundError:
            return None
        return task_page(
            task, events, now=fleet.clock(), forgejo_url=settings().forgejo.url, base=base
        )

    if base != "/":

        @app.get(base.rstrip("/"))  # type: ignore[untyped-decorator]
        def page_without_slash() -> bottle.HTTPResponse:
            return bottle.HTTPResponse(status=308, headers={"Location": base})

    @app.get(base)  # type: ignore[untyped-decorator]
    def page() -> bottle.HTTPResponse:
        if not access.allowed():
            return refused(json_wanted=False)
        return html(200, "Fleet · agent-fleet", overview_body(), live_url=f"{base}live")

    @app.get(f"{base}live")  # type: ignore[untyped-decorator]
    def page_live() -> bottle.HTTPResponse:
        if not access.allowed():
            return refused(json_wanted=True)
        return live_json(overview_body())

    @app.get(f"{base}tasks/<task_id>")  # type: ignore[untyped-decorator]
    def one_task(task_id: str) -> bottle.HTTPResponse:
        if not access.allowed():
            return refused(json_wanted=False)
        body = task_body(task_id)
        if body is None:
            text = message_page("No such task", f"There is no task {task_id!r}.", base=base)
            return html(404, "Not found · agent-fleet", text, live_url=None)
        live = f"{task_href(base, task_id)}/live"
        return html(200, f"Task {task_id} · agent-fleet", body, live_url=live)

    @app.get(f"{base}tasks/<task_id>/live")  # type: ignore[untyped-decorator]
    def one_task_live(task_id: str) -> bottle.HTTPResponse:
        if not access.allowed():
            return refused(json_wanted=True)
        body = task_body(task_id)
        if body is None:
            return json_response(404, {"error": "task_not_found", "message": "no such task"})
        return live_json(body)

    @app.get(f"{base}login")  # type: ignore[untyped-decorator]
    def login_form() -> bottle.HTTPResponse:
        if access.signed_in():
            return bottle.HTTPResponse(status=303, headers={"Location": base})
        return html(
            200,
            "Sign in · agent-fleet",
            login_page(action=f"{base}login", configured=access.operator_token() is not None),
            live_url=None,
        )

    @app.post(f"{base}login")  # type: ignore[untyped-decorator]
    def login() -> bottle.HTTPResponse:
        _same_origin()
        token = _form_token()
        operator = access.operator_token()
        if operator is None or not fleet.is_operator(token):
            body = login_page(
                action=f"{base}login",
                error="That is not the operator token.",
                configured=operator is not None,
            )
            return html(401, "Sign in · agent-fleet", body, live_url=None)
        ttl = int(settings().dashboard.session_ttl)
        expires = int(fleet.clock().timestamp()) + ttl
        response = bottle.HTTPResponse(status=303, headers={"Location": base})
        response.add_header(
            "Set-Cookie", _cookie(session_value(operator, expires=expires), max_age=ttl)
        )
        return response

    @app.post(f"{base}logout")  # type: ignore[untyped-decorator]
    def logout() -> bottle.HTTPResponse:
        _same_origin()
        response = bottle.HTTPResponse(status=303, headers={"Location": f"{base}login"})
        response.add_header("Set-Cookie", _cookie("", max_age=0))
        return response

    def _cookie(value: str, *, max_age: int) -> str:
        secure = "; Secure" if bottle.request.urlparts.scheme == "https" else ""
        return (
            f"{SESSION_COOKIE}={value}; Path={base}; Max-Age={max_age}; HttpOnly; "
            f"SameSite=Strict{secure}"
        )


def _same_origin() -> None:
    """Refuse a form posted from another site (the browser names it in ``Origin``)."""
    origin = bottle.request.get_header("Origin")
    if origin is None:
        return
    ours = bottle.request.urlparts
    theirs = urllib.parse.urlsplit(str(origin))
    if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
        bottle.abort(403, "a form posted from another site was refused")


def _form_token() -> str:
    """The ``token`` field of a sign-in form (URL-encoded), at most :data:`MAX_LOGIN_BYTES`."""
    length = bottle.request.content_length
    if length > MAX_LOGIN_BYTES:
        bottle.abort(413, f"a sign-in form is at most {MAX_LOGIN_BYTES} bytes")
    raw = bottle.request.body.read(MAX_LOGIN_BYTES + 1)
    if len(raw) > MAX_LOGIN_BYTES:
        bottle.abort(413, f"a sign-in form is at most {MAX_LOGIN_BYTES} bytes")
    try:
        fields = urllib.parse.parse_qs(raw.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        bottle.abort(400, "the sign-in form could not be read")
    values = fields.get("token", [])
    return values[0].strip() if values else ""


__all__ = [
    "MAX_LOGIN_BYTES",
    "SESSION_COOKIE",
    "install_dashboard",
    "session_is_valid",
    "session_value",
]
