"""A real Synapse homeserver on loopback for the Matrix tests; a pytest plugin module.

Registered in ``tests/conftest.py``'s ``pytest_plugins``. One Synapse runs per test session
(``synapse`` fixture): SQLite, one client listener on 127.0.0.1 and a free port, shared-secret
registration, every rate limit raised, no trusted key servers (it never calls matrix.org), no
presence. At start it registers the bot and two people (``alice`` is allowed to command the
fleet, ``mallory`` is not); each test gets a fresh unencrypted room (``matrix_room``) with all
three in it, so tests do not see each other's messages. The ``harness`` fixture runs the Matrix
thread (a store, a gateway to the in-memory Forgejo, a :class:`MatrixService`) on that room;
the helpers below it record task events and read the room back.

Synapse comes from ``bash .ci/synapse.sh`` (its own virtualenv, pinned), which ``.ci/test``
runs. When it is missing the tests FAIL with that instruction rather than skip.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.matrix.client import MatrixService
from reconciler.matrix.metrics import MatrixMetrics
from reconciler.matrix.notifier import TOPIC
from reconciler.models import (
    Agent,
    ExecutionMode,
    Receipt,
    Task,
    TaskState,
    assign,
    task_id_for,
    transition,
)
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, MatrixSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO

SYNAPSE_DIR = Path(
    os.environ.get("AGENT_FLEET_SYNAPSE_DIR", Path.home() / ".cache/agent-fleet/synapse")
)
ADDRESS = "127.0.0.1"
SERVER_NAME = "localhost"
SHARED_SECRET = "agent-fleet-test-registration-secret"
READY_WITHIN = 60.0
_RATE = {"per_second": 1000, "burst_count": 1000}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class MatrixUser:
    user_id: str
    token: str
    device_id: str


class Synapse:
    """One Synapse process: where it listens, its users, and stop/start to play an outage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://{ADDRESS}:{self.port}"
        self.log_file = root / "synapse.log"
        self._config = root / "homeserver.yaml"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def python(self) -> Path:
        return SYNAPSE_DIR / "bin" / "python"

    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        limits: dict[str, Any] = {
            "rc_message": _RATE,
            "rc_registration": _RATE,
            "rc_joins": {"local": _RATE, "remote": _RATE},
            "rc_joins_per_room": _RATE,
            "rc_invites": {"per_room": _RATE, "per_user": _RATE, "per_issuer": _RATE},
            "rc_login": {"address": _RATE, "account": _RATE, "failed_attempts": _RATE},
            "rc_admin_redaction": _RATE,
            "rc_3pid_validation": _RATE,
            "rc_presence": {"per_user": _RATE},
            "rc_delayed_event_mgmt": _RATE,
            # Every test makes its own room: Synapse's default allows a burst of ten only.
            "rc_room_creation": _RATE,
            "rc_profile": _RATE,
            "rc_user_directory": _RATE,
        }
        config: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "pid_file": str(self.root / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": [ADDRESS],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(self.root / "homeserver.db")}},
            "media_store_path": str(self.root / "media"),
            "signing_key_path": str(self.root / "signing.key"),
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": uuid.uuid4().hex,
            "form_secret": uuid.uuid4().hex,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "bcrypt_rounds": 4,
            "enable_registration": False,
            "url_preview_enabled": False,
            "encryption_enabled_by_default_for_room_type": "off",
            **limits,
        }
        # JSON is YAML: no YAML writer needed.
        self._config.write_text(json.dumps(config, indent=1))
        subprocess.run(
            [
                str(self.python),
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self._config),
                "--generate-keys",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.root,
        )

    # --- process ------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self._config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Synapse exited with {self._process.returncode}; see {self.log_file}:\n"
                    + self.log_file.read_text()[-3000:]
                )
            try:
                self.request("GET", "/_matrix/client/versions")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Synapse did not answer within {READY_WITHIN}s; see {self.log_file}")

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- client API (plain HTTP: the tests check the homeserver, not our client) --------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"{method} {path} → {exc.code}: {exc.read().decode(errors='replace')}"
            ) from None

    def register(self, localpart: str, *, admin: bool = False) -> MatrixUser:
        """A new user through shared-secret registration, with its access token and device."""
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        password = uuid.uuid4().hex
        mac = hmac.new(SHARED_SECRET.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [
                    nonce.encode(),
                    localpart.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            )
        )
        answer = self.request(
            "POST",
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        return MatrixUser(answer["user_id"], answer["access_token"], answer["device_id"])

    def create_room(self, owner: MatrixUser, *, invite: list[MatrixUser], **extra: Any) -> str:
        room = self.request(
            "POST",
            "/_matrix/client/v3/createRoom",
            {"preset": "private_chat", "invite": [u.user_id for u in invite], **extra},
            token=owner.token,
        )["room_id"]
        assert isinstance(room, str)
        for user in invite:
            self.request("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, token=user.token)
        return room

    def send_text(self, user: MatrixUser, room: str, body: str, **content: Any) -> str:
        event = self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room)}/send/m.room.message/{uuid.uuid4().hex}",
            {"msgtype": "m.text", "body": body, **content},
            token=user.token,
        )["event_id"]
        assert isinstance(event, str)
        return event

    def messages(self, user: MatrixUser, room: str) -> list[dict[str, Any]]:
        """Every m.room.message in the room, oldest first (as the homeserver stores them)."""
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            query = urllib.parse.urlencode(
                {"dir": "f", "limit": "500", **({"from": token} if token else {})}
            )
            page = self.request(
                "GET", f"/_matrix/client/v3/rooms/{_q(room)}/messages?{query}", token=user.token
            )
            found += [e for e in page.get("chunk", []) if e.get("type") == "m.room.message"]
            token = page.get("end", "")
            if not page.get("chunk") or not token:
                return found

    def thread(self, user: MatrixUser, room: str, root: str) -> list[dict[str, Any]]:
        """The replies in the thread of ``root``, oldest first (via /relations)."""
        page = self.request(
            "GET",
            f"/_matrix/client/v1/rooms/{_q(room)}/relations/{_q(root)}/m.thread?limit=500&dir=f",
            token=user.token,
        )
        chunk: list[dict[str, Any]] = page.get("chunk", [])
        return chunk


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@dataclass(frozen=True)
class MatrixWorld:
    """The session's homeserver and users."""

    synapse: Synapse
    bot: MatrixUser
    alice: MatrixUser
    mallory: MatrixUser


