"""`agent-fleet demo` runs on this machine with no outside service and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys
import threading

from webhook.demo import DEMO_ISSUES, run_demo


def test_demo_shows_each_issue_picked_up_through_its_webhook() -> None:
    """Every demo issue is reconciled by the assignment controller and gets status/todo."""
    lines: list[str] = []
    before = set(threading.enumerate())
    assert run_demo(out=lines.append) == 0
    text = "\n".join(lines)
    for number, issue in enumerate(DEMO_ISSUES, start=1):
        assert issue.title in text
        assert f"⟳ assignment:fleet-admin/demo#{number} (ok" in text
        assert f"fleet-admin/demo#{number}: add label(s) status/todo" in text
        assert ", ".join(sorted((*issue.labels, "status/todo"))) in text
    assert "exclusive scopes: priority, status" in text
    assert "webhook deliveries answered 2xx" in text
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == [], f"threads left running: {leftover}"


def test_demo_command_exits_zero() -> None:
    """The console command as a user runs it: exit 0, output on stdout."""
    result = subprocess.run(  # noqa: PLW1510 -- the exit code is the assertion
        [sys.executable, "-m", "reconciler", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "daemon and sandbox stopped" in result.stdout
