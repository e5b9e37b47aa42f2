"""`agent-fleet run` with Matrix enabled, as a real process, against the session's Synapse.

The daemon is started with ``python -m webhook run --config …`` against the in-memory Forgejo
on loopback, with the local host running the deterministic demo agent; a person labels an
issue and approves and merges the pull request. The tests check what the room holds by
reading it from Synapse:

* SIGKILL right after the homeserver accepted a message and before the delivery is recorded
  (``FLEET_FAILPOINT=matrix.after_send:N``), several times over a task's life, then a restart:
  every message is in the room exactly once;
* a bad access token: start-up says so clearly, ``/readyz`` stays 200 with Matrix listed as
  degraded, and the daemon keeps reconciling (the labelled issue is assigned).

Waits poll with a deadline (the log file, the HTTP surface, the homeserver); nothing sleeps
for a condition.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.matrix.client import failpoint_after_send
from reconciler.matrix.notifier import TOPIC
from reconciler.sandbox import ForgejoSandbox
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO
from tests.synapse_fixtures import MatrixWorld, content_of, relation, top_level, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REVIEWER = "alice"
FLOW_DEADLINE = 90.0


def config_text(
    forge: ForgejoSandbox, root: Path, world: MatrixWorld, room: str, *, token: str
) -> str:
    command = json.dumps([sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"])
    return f"""
[forgejo]
url = "{forge.url}"
token = "{forge.admin_token}"
repos = ["{DEMO_REPO}"]
bot_login = "{forge.admin_login}"

[webhook]
port = 0
secret = "matrix-daemon-test-secret"

[loop]
workers = 2
resync_interval = 1
full_resync_interval = 5
backoff_initial = 0.2
backoff_max = 2
shutdown_grace = 5

[store]
path = "{root / "state"}"

[[hosts]]
name = "local-dev"
address = "localhost"
agent_type = "demo-agent"
adapter = "demo-agent"
roles = ["developer"]
capabilities = ["code:python"]
max_concurrency = 1
workdir = "{root / "work"}"
health_interval = 30
min_free_disk_mb = 1

[adapters.demo-agent]
command = {command}
parser = "claude-json"

