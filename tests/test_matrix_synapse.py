"""The Matrix thread against a real Synapse: what the room sees, commands, outages, set-up errors.

One Synapse per session (tests/synapse_fixtures.py, which also holds the harness), a fresh room
per test, the in-memory Forgejo on loopback for the commands' writes. Task events are recorded
in the store exactly as the controllers record them (``transition`` + ``Store.record``); the
notifier follows the log. Waits poll the homeserver or the store with a deadline; nothing
sleeps for a condition.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from reconciler.matrix.metrics import MatrixMetrics
from reconciler.models import TaskState, assign, transition
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import Settings
from tests.sandbox_fixtures import DEMO_REPO
from tests.synapse_fixtures import (
    NOW,
    Harness,
    MatrixWorld,
    answers_to,
    content_of,
    labelled_issue,
    live_task,
    matrix_settings,
    new_agent,
    new_task,
    relation,
    top_level,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_task_life_is_one_room_message_edited_through_each_state(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """One room message per task, edited in place from assigned to done; the agent's thread
    has its root and one reply per step."""
    synapse, bot = matrix_world.synapse, matrix_world.bot.user_id
    agent = new_agent(harness.store)
    live_task(harness.store, new_task(harness.store, 12), agent)
    harness.service.wake()
    wait_until("the outbox to drain", harness.service.idle)

    messages = synapse.messages(matrix_world.alice, matrix_room)
    roots = top_level(messages, bot)
    task_messages = [m for m in roots if "#12" in content_of(m)["body"]]
    agent_roots = [m for m in roots if content_of(m)["body"].startswith("🤖 build-01")]
    assert len(task_messages) == 1 and len(agent_roots) == 1, [c["content"] for c in roots]
    task_message = task_messages[0]
    assert "assigned" in content_of(task_message)["body"]
    assert content_of(task_message)["msgtype"] == "m.notice"

    edits = [
        m
        for m in messages
        if relation(m).get("rel_type") == "m.replace"
        and relation(m).get("event_id") == task_message["event_id"]
    ]
    bodies = [content_of(m)["m.new_content"]["body"] for m in edits]
    assert [b.split("\n")[0].rsplit("— ", 1)[1] for b in bodies] == ["running", "in review", "done"]
    assert "PR #7" in bodies[-1] and "$0.42" in bodies[-1] and "12345 tokens" in bodies[-1]
    assert "took 10 min" in bodies[-1]

    thread = synapse.thread(matrix_world.alice, matrix_room, agent_roots[0]["event_id"])
    replies = [content_of(m)["body"] for m in thread]
    assert [r.split(" ", 2)[2] for r in replies] == [
        "assigned",
        "started",
        "in review",
        "completed",
    ]


def test_text_from_issues_is_stripped_of_mentions_and_room_pings(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """An issue title with @room and a user id reaches the room without either, and the
    message declares no mentions."""
    agent = new_agent(harness.store)
    task = new_task(harness.store, 13, title="@room ping @alice:localhost <b>now</b>")
    task, event = assign(task, agent.id, now=NOW, actor="reconciler")
    harness.store.record(task, event)
    harness.service.wake()
    wait_until("the outbox to drain", harness.service.idle)
    messages = top_level(
        matrix_world.synapse.messages(matrix_world.alice, matrix_room), matrix_world.bot.user_id
    )
    posted = next(content_of(m) for m in messages if "#13" in content_of(m)["body"])
    assert "@room" not in posted["body"] and "@alice:localhost" not in posted["body"]
    assert "<b>now</b>" not in posted["formatted_body"]
    assert "&lt;b&gt;now&lt;/b&gt;" in posted["formatted_body"]
    assert posted["m.mentions"] == {}


def test_retry_from_an_allowed_user_adds_the_label_comments_and_answers(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """`!fleet retry #N` from an allowed user adds fleet/retry in Forgejo, says on the issue
    who asked, and answers in a thread of the command."""
    number = labelled_issue(harness, "Flaky test")
    sent = matrix_world.synapse.send_text(
        matrix_world.alice, matrix_room, f"!fleet retry #{number}"
    )
    answers = wait_until("the bot's answer", lambda: answers_to(matrix_world, matrix_room, sent))
    assert len(answers) == 1
    assert "Done: added fleet/retry" in content_of(answers[0])["body"]
    issue = harness.gateway.get_issue(DEMO_REPO, number)
    assert harness.settings.labels.retry in issue.labels
    comments = harness.gateway.list_comments(DEMO_REPO, number)
    assert [c for c in comments if matrix_world.alice.user_id in c.body and "retry" in c.body]
    assert harness.enqueued, "the issue's key is queued so the change is acted on soon"


def test_a_command_from_someone_not_allowed_is_refused_and_changes_nothing(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """mallory is not on the allow-list: a polite refusal, no label, no comment."""
    number = labelled_issue(harness, "Do not touch")
    before = harness.gateway.get_issue(DEMO_REPO, number)
    sent = matrix_world.synapse.send_text(
        matrix_world.mallory, matrix_room, f"!fleet retry #{number}"
    )
    answers = wait_until("the bot's refusal", lambda: answers_to(matrix_world, matrix_room, sent))
    assert "not allowed" in content_of(answers[0])["body"]
    after = harness.gateway.get_issue(DEMO_REPO, number)
    assert after.labels == before.labels
    assert harness.gateway.list_comments(DEMO_REPO, number) == ()


def test_unknown_commands_get_the_usage_line(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """A command agent-fleet does not know is answered with the usage line."""
    sent = matrix_world.synapse.send_text(matrix_world.alice, matrix_room, "!fleet frobnicate")
    answers = wait_until("the usage line", lambda: answers_to(matrix_world, matrix_room, sent))
    assert "usage: !fleet help" in content_of(answers[0])["body"]


def test_messages_queued_while_synapse_is_down_arrive_exactly_once(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """Synapse stopped while tasks move, then started again: the outbox grows, then drains,
    and every message is in the room exactly once."""
    synapse = matrix_world.synapse
    agent = new_agent(harness.store)
    first = new_task(harness.store, 21)
    task, event = assign(first, agent.id, now=NOW, actor="reconciler")
    harness.store.record(task, event)
    harness.service.wake()
    wait_until("the first message", harness.service.idle)

    synapse.stop()
    try:
        task, event = transition(task, TaskState.RUNNING, now=NOW, actor="agent:build-01")
        harness.store.record(task, event)
        live_task(harness.store, new_task(harness.store, 22), agent)
        wait_until("Matrix to show degraded", lambda: not harness.service.status().ok)
        assert harness.pending() > 0
    finally:
        synapse.start()
    wait_until("the outbox to drain after the outage", harness.service.idle)

    # Read with the bot's token: each of its messages shows the transaction id it was sent as.
    messages = [
        m
        for m in synapse.messages(matrix_world.bot, matrix_room)
        if m["sender"] == matrix_world.bot.user_id
    ]
    txns = [m["unsigned"].get("transaction_id") for m in messages]
    assert None not in txns and len(txns) == len(set(txns)), f"a message arrived twice: {txns}"
    assert harness.pending() == 0
    roots = top_level(messages, matrix_world.bot.user_id)
    assert len([m for m in roots if "#21" in content_of(m)["body"]]) == 1
    assert len([m for m in roots if "#22" in content_of(m)["body"]]) == 1
    assert len([m for m in roots if content_of(m)["body"].startswith("🤖")]) == 1
    edits_22 = [
        m for m in messages if "* ⚙️" in content_of(m)["body"] and "#22" in content_of(m)["body"]
    ]
    assert len(edits_22) == 1


def status_saying(running: Harness, word: str) -> str | None:
    """The Matrix status detail once it mentions ``word``; None before."""
    status = running.service.status()
    return status.detail if word in status.detail else None


def started_with(settings: Settings, store_path: Path) -> Harness:
    """A Matrix thread started on ``settings`` without waiting for it to connect."""
    running = Harness(settings, store_path)
    running.service.start()
    return running


# A well-formed room id (version 12: 43 characters of url-safe base64) no one created.
UNKNOWN_ROOM = "!" + "Q" * 43


def test_an_unknown_room_is_a_clear_error_and_nothing_is_lost(
    matrix_world: MatrixWorld, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """A room id the homeserver does not know: the status says which room and what to do;
    messages queued meanwhile stay in the outbox."""
    settings = matrix_settings(matrix_world, UNKNOWN_ROOM, served_forge)
    running = started_with(settings, tmp_path / "s")
    try:
        detail = wait_until(
            "the room error",
            lambda: status_saying(running, "room"),
        )
        assert not running.service.status().ok
        assert f"cannot join the room {UNKNOWN_ROOM}" in detail and "invite the bot" in detail
        agent = new_agent(running.store)
        task, event = assign(new_task(running.store, 31), agent.id, now=NOW, actor="reconciler")
        running.store.record(task, event)
        running.service.notifier.scan()
        assert running.pending() > 0, "the messages wait in the outbox"
    finally:
        running.close()


def test_an_unknown_room_alias_is_a_clear_error(
    matrix_world: MatrixWorld, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """An alias nobody created: the status names the alias as unknown."""
    settings = matrix_settings(matrix_world, "#nowhere:localhost", served_forge)
    running = started_with(settings, tmp_path / "s")
    try:
        detail = wait_until(
            "the alias error",
            lambda: status_saying(running, "alias"),
        )
        assert "the room alias #nowhere:localhost is unknown" in detail
    finally:
        running.close()


def test_an_encrypted_room_is_refused_and_nothing_is_posted_there(
    matrix_world: MatrixWorld, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The bot does not do end-to-end encryption: an encrypted room is refused with a clear
    reason and nothing is sent into it in plain text."""
    synapse = matrix_world.synapse
    room = synapse.create_room(
        matrix_world.alice,
        invite=[matrix_world.bot],
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    running = started_with(matrix_settings(matrix_world, room, served_forge), tmp_path / "s")
    try:
        detail = wait_until(
            "the encryption refusal",
            lambda: status_saying(running, "encrypted"),
        )
        assert "supports unencrypted rooms only" in detail
        agent = new_agent(running.store)
        task, event = assign(new_task(running.store, 32), agent.id, now=NOW, actor="reconciler")
        running.store.record(task, event)
        running.service.notifier.scan()
        assert running.pending() > 0, "the messages wait in the outbox"
        sent = synapse.messages(matrix_world.alice, room)
        assert not [m for m in sent if m["sender"] == matrix_world.bot.user_id]
    finally:
        running.close()


def test_the_bot_names_its_device_and_keeps_it(harness: Harness, matrix_world: MatrixWorld) -> None:
    """The configured token's device gets matrix.device_name as its display name; no new
    device is created (a fresh login would break the homeserver's transaction dedup)."""
    synapse, bot = matrix_world.synapse, matrix_world.bot
    device = synapse.request("GET", f"/_matrix/client/v3/devices/{bot.device_id}", token=bot.token)
    assert device["display_name"] == harness.settings.matrix.device_name
    devices = synapse.request("GET", "/_matrix/client/v3/devices", token=bot.token)["devices"]
    assert [d["device_id"] for d in devices] == [bot.device_id]


def test_a_room_encrypted_while_running_gets_nothing_more_in_plain_text(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """Someone turns encryption on: Matrix shows degraded saying why, and what happens next
    waits in the outbox instead of being posted in plain text."""
    synapse = matrix_world.synapse
    agent = new_agent(harness.store)
    task, event = assign(new_task(harness.store, 51), agent.id, now=NOW, actor="reconciler")
    harness.store.record(task, event)
    harness.service.wake()
    wait_until("the first message", harness.service.idle)
    synapse.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{matrix_room}/state/m.room.encryption/",
        {"algorithm": "m.megolm.v1.aes-sha2"},
        token=matrix_world.alice.token,
    )
    detail = wait_until("the refusal", lambda: status_saying(harness, "was encrypted"))
    assert "supports unencrypted rooms only" in detail
    before = [m["event_id"] for m in synapse.messages(matrix_world.alice, matrix_room)]
    task, event = transition(task, TaskState.RUNNING, now=NOW, actor="agent:build-01")
    harness.store.record(task, event)
    harness.service.wake()
    wait_until("the next messages to be queued", lambda: harness.pending() > 0)
    assert not harness.service.status().ok
    assert [m["event_id"] for m in synapse.messages(matrix_world.alice, matrix_room)] == before


def test_429_answers_are_waited_out_and_every_message_arrives_once(
    matrix_world: MatrixWorld, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """A bot Synapse limits to one message a second: deliveries meet 429s, wait as told
    (retry_after_ms), and every message arrives once and in order."""
    synapse, alice = matrix_world.synapse, matrix_world.alice
    suffix = uuid.uuid4().hex[:8]
    admin = synapse.register(f"admin-{suffix}", admin=True)
    slow = synapse.register(f"slowbot-{suffix}")
    synapse.request(
        "POST",
        f"/_synapse/admin/v1/users/{slow.user_id}/override_ratelimit",
        {"messages_per_second": 1, "burst_count": 1},
        token=admin.token,
    )
    room = synapse.create_room(alice, invite=[slow])
    base = matrix_settings(matrix_world, room, served_forge)
    settings = base.model_copy(
        update={
            "matrix": base.matrix.model_copy(
                update={"user_id": slow.user_id, "access_token": SecretStr(slow.token)}
            )
        }
    )
    registry = CollectorRegistry()
    running = Harness(settings, tmp_path / "s", metrics=MatrixMetrics(registry))
    running.start()
    try:
        agent = new_agent(running.store)
        task, event = assign(new_task(running.store, 61), agent.id, now=NOW, actor="reconciler")
        running.store.record(task, event)
        running.service.wake()
        wait_until("the outbox to drain", running.service.idle)
        limited = registry.get_sample_value(
            "agent_fleet_matrix_deliveries_total", {"result": "rate_limited"}
        )
    finally:
        running.close()
    assert limited is not None and limited >= 1, "the homeserver never said 429"
    sent = [m for m in synapse.messages(slow, room) if m["sender"] == slow.user_id]
    txns = [m["unsigned"].get("transaction_id") for m in sent]
    assert len(txns) == len(set(txns)) == 3, txns
    bodies = [content_of(m)["body"] for m in sent]
    assert bodies[0].startswith("🤖 build-01") and "#61" in bodies[1], bodies
    assert bodies[2].endswith("#61 assigned"), bodies
