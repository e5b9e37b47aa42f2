"""`agent-fleet reconcile --once` reports its progress on stderr over a large resync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import webhook.cli
from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_daemon import config_text
from webhook.cli import main


def test_a_large_resync_reports_its_progress_on_stderr(
    served_forge: ForgejoSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress lines count up about every tenth of the resync's keys to all of them, on
    stderr only, never past the total; the plan on stdout is unchanged."""
    monkeypatch.setattr(webhook.cli, "PROGRESS_FROM", 10)  # "large", scaled down for a test
    served_forge.create_label(DEMO_REPO, "fleet/task")
    for n in range(12):
        served_forge.create_issue(DEMO_REPO, f"Task {n}", labels=["fleet/task"])
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(served_forge, tmp_path / "state"))

    result = CliRunner().invoke(main, ["reconcile", "--once", "--dry-run", "--config", str(config)])

    assert result.exit_code == 0, result.output
    progress = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"… (\d+) of (\d+) keys reconciled", result.stderr)
    ]
    assert progress, result.stderr
    (total,) = {keys for _, keys in progress}
    done = [count for count, _ in progress]
    assert total >= 12 and done == sorted(set(done)) and done[-1] == total
    assert len(done) >= 5, "about every tenth of the keys"
    assert "keys reconciled" not in result.stdout
    assert "would:" in result.stdout


def test_a_small_resync_prints_no_progress(served_forge: ForgejoSandbox, tmp_path: Path) -> None:
    """Under the threshold a pass prints its plan and summary only."""
    served_forge.create_label(DEMO_REPO, "fleet/task")
    served_forge.create_issue(DEMO_REPO, "One task", labels=["fleet/task"])
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(served_forge, tmp_path / "state"))
    result = CliRunner().invoke(main, ["reconcile", "--once", "--dry-run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "keys reconciled" not in result.stderr