[matrix]
enabled = true
homeserver = "{world.synapse.url}"
user_id = "{world.bot.user_id}"
access_token = "{token}"
room_id = "{room}"
allowed_users = ["{world.alice.user_id}"]
poll_interval = 0.1
sync_timeout = 1
retry_initial = 0.2
retry_max = 1
"""


class FleetProcess:
    """One `agent-fleet run` process after another on the same config and store."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, *, failpoint: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FLEET_")}
        env.pop("FLEET_FAILPOINT", None)
        env["PYTHONPATH"] = str(ROOT)
        if failpoint is not None:
            env["FLEET_FAILPOINT"] = failpoint
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhook", "run", "--config", str(self.config), "--log-json"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the agent runs it starts are its group: killed with it
        )
        out.close()

    def records(self) -> list[dict[str, Any]]:
        """This process's JSON log records so far."""
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            lines = handle.read().decode(errors="replace").splitlines()
        found = []
        for line in lines:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def record(self, event: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r.get("event") == event), None)

    def exit_code(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def reap(self) -> None:
        """Kill what is left of the process group (its agent runs) once the daemon is gone."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.reap()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Person:
    """Labels the issue once the daemon created its labels; approves and merges its PR."""

    def __init__(self, forge: ForgejoSandbox) -> None:
        self.forge = forge
        self.gateway = ForgejoGateway(forge.url, forge.admin_token)
        self.deferred: list[str] = []
        forge.create_user(REVIEWER)
        self.gateway.add_collaborator(DEMO_REPO, REVIEWER, permission="write")
        self.number = self.gateway.create_issue(
            DEMO_REPO, title="Add a note", body="Write a note."
        ).number

    def act(self) -> None:
        issue = self.gateway.get_issue(DEMO_REPO, self.number)
        if "fleet/task" not in issue.labels:
            names = {label.name for label in self.gateway.list_labels(DEMO_REPO)}
            if "fleet/task" in names:
                self.gateway.add_labels(DEMO_REPO, self.number, ["fleet/task"])
            return
        for pull in self.gateway.list_pulls(DEMO_REPO, state="open"):
            if pull.head_branch.startswith("task/"):
                try:
                    self.forge.review(
                        DEMO_REPO, pull.number, "APPROVED", body="ok", author=REVIEWER
                    )
                    self.forge.merge(DEMO_REPO, pull.number, author=REVIEWER)
                except Exception as exc:  # noqa: BLE001 -- a race with a push: the next round merges
                    self.deferred.append(repr(exc))

    def advance(self) -> bool:
        """Act once; whether the issue is done."""
        self.act()
        return self.done()

    def done(self) -> bool:
        return "status/done" in self.gateway.get_issue(DEMO_REPO, self.number).labels


@pytest.fixture
def live_forge() -> Iterator[ForgejoSandbox]:
    """The in-memory Forgejo on loopback, on the real clock (the daemon's own time passes)."""
    with ForgejoSandbox() as sandbox:
        sandbox.create_repo(DEMO_REPO)
        yield sandbox


def bot_messages(world: MatrixWorld, room: str) -> list[dict[str, Any]]:
    """The bot's messages in the room, read with the bot's own token (so each shows the
    transaction id it was sent under)."""
    return [m for m in world.synapse.messages(world.bot, room) if m["sender"] == world.bot.user_id]


def pending_ids(state: Path) -> list[str]:
    with Store.open(state) as store:
        return [m.id for m in store.pending(topic=TOPIC)]


def test_sigkill_between_send_and_record_never_shows_a_message_twice(
    matrix_world: MatrixWorld, matrix_room: str, live_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The daemon is killed right after a send and before its record, three times over a
    task's life (once with Synapse restarted before the daemon comes back); each restart
    re-sends under the same transaction id (same token, same device) and Synapse answers
    with the first event: every message is in the room once."""
    config = tmp_path / "fleet.toml"
    config.write_text(
        config_text(live_forge, tmp_path, matrix_world, matrix_room, token=matrix_world.bot.token)
    )
    fleet = FleetProcess(config, tmp_path / "daemon.log")
    person = Person(live_forge)
    try:
        for nth in (1, 2, 3):
            fleet.start(failpoint=f"matrix.after_send:{nth}")
            deadline = time.monotonic() + FLOW_DEADLINE
            while fleet.exit_code() is None:
                assert time.monotonic() < deadline, f"no kill after send {nth}:\n{fleet.tail()}"
                person.act()
                time.sleep(0.2)
            assert fleet.exit_code() == -signal.SIGKILL, fleet.tail()
            killed_at = fleet.record("matrix.failpoint")
            assert killed_at is not None, fleet.tail()
            fleet.reap()
            # The kill hit the window: the homeserver has the event, the outbox still has it.
            unacked = pending_ids(tmp_path / "state")
            assert unacked and unacked[0] == killed_at["message"], (unacked, killed_at)
            sent = {
                m["unsigned"].get("transaction_id"): m["event_id"]
                for m in bot_messages(matrix_world, matrix_room)
            }
            assert sent.get(killed_at["message"]) == killed_at["event_id"]
            if nth == 2:
                # The homeserver restarts too: its record of transaction ids is on disk.
                matrix_world.synapse.stop()
                matrix_world.synapse.start()

        fleet.start()
        wait_until("the task to be done", person.advance, timeout=FLOW_DEADLINE)
        wait_until(
            "the done edit and the completed reply in the room",
            lambda: room_shows_done(matrix_world, matrix_room),
        )
    finally:
        fleet.stop()
        person.gateway.close()

    messages = bot_messages(matrix_world, matrix_room)
    txns = [m["unsigned"].get("transaction_id") for m in messages]
    assert None not in txns, "every bot message was sent by the configured token's device"
    repeated = {t for t in txns if txns.count(t) > 1}
    assert not repeated, f"sent twice: {repeated}"
    unknown = [t for t in txns if not known_message(t, outbox_ids(tmp_path / "state"))]
    assert not unknown, f"sent under a transaction id that is no outbox message's: {unknown}"
    roots = top_level(messages, matrix_world.bot.user_id)
    task_messages = [m for m in roots if f"#{person.number}" in content_of(m)["body"]]
    agent_roots = [m for m in roots if content_of(m)["body"].startswith("🤖 local-dev")]
    assert len(task_messages) == 1, [content_of(m)["body"] for m in roots]
    assert len(agent_roots) == 1, [content_of(m)["body"] for m in roots]
    edits = [m for m in messages if relation(m).get("event_id") == task_messages[0]["event_id"]]
    assert edits and all(relation(m)["rel_type"] == "m.replace" for m in edits)
    thread = matrix_world.synapse.thread(matrix_world.bot, matrix_room, agent_roots[0]["event_id"])
    replies = [content_of(m)["body"] for m in thread]
    assert any(r.endswith("completed") for r in replies), "\n".join(replies)


def outbox_ids(state: Path) -> set[str]:
    """The ids the notifier gives the messages of every logged task event (its naming rule:
    ``task-<task>-<position>``, ``reply-<position>``, ``person-<position>``), and each agent's
    thread root."""
    ids: set[str] = set()
    with Store.open(state) as store:
        cursor = 0
        while True:
            events, cursor = store.events_after(cursor, limit=500)
            if not events:
                break
            for position, event in events:
                ids |= {f"task-{event.task_id}-{position}", f"reply-{position}"}
                ids.add(f"person-{position}")
        ids |= {f"root-{agent.id}" for agent in store.list_agents()}
    return ids


def known_message(txn: str | None, ids: set[str]) -> bool:
    """Whether ``txn`` is one outbox message's id (agent status lines carry a timestamp)."""
    if txn is None:
        return False
    return txn in ids or txn.startswith(("agent-", "person-agent-", "person-restart-"))


def room_shows_done(world: MatrixWorld, room: str) -> bool:
    """The task message was edited to done and the agent's thread says completed."""
    messages = bot_messages(world, room)
    done = [
        m
        for m in messages
        if relation(m).get("rel_type") == "m.replace"
        and content_of(m)["m.new_content"]["body"].split("\n")[0].endswith("— done")
    ]
    completed = [
        m
        for m in messages
        if relation(m).get("rel_type") == "m.thread" and content_of(m)["body"].endswith("completed")
    ]
    return bool(done and completed)


def test_a_bad_access_token_is_reported_and_reconciling_goes_on(
    matrix_world: MatrixWorld, matrix_room: str, live_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """A token the homeserver does not know: the log and /readyz say so plainly, /readyz stays
    200 with Matrix under degraded, and the labelled issue is still assigned to the agent."""
    config = tmp_path / "fleet.toml"
    config.write_text(
        config_text(live_forge, tmp_path, matrix_world, matrix_room, token="syt_not_a_real_token")
    )
    fleet = FleetProcess(config, tmp_path / "daemon.log")
    person = Person(live_forge)
    fleet.start()
    try:
        started = wait_until("the daemon to start", lambda: fleet.record("daemon.started"))
        status = wait_until(
            "Matrix's status in the log",
            lambda: next((r for r in fleet.records() if r.get("event") == "matrix.status"), None),
        )
        assert status["ok"] is False
        assert "the Matrix access token is not valid" in status["detail"]
        assert "syt_not_a_real_token" not in fleet.log.read_text()

        def ready() -> httpx.Response | None:
            answer = httpx.get(f"{started['url']}/readyz", timeout=5)
            return answer if answer.status_code == 200 else None

        answer = wait_until("/readyz to be 200", ready).json()
        assert "matrix" in answer["degraded"], answer
        assert "access token is not valid" in answer["checks"]["matrix"]["detail"]

        def assigned() -> bool:
            person.act()
            issue = person.gateway.get_issue(DEMO_REPO, person.number)
            return any(
                label.startswith("status/") and label != "status/todo" for label in issue.labels
            )

        wait_until("the issue to be taken by the agent", assigned, timeout=FLOW_DEADLINE)
        assert fleet.exit_code() is None
    finally:
        fleet.stop()
        person.gateway.close()


def test_the_failpoint_is_off_unless_named_and_refuses_a_bad_count() -> None:
    """No FLEET_FAILPOINT (or another one): no hook; `matrix.after_send:0` is refused."""
    assert failpoint_after_send({}) is None
    assert failpoint_after_send({"FLEET_FAILPOINT": "store.after_write"}) is None
    assert failpoint_after_send({"FLEET_FAILPOINT": "matrix.after_send:3"}) is not None
    with pytest.raises(ValueError, match="must be 1 or more"):
        failpoint_after_send({"FLEET_FAILPOINT": "matrix.after_send:0"})
