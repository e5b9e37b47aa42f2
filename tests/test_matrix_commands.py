"""`!fleet` commands against a real Synapse: threads, the Forgejo mapping, restarts.

Builds on the harness of tests/test_matrix_synapse.py (one Synapse per session, a fresh room
per test, the in-memory Forgejo on loopback for the commands' writes). Waits poll the
homeserver with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry

from reconciler.matrix.metrics import MatrixMetrics
from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO
from tests.synapse_fixtures import (
    Harness,
    MatrixWorld,
    answers_to,
    content_of,
    labelled_issue,
    matrix_settings,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_command_in_a_thread_is_answered_in_that_thread_and_hold_release_round_trip(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """`!fleet hold` and `!fleet release` sent as replies in a thread are answered in that
    thread; the hold label comes and goes in Forgejo, one comment per command names who
    asked."""
    synapse, alice = matrix_world.synapse, matrix_world.alice
    number = labelled_issue(harness, "Wait for the release")
    root = synapse.send_text(alice, matrix_room, "about the release")
    in_thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    synapse.send_text(alice, matrix_room, f"!fleet hold #{number}", **in_thread)
    wait_until("the hold answer", lambda: answers_to(matrix_world, matrix_room, root))
    assert harness.settings.labels.hold in harness.gateway.get_issue(DEMO_REPO, number).labels
    synapse.send_text(alice, matrix_room, f"!fleet release #{number}", **in_thread)
    wait_until("the release answer", lambda: len(answers_to(matrix_world, matrix_room, root)) > 1)
    answers = answers_to(matrix_world, matrix_room, root)
    assert len(answers) == 2
    assert "added fleet/hold" in content_of(answers[0])["body"]
    assert "removed fleet/hold" in content_of(answers[1])["body"]
    assert harness.settings.labels.hold not in harness.gateway.get_issue(DEMO_REPO, number).labels
    comments = harness.gateway.list_comments(DEMO_REPO, number)
    assert len([c for c in comments if alice.user_id in c.body]) == 2


def test_why_and_bad_arguments_are_answered_without_writing(
    harness: Harness, matrix_world: MatrixWorld, matrix_room: str
) -> None:
    """`!fleet why #N` reads the local state; `!fleet retry` with no issue gets the usage
    line; neither writes to Forgejo."""
    synapse, alice = matrix_world.synapse, matrix_world.alice
    number = labelled_issue(harness, "Not seen yet")
    why = synapse.send_text(alice, matrix_room, f"!fleet why #{number}")
    answer = wait_until("the why answer", lambda: answers_to(matrix_world, matrix_room, why))
    assert "is not a task agent-fleet knows" in content_of(answer[0])["body"]
    bad = synapse.send_text(alice, matrix_room, "!fleet retry")
    usage = wait_until("the usage line", lambda: answers_to(matrix_world, matrix_room, bad))
    assert "usage: !fleet help" in content_of(usage[0])["body"]
    assert harness.gateway.list_comments(DEMO_REPO, number) == ()


def test_an_allowed_user_mapped_to_a_forgejo_login_without_write_access_is_refused(
    matrix_world: MatrixWorld, matrix_room: str, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """alice is on the allow-list but mapped to a Forgejo account that cannot write to the
    repo: refused, no label, no comment."""
    served_forge.create_user("alice-reader")
    base = matrix_settings(matrix_world, matrix_room, served_forge)
    settings = base.model_copy(
        update={
            "matrix": base.matrix.model_copy(
                update={"forgejo_logins": {matrix_world.alice.user_id: "alice-reader"}}
            )
        }
    )
    running = Harness(settings, tmp_path / "s")
    running.start()
    try:
        number = labelled_issue(running, "Mapped")
        before = running.gateway.get_issue(DEMO_REPO, number).labels
        sent = matrix_world.synapse.send_text(
            matrix_world.alice, matrix_room, f"!fleet retry #{number}"
        )
        answers = wait_until("the refusal", lambda: answers_to(matrix_world, matrix_room, sent))
        body = content_of(answers[0])["body"]
        assert "alice-reader cannot write to" in body and "nothing was changed" in body
        assert running.gateway.get_issue(DEMO_REPO, number).labels == before
        assert running.gateway.list_comments(DEMO_REPO, number) == ()
    finally:
        running.close()


def test_a_restart_neither_replays_old_commands_nor_misses_new_ones(
    matrix_world: MatrixWorld, matrix_room: str, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The sync token is kept in the store: after a restart an answered command is not run
    again, a command sent while the bot was down is answered once, and the bot's own
    `!fleet` text is never taken as a command."""
    synapse, alice = matrix_world.synapse, matrix_world.alice
    settings = matrix_settings(matrix_world, matrix_room, served_forge)
    registry = CollectorRegistry()
    metrics = MatrixMetrics(registry)
    first = Harness(settings, tmp_path / "s", metrics=metrics)
    first.start()
    number = labelled_issue(first, "Twice?")
    before = synapse.send_text(alice, matrix_room, f"!fleet retry #{number}")
    wait_until("the first answer", lambda: answers_to(matrix_world, matrix_room, before))
    wait_until("the answer delivered", first.service.idle)
    commands = {"command": "retry", "outcome": "ok"}
    assert registry.get_sample_value("agent_fleet_matrix_commands_total", commands) == 1
    delivered = registry.get_sample_value(
        "agent_fleet_matrix_deliveries_total", {"result": "delivered"}
    )
    assert delivered is not None and delivered >= 1
    assert registry.get_sample_value("agent_fleet_matrix_outbox_depth") == 0
    first.close()

    during = synapse.send_text(alice, matrix_room, "!fleet help")
    own = synapse.send_text(matrix_world.bot, matrix_room, "!fleet help")
    second = Harness(settings, tmp_path / "s")
    second.start()
    try:
        wait_until(
            "the missed command's answer", lambda: answers_to(matrix_world, matrix_room, during)
        )
        later = synapse.send_text(alice, matrix_room, "!fleet help")
        wait_until("a new command's answer", lambda: answers_to(matrix_world, matrix_room, later))
        wait_until("everything delivered", second.service.idle)
        assert len(answers_to(matrix_world, matrix_room, before)) == 1, "an old command ran again"
        assert len(answers_to(matrix_world, matrix_room, during)) == 1
        assert answers_to(matrix_world, matrix_room, own) == [], "the bot answered itself"
        comments = second.gateway.list_comments(DEMO_REPO, number)
        assert len([c for c in comments if alice.user_id in c.body]) == 1
    finally:
        second.close()


def test_the_first_start_ignores_commands_sent_before_it_and_accepts_an_alias(
    matrix_world: MatrixWorld, matrix_room: str, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Configured by alias: the bot resolves it and joins; a command sent before the bot
    ever started is history and is not run, one sent after is answered."""
    synapse, alice = matrix_world.synapse, matrix_world.alice
    alias = f"#fleet-{tmp_path.name.lower()[-20:]}:localhost"
    synapse.request(
        "PUT",
        f"/_matrix/client/v3/directory/room/{quote(alias, safe='')}",
        {"room_id": matrix_room},
        token=alice.token,
    )
    old = synapse.send_text(alice, matrix_room, "!fleet help")
    running = Harness(matrix_settings(matrix_world, alias, served_forge), tmp_path / "s")
    running.start()
    try:
        assert running.service.room_id == matrix_room
        new = synapse.send_text(alice, matrix_room, "!fleet help")
        wait_until("the new command's answer", lambda: answers_to(matrix_world, matrix_room, new))
        wait_until("everything delivered", running.service.idle)
        assert answers_to(matrix_world, matrix_room, old) == [], "history was run as a command"
    finally:
        running.close()
