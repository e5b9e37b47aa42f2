"""The command line from anywhere: ``status``/``agents``/``tasks show`` reach a running daemon
with ``--server``/``--token`` (or AGENT_FLEET_SERVER / AGENT_FLEET_TOKEN) from a directory with
no configuration file, and ``reconcile --once --dry-run`` plans beside that running daemon —
without its store lock — changing nothing in Forgejo or in the store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import task_id_for
from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_worker import OPERATOR, daemon_settings
from webhook.cli import main
from webhook.daemon import Daemon


@pytest.fixture
def running(served_forge: ForgejoSandbox, tmp_path: Path) -> Iterator[Daemon]:
    """The real daemon on loopback against the served Forgejo, holding its store's lock."""
    daemon = Daemon(daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "st"))
    daemon.start()
    yield daemon
    daemon.stop()


def fingerprint(directory: Path) -> dict[str, str]:
    """Each file of a store directory and a hash of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def printed_json(stdout: str) -> dict[str, object]:
    """The JSON document a command printed (the in-process daemon's log lines share stdout)."""
    loaded = json.loads(stdout[stdout.index("{\n") :])
    assert isinstance(loaded, dict)
    return loaded


def test_status_with_server_and_token_needs_no_config_file(
    running: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an empty directory, status --server --token --json prints the API's task list;
    the same works with AGENT_FLEET_SERVER and AGENT_FLEET_TOKEN."""
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--server", running.url, "--token", OPERATOR, "--json"])
    assert result.exit_code == 0, result.output
    assert "tasks" in printed_json(result.stdout)
    env = {"AGENT_FLEET_SERVER": running.url, "AGENT_FLEET_TOKEN": OPERATOR}
    for argv in (["status", "--json"], ["agents", "--json"]):
        result = runner.invoke(main, argv, env=env)
        assert result.exit_code == 0, (argv, result.output)
        printed_json(result.stdout)
    refused = runner.invoke(main, ["status"], env={**env, "AGENT_FLEET_TOKEN": "wrong"})
    assert refused.exit_code == 1


def test_a_dry_run_beside_the_running_daemon_plans_and_changes_nothing(
    running: Daemon, served_forge: ForgejoSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository the daemon does not watch yet, with a labelled issue: the dry run (whose
    config adds it) prints the labels and webhook it would create and the task, while the
    daemon keeps its store lock; afterwards Forgejo and the store's files are as before."""
    monkeypatch.setattr("webhook.cli.PROGRESS_FROM", 1)
    repo = "fleet-admin/newcomer"
    served_forge.create_repo(repo)
    served_forge.create_label(repo, "fleet/task")
    number = served_forge.create_issue(
        repo, "Add a health endpoint", body="## Goal\nA /healthz.", labels=["fleet/task"]
    )
    store_path = running.assembly.store.path
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[forgejo]\nurl = "{served_forge.url}"\ntoken = "{served_forge.admin_token}"\n'
        f'repos = ["{DEMO_REPO}", "{repo}"]\nbot_login = "fleet-admin"\n'
        'webhook_url = "http://127.0.0.1:9/webhooks/forgejo"\nmanage_webhooks = true\n'
        '[webhook]\nsecret = "dry-run-webhook-secret-0123456789"\n'
        f'[store]\npath = "{store_path}"\n'
    )
    with ForgejoGateway(served_forge.url, served_forge.admin_token, read_retries=0) as forge:
        before_issue = forge.get_issue(repo, number)
        before_comments = forge.list_comments(repo, number)
        before_labels = forge.list_labels(repo)
        before_hooks = forge.list_hooks(repo)
        before_store = fingerprint(store_path)
        result = CliRunner().invoke(
            main, ["reconcile", "--once", "--dry-run", "--config", str(config)]
        )
        assert result.exit_code == 0, result.output
        # Progress on stderr (reported here from one key on; by default from 200).
        assert "keys reconciled" in result.stderr
        lines = result.stdout.splitlines()
        assert any(line.startswith("would: ") and task_id_for(repo, number) in line
                   for line in lines), lines  # fmt: skip
        # The repository's set-up, planned by the set-up controller as the daemon would run it.
        labels = next(line for line in lines if line.startswith(f"would: {repo}: create label"))
        assert "status/todo" in labels
        assert "fleet/task" not in labels.partition("; fix")[0]  # it exists …
        assert "fleet/task" in labels.partition("; fix")[2]  # … in another colour
        assert (
            f"would: {repo}: write the webhook to http://127.0.0.1:9/webhooks/forgejo (missing)"
            in lines
        )
        assert forge.get_issue(repo, number) == before_issue
        assert forge.list_comments(repo, number) == before_comments
        assert forge.list_labels(repo) == before_labels
        assert forge.list_hooks(repo) == before_hooks
    assert fingerprint(store_path) == before_store
    assert running.assembly.store.find_task(task_id_for(repo, number)) is None