@pytest.fixture(scope="session")
def synapse_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixWorld]:
    """One Synapse for the session, with the bot, alice (allowed) and mallory (not)."""
    if not (SYNAPSE_DIR / "bin" / "python").exists():
        pytest.fail(
            f"Synapse is not installed in {SYNAPSE_DIR}: run `bash .ci/synapse.sh` "
            "(bash .ci/test does it) — the Matrix tests need a real homeserver",
            pytrace=False,
        )
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    try:
        world = MatrixWorld(
            server,
            bot=server.register("fleetbot"),
            alice=server.register("alice"),
            mallory=server.register("mallory"),
        )
        yield world
    finally:
        server.stop()


@pytest.fixture
def matrix_world(synapse_world: MatrixWorld) -> MatrixWorld:
    """The session's homeserver, started again if a test stopped it."""
    synapse_world.synapse.start()
    return synapse_world


@pytest.fixture
def matrix_room(matrix_world: MatrixWorld) -> str:
    """A fresh unencrypted room (version 12 by default: an id with no ":server") for one test."""
    return matrix_world.synapse.create_room(
        matrix_world.alice, invite=[matrix_world.bot, matrix_world.mallory]
    )


# --- a Matrix thread on the session's Synapse, for one test ----------------------------

DEADLINE = 30.0


def wait_until(what: str, check: Callable[[], Any], *, timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def matrix_settings(world: MatrixWorld, room: str, forge: ForgejoSandbox) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url=forge.url,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login=forge.admin_login,
        ),
        matrix=MatrixSettings(
            enabled=True,
            homeserver=world.synapse.url,
            user_id=world.bot.user_id,
            access_token=SecretStr(world.bot.token),
            room_id=room,
            allowed_users=(world.alice.user_id,),
            poll_interval=0.05,
            sync_timeout=1.0,
            retry_initial=0.1,
            retry_max=0.5,
        ),
    )


