"""`agent-fleet reconcile --once [--dry-run]`: one full pass; a dry run prints the plan only."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_daemon import config_text
from webhook.cli import main


def run_once(config: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["reconcile", "--once", "--config", str(config), *extra])
    return result.exit_code, result.output


def test_dry_run_prints_the_plan_and_changes_nothing(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """The plan names the task and the label; Forgejo and the local store are left untouched."""
    served_forge.create_label(DEMO_REPO, "fleet/task")
    number = served_forge.create_issue(DEMO_REPO, "Add a --version flag", labels=["fleet/task"])
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(served_forge, tmp_path / "state"))
    before = [d.delivery_id for d in served_forge.deliveries]

    code, output = run_once(config, "--dry-run")

    assert code == 0, output
    assert f"would: {DEMO_REPO}#{number}: add label(s) status/todo" in output
    assert (
        f"would: task {task_id_for(DEMO_REPO, number)} ({DEMO_REPO}#{number}): new task, created"
        in output
    )
    with ForgejoGateway(served_forge.url, served_forge.admin_token) as gateway:
        assert gateway.get_issue(DEMO_REPO, number).labels == ("fleet/task",)
        assert gateway.list_comments(DEMO_REPO, number) == ()
    served_forge.flush_webhooks()
    assert [d.delivery_id for d in served_forge.deliveries] == before, "a dry run fired a webhook"
    with Store.open(tmp_path / "state") as store:
        assert store.list_tasks() == []
        assert store.get_meta(f"resync.since:{DEMO_REPO}") is None


def test_a_real_pass_acts_and_a_second_pass_does_nothing(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Without --dry-run the label is written; the next pass over the same world makes no write."""
    served_forge.create_label(DEMO_REPO, "fleet/task")
    number = served_forge.create_issue(DEMO_REPO, "Document the config", labels=["fleet/task"])
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(served_forge, tmp_path / "state"))

    code, output = run_once(config)
    assert code == 0, output
    assert f"did: {DEMO_REPO}#{number}: add label(s) status/todo" in output

    code, output = run_once(config)
    assert code == 0, output
    assert "did:" not in output
    assert "0 action(s) taken" in output


def test_a_pass_runs_what_it_dispatches_to_the_end(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """With a local host, one pass places the task, runs the agent, opens the PR, and exits."""
    import sys

    served_forge.create_label(DEMO_REPO, "fleet/task")
    number = served_forge.create_issue(DEMO_REPO, "Write the notes", labels=["fleet/task"])
    config = tmp_path / "fleet.toml"
    config.write_text(
        config_text(served_forge, tmp_path / "state")
        + f"""
[adapters.demo-agent]
command = ["{sys.executable}", "-m", "reconciler.agent.demo_agent", "{{prompt}}"]
parser = "claude-json"

[[hosts]]
name = "local"
address = "localhost"
adapter = "demo-agent"
workdir = "{tmp_path / "work"}"
min_free_disk_mb = 0
"""
    )
    code, output = run_once(config)
    assert code == 0, output
    assert "dispatch to local" in output
    with Store.open(tmp_path / "state") as store:
        task = store.get_task(task_id_for(DEMO_REPO, number))
    assert task.state.value == "review_pending" and task.pr_number is not None
