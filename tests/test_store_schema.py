"""The state store's schema version: a new store records it, a store written by agent-fleet
0.1.0 (the fixture in tests/data/store-v1, which recorded no version) opens migrated with
nothing lost, and a store from a newer agent-fleet is refused with both versions named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.models import AgentId, TaskState, task_id_for
from reconciler.store import SCHEMA_VERSION, Store, StoreVersionError
from reconciler.store.store import STATE_FILE

FIXTURE = Path(__file__).resolve().parent / "data" / "store-v1"


def state_of(directory: Path) -> dict[str, dict[str, dict[str, object]]]:
    loaded = json.loads((directory / STATE_FILE).read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 store fixture (the committed files stay untouched)."""
    directory = tmp_path / "state"
    shutil.copytree(FIXTURE, directory)
    return directory


def test_a_new_store_records_the_current_schema_version(tmp_path: Path) -> None:
    """An empty directory becomes a store stamped with this version."""
    with Store.open(tmp_path / "state") as store:
        assert store.get_meta("schema_version") == SCHEMA_VERSION
    assert state_of(tmp_path / "state")["meta"]["schema_version"] == {"value": SCHEMA_VERSION}


def test_the_fixture_is_in_the_format_that_recorded_no_version() -> None:
    """The fixture really is the old format: data, and no schema_version anywhere."""
    state = state_of(FIXTURE)
    assert state["tasks"] and state["agents"]
    assert "schema_version" not in state.get("meta", {})


def test_a_store_from_0_1_0_opens_migrated_with_nothing_lost(old_store: Path) -> None:
    """Every agent, live and archived task, receipt, event, outbox message, backoff and
    metadata value of the old store reads back the same; the version is now recorded."""
    before_files = {p.name: p.read_text() for p in old_store.glob("*.jsonl")}
    before = state_of(old_store)
    with Store.open(old_store) as store:
        assert store.get_meta("schema_version") == SCHEMA_VERSION
        assert {a.id for a in store.list_agents()} == {"build-01", "agent-5e1f2a3b"}
        live = {t.id: t for t in store.list_tasks()}
        assert set(live) == set(before["tasks"])
        assigned = live[task_id_for("acme/widgets", 12)]
        assert assigned.state is TaskState.ASSIGNED and assigned.agent_id == AgentId("build-01")
        finished = task_id_for("acme/widgets", 13)
        assert store.get_task(finished).state is TaskState.COMPLETED  # from the archive
        assert [r.pr_number for r in store.receipts_for(finished)] == [7]
        assert len(store.events_for(finished)) == 4
        assert [m.id for m in store.pending(topic="matrix")] == ["m-0001"]
        backoff = store.get_backoff(("assignment", "acme/widgets", "14"))
        assert backoff is not None and backoff.attempts == 2
        assert store.get_meta("last_resync:acme/widgets") == "2026-11-30T09:00:00+00:00"
    after = state_of(old_store)
    for table, docs in before.items():
        for doc_id, doc in docs.items():
            assert after[table][doc_id] == doc, f"{table}/{doc_id} changed"
    assert {p.name: p.read_text() for p in old_store.glob("*.jsonl")} == before_files


def test_a_migrated_store_opens_again_without_migrating(old_store: Path) -> None:
    """The second open finds the current version and writes nothing."""
    Store.open(old_store).close()
    migrated = (old_store / STATE_FILE).read_text()
    Store.open(old_store).close()
    assert (old_store / STATE_FILE).read_text() == migrated


def test_a_store_from_a_newer_version_is_refused_naming_both_versions(old_store: Path) -> None:
    """A schema version above this one stops the open, says what to do, and changes nothing
    (the lock is released, so the newer agent-fleet can still open it)."""
    state = state_of(old_store)
    state.setdefault("meta", {})["schema_version"] = {"value": SCHEMA_VERSION + 1}
    (old_store / STATE_FILE).write_text(json.dumps(state))
    written = (old_store / STATE_FILE).read_text()
    with pytest.raises(StoreVersionError) as refused:
        Store.open(old_store)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to {SCHEMA_VERSION}" in message and "newer agent-fleet" in message
    assert (old_store / STATE_FILE).read_text() == written
    state["meta"]["schema_version"] = {"value": SCHEMA_VERSION}
    (old_store / STATE_FILE).write_text(json.dumps(state))
    Store.open(old_store).close()  # not left locked


def test_a_schema_version_that_is_not_a_number_is_refused(old_store: Path) -> None:
    """A hand-edited version is an error, not a guess."""
    state = state_of(old_store)
    state.setdefault("meta", {})["schema_version"] = {"value": "two"}
    (old_store / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(StoreVersionError, match="not a version number"):
        Store.open(old_store)


def test_the_cli_refuses_a_newer_store_with_exit_status_4(old_store: Path, tmp_path: Path) -> None:
    """`agent-fleet reconcile --once` on a newer store says why and exits 4 before any work."""
    from click.testing import CliRunner

    from webhook.cli import main

    state = state_of(old_store)
    state.setdefault("meta", {})["schema_version"] = {"value": SCHEMA_VERSION + 1}
    (old_store / STATE_FILE).write_text(json.dumps(state))
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[forgejo]\nurl = "http://127.0.0.1:9"\ntoken = "t"\nbot_login = "bot"\n'
        f'[store]\npath = "{old_store}"\n'
    )
    result = CliRunner().invoke(main, ["reconcile", "--once", "--config", str(config)])
    assert result.exit_code == 4
    assert "newer agent-fleet" in result.output