class Harness:
    """A store, a gateway and a running Matrix thread for one test."""

    def __init__(
        self, settings: Settings, store_path: Path, *, metrics: MatrixMetrics | None = None
    ) -> None:
        self.settings = settings
        self.store = Store.open(store_path)
        self.gateway = ForgejoGateway(
            settings.forgejo.url, settings.forgejo.token.get_secret_value()
        )
        self.enqueued: list[Any] = []
        self.service = MatrixService(
            self.store,
            self.gateway,
            settings=lambda: settings,
            clock=lambda: datetime.now(UTC),
            enqueue=self.enqueued.append,
            metrics=metrics,
        )

    def start(self) -> None:
        self.service.start()
        wait_until("the Matrix thread to connect", lambda: self.service.status().ok)

    def close(self) -> None:
        self.service.stop()
        self.gateway.close()
        self.store.close()

    def pending(self) -> int:
        return len(self.store.pending(topic=TOPIC))


@pytest.fixture
def harness(
    matrix_world: MatrixWorld, matrix_room: str, served_forge: ForgejoSandbox, tmp_path: Path
) -> Iterator[Harness]:
    running = Harness(matrix_settings(matrix_world, matrix_room, served_forge), tmp_path / "s")
    running.start()
    yield running
    running.close()


NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def new_agent(store: Store, agent_id: str = "build-01") -> Agent:
    agent = Agent(
        id=agent_id,
        type="claude-code",
        hostname="build-01.example.org",
        mode=ExecutionMode.PULL,
        registered_at=NOW,
    )
    store.put_agent(agent)
    return agent


def new_task(store: Store, number: int, title: str = "Fix the login form") -> Task:
    task = Task(
        id=task_id_for(DEMO_REPO, number),
        repo=DEMO_REPO,
        issue_number=number,
        title=title,
        created_at=NOW,
        updated_at=NOW,
    )
    store.put_task(task)
    return task


def live_task(store: Store, task: Task, agent: Agent) -> list[Task]:
    """Take ``task`` through assigned → running → in review → completed, recording each move."""
    states: list[Task] = []
    at = NOW
    task, event = assign(task, agent.id, now=at, actor="reconciler")
    store.record(task, event)
    states.append(task)
    for state, extra in (
        (TaskState.RUNNING, {}),
        (TaskState.REVIEW_PENDING, {"pr_number": 7}),
    ):
        at += timedelta(minutes=3)
        task, event = transition(task, state, now=at, actor=f"agent:{agent.id}", **extra)
        store.record(task, event)
        states.append(task)
    store.put_receipt(
        Receipt(
            id="r-1",
            task_id=task.id,
            agent_id=agent.id,
            lease_generation=task.lease_generation,
            pr_number=7,
            cost_usd=0.42,
            tokens=12345,
            submitted_at=at,
        )
    )
    at += timedelta(minutes=4)
    task, event = transition(task, TaskState.COMPLETED, now=at, actor="reconciler")
    store.record(task, event)
    states.append(task)
    return states


def content_of(event: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = event["content"]
    return content


def relation(event: dict[str, Any]) -> dict[str, Any]:
    relates: dict[str, Any] = content_of(event).get("m.relates_to") or {}
    return relates


def top_level(messages: list[dict[str, Any]], sender: str) -> list[dict[str, Any]]:
    """The sender's messages that are neither edits nor thread replies."""
    return [m for m in messages if m["sender"] == sender and not relation(m)]


def labelled_issue(harness: Harness, title: str) -> int:
    from controllers.setup import label_specs

    harness.gateway.ensure_labels(DEMO_REPO, label_specs(harness.settings))
    issue = harness.gateway.create_issue(
        DEMO_REPO, title=title, labels=[harness.settings.labels.trigger]
    )
    return issue.number


def answers_to(world: MatrixWorld, room: str, command_event: str) -> list[dict[str, Any]]:
    return [
        m
        for m in world.synapse.thread(world.alice, room, command_event)
        if m["sender"] == world.bot.user_id
    ]
