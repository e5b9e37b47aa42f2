"""Contract test: one write-path scenario, the same observations everywhere it runs.

``run_write_scenario`` drives the gateway through repo creation, the label vocabulary, issues,
exclusive scopes, marker comments, a pull request, statuses, reviews, a merge and a webhook. It
runs against the committed cassette (whatever Forgejo it was recorded on) and live against the
in-memory Forgejo; after ``normalise`` the two transcripts must be equal, so the fake cannot
drift from the recording unnoticed. With ``AGENT_FLEET_TEST_FORGEJO_URL`` and
``AGENT_FLEET_TEST_FORGEJO_TOKEN`` set it also runs live against that real Forgejo.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.record_cassettes import (
    CASSETTES,
    HOOK_SECRET,
    REPLAY_TOKEN,
    WRITE_SCENARIO,
    ReadableYaml,
    normalise,
    real_forgejo,
    replay_write_scenario,
    run_against_real_forgejo,
    run_against_sandbox,
)


@pytest.fixture(scope="module")
def replayed() -> list[tuple[str, Any]]:
    return normalise(replay_write_scenario())


def _steps(transcript: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(transcript)


def test_scenario_on_the_in_memory_forgejo_matches_the_cassette(
    replayed: list[tuple[str, Any]],
) -> None:
    """Step by step, the live sandbox observes what the recorded Forgejo answered."""
    live = normalise(run_against_sandbox())
    assert [step for step, _ in live] == [step for step, _ in replayed]
    for (step, seen), (_, recorded) in zip(live, replayed, strict=True):
        assert seen == recorded, f"step {step!r} differs from the cassette"


def test_scenario_records_idempotence_and_error_mapping(replayed: list[tuple[str, Any]]) -> None:
    """The recording pins the facts the controllers rely on, not just any answers."""
    steps = _steps(replayed)
    assert steps["ensure_labels.second_pass_writes"] == 0
    assert steps["ensure_labels.drift_writes"] == 1
    assert sorted(steps["add_labels.exclusive_scope"]) == [
        "fleet/task",
        "priority/high",
        "status/doing",
    ]
    assert steps["add_labels.already_there_writes"] == 0
    assert steps["marker.same_text"] == "unchanged"
    assert steps["marker.new_text"][1] == "edited"
    assert steps["ensure_webhook.again_writes"] == 0
    assert steps["get_issue.missing"] == {"error": "ForgejoNotFound", "status": 404}
    assert steps["create_repo.again"]["error"] == "ForgejoConflict"
    assert steps["create_review.own_approval"]["error"] == "ForgejoConflict"
    assert steps["is_merged.before"] is False and steps["is_merged.after"] is True


def test_cassettes_hold_no_credentials() -> None:
    """No Authorization header, token or webhook secret is written into any cassette."""
    for path in CASSETTES.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        data = ReadableYaml.deserialize(text)
        for interaction in data["interactions"]:
            headers = {name.lower() for name in interaction["request"]["headers"]}
            assert "authorization" not in headers, path
        assert HOOK_SECRET not in text, path
        assert REPLAY_TOKEN not in text, path


def test_scenario_cassette_says_what_it_was_recorded_against() -> None:
    """The scenario cassette's metadata names the server, base URL and repository used."""
    meta = ReadableYaml.deserialize(WRITE_SCENARIO.read_text(encoding="utf-8"))["metadata"]
    scenario = meta["scenario"]
    assert scenario["recorded_against"] and scenario["base_url"].startswith("http")
    assert scenario["publish_branch"] in ("sandbox-push", "contents-api")


@pytest.mark.skipif(real_forgejo() is None, reason="no real Forgejo configured")
def test_scenario_on_a_real_forgejo_matches_the_cassette(
    replayed: list[tuple[str, Any]],
) -> None:
    """Against the configured Forgejo the scenario observes what the cassette holds."""
    target = real_forgejo()
    assert target is not None
    live = normalise(run_against_real_forgejo(*target))
    for (step, seen), (_, recorded) in zip(live, replayed, strict=True):
        assert seen == recorded, f"step {step!r} differs from the cassette"
