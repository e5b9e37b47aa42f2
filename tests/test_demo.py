"""`agent-fleet demo` runs on this machine with no outside service and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys
import threading

from webhook.demo import DEMO_ISSUES, PULL_AGENTS, run_demo


def test_demo_runs_tasks_through_review_to_done_and_shows_an_agent_going_offline() -> None:
    """Runnable tasks go created → assigned → running → review with a PR of the agent's files,
    one is sent back by a review and rerun, all are merged, verified and done; the task that
    depends on the first issue waits until it is closed, then runs; the task nobody can do
    waits with its reason; a silent pull agent goes offline."""
    lines: list[str] = []
    before = set(threading.enumerate())
    assert run_demo(out=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    for number, issue in enumerate(DEMO_ISSUES, start=1):
        assert f"+ #{number} {issue.title}" in text
        assert f"#{number} · → created" in text
        if issue.runnable:
            assert f"#{number} created → assigned" in text
            assert f"#{number} assigned → running" in text
            assert f"#{number} running → review_pending" in text
            if issue.depends_on is None:  # the others open theirs after the listing
                assert f"#{number} → PR #" in text and "fleet-notes/" in text
            assert f"#{number} review_pending → completed" in text
            row = next(line for line in lines if line.split()[:2] == [f"#{number}", "completed"])
            assert "status/done" in row and "receipt verified" in row
        else:
            assert f"#{number} waits: no agent has role developer and code:rust" in text
            assert f"#{number} created → assigned" not in text
    # #2 depends on #1: it waits, saying so, and starts only once #1 is closed.
    held = text.index("#2 waiting                      waiting for #1: open")
    closed = text.index("closed #1; #2, waiting for it, starts now")  # by merging its PR
    assert held < closed < text.index("#2 created → assigned")
    assert "#2 waits: waiting for #1: open (also said on the issue)" in text
    assert "#1 review_pending → created     changes requested by alice" in text
    assert text.count("#1 assigned → running") == 2, "the review sends #1 back for a rerun"
    for agent_id in PULL_AGENTS:
        assert f"+ {agent_id} registered" in text
    assert "passed its health check: online" in text
    silent = [line for line in lines if line.strip().startswith(PULL_AGENTS[-1])]
    assert silent and "offline" in silent[-1] and "missed intervals" in silent[-1]
    # The Matrix preview: each task is one message, edited to its final state, and a thread.
    preview = text.split("PREVIEW", 1)[1]
    assert preview.count("fleet-admin/demo#1 Add") == 1 and "— done  (edited" in preview
    assert "the thread of local-dev:" in preview and "↳ ✅ fleet-admin/demo#1 completed" in preview
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == [], f"threads left running: {leftover}"


def test_demo_command_exits_zero() -> None:
    """The console command as a user runs it: exit 0, output on stdout, quiet logs."""
    result = subprocess.run(  # noqa: PLW1510 -- the exit code is the assertion
        [sys.executable, "-m", "webhook", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "daemon and sandbox stopped" in result.stdout
    assert result.stderr == "", result.stderr


def test_demo_keep_prints_the_fleet_page_url_and_serves_it_until_interrupted() -> None:
    """``agent-fleet demo --keep`` prints the page's URL and the token to sign in with; the
    page answers with the fleet; SIGINT stops everything and the demo exits 0."""
    import signal
    import urllib.request

    process = subprocess.Popen(
        # -X faulthandler: a demo that does not stop is made to print every thread's stack.
        [sys.executable, "-X", "faulthandler", "-m", "webhook", "demo", "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:  # the demo prints the page last, then waits
            lines.append(line)
            if "sign in with the demo's operator token:" in line:
                break
        text = "".join(lines)
        url = next(
            (ln.split(": ", 1)[1].strip() for ln in lines if ln.startswith("▶ the fleet page:")),
            None,
        )
        assert url is not None and url.startswith("http://127.0.0.1:"), text
        token = lines[-1].rsplit(": ", 1)[1].strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            page = response.read().decode()
        assert "no agent has role developer and code:rust" in page
        process.send_signal(signal.SIGINT)
        try:
            rest, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler dumps the threads' stacks
            _, errors = process.communicate(timeout=30)
            raise AssertionError(f"the demo did not stop on SIGINT:\n{errors[-8000:]}") from None
        assert process.returncode == 0, errors
        assert "daemon and sandbox stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
