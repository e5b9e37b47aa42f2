"""Pytest fixtures for the in-memory Forgejo; any test module may import them.

Load them with ``pytest_plugins = ("tests.sandbox_fixtures",)`` at the top of a test module.
``forge`` is a sandbox reached in process (no socket), ``served_forge`` one listening on
loopback, ``forge_http`` an httpx client on ``forge`` authenticated as the admin, ``forge_as``
makes such clients for other tokens, ``forge_client`` is the real pyforgejo client on ``forge``,
``forge_clock`` the manual clock they all use. ``webhook_receiver`` is a loopback HTTP server
recording what the sandbox delivers. ``isolated_git`` runs git and gitpython without the
machine's git configuration, prompts or credential helpers, as the ``GIT_AUTHOR`` identity. Every
sandbox has the repository ``fleet-admin/demo`` (default branch ``main``, one initial commit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pyforgejo
import pytest

from reconciler.sandbox import ForgejoSandbox

DEMO_REPO = "fleet-admin/demo"
# In-process clients need some base URL; the sandbox answers with its own ROOT_URL links.
IN_PROCESS_URL = "http://localhost:3000"


class ManualClock:
    """A clock tests move by hand, so timestamps are exact and no test sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def forge_clock() -> ManualClock:
    """The clock every sandbox fixture uses."""
    return ManualClock()


@pytest.fixture
def forge(forge_clock: ManualClock) -> Iterator[ForgejoSandbox]:
    """A sandbox with ``fleet-admin/demo``, reached in process through its WSGI app."""
    sandbox = ForgejoSandbox(clock=forge_clock)
    sandbox.create_repo(DEMO_REPO)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def served_forge(forge_clock: ManualClock) -> Iterator[ForgejoSandbox]:
    """A sandbox with ``fleet-admin/demo`` listening on a loopback port."""
    with ForgejoSandbox(clock=forge_clock) as sandbox:
        sandbox.create_repo(DEMO_REPO)
        yield sandbox


def in_process_client(sandbox: ForgejoSandbox, token: str) -> httpx.Client:
    """An httpx client on the sandbox's WSGI app, authenticated with ``token``."""
    return httpx.Client(
        transport=httpx.WSGITransport(app=sandbox.app),
        base_url=f"{IN_PROCESS_URL}/api/v1",
        headers={"Authorization": f"token {token}"},
    )


@pytest.fixture
def forge_http(forge: ForgejoSandbox) -> Iterator[httpx.Client]:
    """An httpx client on ``forge`` as the admin, base URL ``.../api/v1``."""
    with in_process_client(forge, forge.admin_token) as client:
        yield client


@pytest.fixture
def forge_as(forge: ForgejoSandbox) -> Iterator[Callable[[str], httpx.Client]]:
    """Makes httpx clients on ``forge`` for a given token ("" sends no Authorization)."""
    clients: list[httpx.Client] = []

    def client_for(token: str) -> httpx.Client:
        client = in_process_client(forge, token)
        if not token:
            client.headers.pop("Authorization")
        clients.append(client)
        return client

    yield client_for
    for client in clients:
        client.close()


@pytest.fixture
def forge_client(forge: ForgejoSandbox) -> pyforgejo.PyforgejoApi:
    """The real pyforgejo client on ``forge`` as the admin."""
    return pyforgejo.PyforgejoApi(
        base_url=f"{IN_PROCESS_URL}/api/v1",
        api_key=forge.admin_token,
        httpx_client=httpx.Client(transport=httpx.WSGITransport(app=forge.app)),
    )


GIT_AUTHOR = ("Fleet Agent", "agent@fleet.invalid")


@pytest.fixture
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """git (and gitpython) run with no user or system config, no prompts, a fixed identity."""
    name, email = GIT_AUTHOR
    for variable, value in {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("SSH_ASKPASS", raising=False)


@dataclass
class ReceivedWebhook:
    """One request the webhook receiver got."""

    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A loopback HTTP server answering every POST with ``status`` and recording it."""

    url: str
    status: int = 200
    received: list[ReceivedWebhook] = field(default_factory=list)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A recording webhook endpoint on loopback."""
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            receiver.received.append(ReceivedWebhook(dict(self.headers.items()), body))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
