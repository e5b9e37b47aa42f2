"""What needs a person gets a message of its own, against a real Synapse.

A task failed for good, an agent going offline and coming back, a task stuck: each is one
top-level message (mentioning ``matrix.mention_users``, and only these messages do), besides
the task message's edit and the line in the agent's thread. Harness and helpers:
tests/synapse_fixtures.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.models import (
    AgentId,
    AgentStatus,
    Question,
    TaskEvent,
    TaskState,
    assign,
    transition,
)
from reconciler.sandbox import ForgejoSandbox
from tests.synapse_fixtures import (
    NOW,
    Harness,
    MatrixWorld,
    content_of,
    matrix_settings,
    new_agent,
    new_task,
    relation,
    top_level,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def mentioning(
    matrix_world: MatrixWorld, matrix_room: str, served_forge: ForgejoSandbox, tmp_path: Path
) -> Any:
    """The Matrix thread with alice in ``matrix.mention_users``."""
    base = matrix_settings(matrix_world, matrix_room, served_forge)
    settings = base.model_copy(
        update={
            "matrix": base.matrix.model_copy(
                update={"mention_users": (matrix_world.alice.user_id,)}
            )
        }
    )
    running = Harness(settings, tmp_path / "s")
    running.start()
    yield running
    running.close()


def bot_roots(world: MatrixWorld, room: str) -> list[dict[str, Any]]:
    return top_level(world.synapse.messages(world.alice, room), world.bot.user_id)


def test_a_task_failed_for_good_edits_its_message_and_asks_for_a_person(
    mentioning: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """The task message is edited to failed with the reason; a message of its own says it
    failed for good, mentions alice, and quotes the agent's over-long reason cut short with
    a link to the issue; the agent's thread says failed."""
    store = mentioning.store
    agent = new_agent(store)
    task, event = assign(new_task(store, 41), agent.id, now=NOW, actor="reconciler")
    store.record(task, event)
    task, event = transition(task, TaskState.RUNNING, now=NOW, actor="agent:build-01")
    store.record(task, event)
    task, event = transition(
        task,
        TaskState.FAILED,
        now=NOW + timedelta(minutes=2),
        actor="agent:build-01",
        reason="the agent exited with 2: tests do not pass " + "@room spam " * 200,
        failure_reason="the agent exited with 2: tests do not pass",
        failure_retryable=False,
    )
    store.record(task, event)
    mentioning.service.wake()
    wait_until("the outbox to drain", mentioning.service.idle)

    messages = matrix_world.synapse.messages(matrix_world.alice, matrix_room)
    roots = top_level(messages, matrix_world.bot.user_id)
    task_message = next(m for m in roots if content_of(m)["body"].startswith("📋"))
    edits = [m for m in messages if relation(m).get("event_id") == task_message["event_id"]]
    last = content_of(edits[-1])["m.new_content"]["body"]
    assert last.split("\n")[0].endswith("— failed") and "tests do not pass" in last
    assert "@alice" not in content_of(task_message)["body"], "task messages mention nobody"

    person = [m for m in roots if "failed for good" in content_of(m)["body"]]
    assert len(person) == 1
    content = content_of(person[0])
    assert content["body"].startswith(matrix_world.alice.user_id)
    assert content["m.mentions"] == {"user_ids": [matrix_world.alice.user_id]}
    assert "tests do not pass" in content["body"]
    # The agent's long text is cut, stripped of @room, and points at the issue for the rest.
    assert "@room" not in content["body"] and "… (more: http" in content["body"]
    assert len(content["body"]) < mentioning.settings.matrix.max_text_length + 200

    agent_root = next(m for m in roots if content_of(m)["body"].startswith("🤖 build-01"))
    thread = matrix_world.synapse.thread(matrix_world.alice, matrix_room, agent_root["event_id"])
    assert any("failed: the agent exited with 2" in content_of(m)["body"] for m in thread)


