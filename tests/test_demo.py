"""`agent-fleet demo` runs on this machine with no outside service and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys
import threading

from webhook.demo import DEMO_ISSUES, run_demo


def test_demo_files_the_labelled_issues_and_reads_them_back() -> None:
    """Every demo issue is created through the gateway and printed back with its labels."""
    lines: list[str] = []
    before = set(threading.enumerate())
    assert run_demo(out=lines.append) == 0
    text = "\n".join(lines)
    for issue in DEMO_ISSUES:
        assert issue.title in text
        assert ", ".join(sorted(issue.labels)) in text
    assert "exclusive scopes: priority, status" in text
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == [], f"threads left running: {leftover}"


def test_demo_command_exits_zero() -> None:
    """The console command as a user runs it: exit 0, output on stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "sandbox stopped" in result.stdout