def test_an_agent_going_offline_and_back_is_said_once_each(
    mentioning: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """Offline, then back online: a message of its own for each (mentioning alice) and a
    line for each in the agent's thread, each exactly once."""
    store = mentioning.store
    agent = new_agent(store)
    mentioning.service.wake()
    wait_until("the agent's thread root", lambda: bot_roots(matrix_world, matrix_room))
    offline = agent.model_copy(
        update={
            "status": AgentStatus.OFFLINE,
            "status_reason": "missed 3 heartbeats",
            "status_since": NOW + timedelta(minutes=1),
        }
    )
    store.put_agent(offline)
    mentioning.service.wake()
    wait_until("the offline message", mentioning.service.idle)
    store.put_agent(
        offline.model_copy(
            update={
                "status": AgentStatus.ONLINE,
                "status_reason": "",
                "status_since": NOW + timedelta(minutes=5),
            }
        )
    )
    mentioning.service.wake()
    wait_until(
        "the back-online message",
        lambda: [
            m
            for m in bot_roots(matrix_world, matrix_room)
            if "back online" in content_of(m)["body"]
        ],
    )
    wait_until("the outbox to drain", mentioning.service.idle)

    roots = bot_roots(matrix_world, matrix_room)
    bodies = [content_of(m)["body"] for m in roots]
    assert len([b for b in bodies if "agent build-01 is offline" in b]) == 1, bodies
    assert len([b for b in bodies if "agent build-01 is back online" in b]) == 1, bodies
    assert len([b for b in bodies if b.startswith("🤖 build-01")]) == 1, bodies
    assert any("missed 3 heartbeats" in b for b in bodies)
    root = next(m for m in roots if content_of(m)["body"].startswith("🤖 build-01"))
    thread = [
        content_of(m)["body"]
        for m in matrix_world.synapse.thread(matrix_world.alice, matrix_room, root["event_id"])
    ]
    assert thread == [
        "🤖 build-01 is offline: missed 3 heartbeats",
        "🤖 build-01 is back online",
    ]


def test_a_stuck_task_gets_a_message_of_its_own(
    mentioning: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """A task no agent can take (the waiting reason says why) is a message for a person."""
    store = mentioning.store
    task = new_task(store, 43)
    reason = "no agent has the capabilities code:rust"
    waiting = task.model_copy(update={"wait_reason": reason})
    store.record(
        waiting,
        TaskEvent(task_id=task.id, at=NOW, actor="reconciler", kind="waiting", reason=reason),
    )
    mentioning.service.wake()
    found = wait_until(
        "the stuck message",
        lambda: [
            m for m in bot_roots(matrix_world, matrix_room) if "is stuck" in content_of(m)["body"]
        ],
    )
    assert len(found) == 1 and "code:rust" in content_of(found[0])["body"]


def test_a_question_for_the_maintainers_gets_a_message_of_its_own(
    mentioning: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """An agent's question to the maintainers is a message for a person; one for a role is
    not (an agent of that role takes it)."""
    store = mentioning.store
    for number, role in ((44, None), (45, "architect")):
        task = new_task(store, number)
        asked = Question(number=1, text=f"Which port, {number}?", asked_at=NOW,
                         asked_by=AgentId("a1"), lease_generation=1, role=role)  # fmt: skip
        store.record(
            task.model_copy(update={"questions": (asked,)}),
            TaskEvent(task_id=task.id, at=NOW, actor="agent:a1", kind="question",
                      reason=f"asks someone: Which port, {number}?", data={"question": 1}),
        )  # fmt: skip
    mentioning.service.wake()
    found = wait_until(
        "the question's message",
        lambda: [
            m for m in bot_roots(matrix_world, matrix_room)
            if "needs an answer from the maintainers" in content_of(m)["body"]
        ],
    )  # fmt: skip
    assert len(found) == 1 and "Which port, 44?" in content_of(found[0])["body"]
    assert matrix_world.alice.user_id in content_of(found[0])["body"]


def test_a_host_restarted_by_the_registry_is_a_message_of_its_own(
    mentioning: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """An offline host whose restart command ran (the registry adds ``· restart: …`` to the
    reason) gets one "was restarted" message with how the restart ended."""
    store = mentioning.store
    agent = new_agent(store)
    mentioning.service.wake()
    wait_until("the agent's thread root", lambda: bot_roots(matrix_world, matrix_room))
    offline = agent.model_copy(
        update={
            "status": AgentStatus.OFFLINE,
            "status_reason": "disk almost full (3 failed checks in a row)",
            "status_since": NOW + timedelta(minutes=1),
        }
    )
    store.put_agent(offline)
    mentioning.service.wake()
    wait_until("the offline message", mentioning.service.idle)
    store.put_agent(
        offline.model_copy(
            update={"status_reason": offline.status_reason + " · restart: exited 0 (done)"}
        )
    )
    mentioning.service.wake()

    def restarted() -> list[dict[str, Any]]:
        return [
            m
            for m in bot_roots(matrix_world, matrix_room)
            if "host build-01 was restarted" in content_of(m)["body"]
        ]

    wait_until("the restart message", restarted)
    wait_until("the outbox to drain", mentioning.service.idle)
    found = restarted()
    assert len(found) == 1 and "exited 0" in content_of(found[0])["body"]
    assert content_of(found[0])["m.mentions"] == {"user_ids": [matrix_world.alice.user_id]}
