"""The fleet page in a real browser (headless Chromium): the running demo fleet as an operator
sees it, updating itself without a reload, with untrusted issue text shown as text.

Screenshots are kept in ``tests/artifacts/`` (git-ignored). Chromium and chromedriver come
from Debian's packages (``tests/browser_fixtures.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser_fixtures import artifacts, browser  # noqa: F401 -- fixtures
from webhook.demo import DEMO_ISSUES, LOCAL_HOST, PULL_AGENTS, DemoFleet, run_demo

EVIL_TITLE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> & "quoted"'
RUST_REASON = "no agent has role developer and code:rust"
WAIT = 30.0


def wait_for(window: Any, condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` in the browser until it holds, failing after WAIT seconds."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    try:
        WebDriverWait(window, WAIT, poll_frequency=0.2).until(lambda _: condition())
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {WAIT:.0f} s") from None


def text_of(window: Any, css: str) -> str:
    """The visible text of every element matching ``css``, read in one script so a live
    re-render between finding an element and reading it cannot leave a stale reference."""
    texts = window.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);", css
    )
    return " ".join(" ".join(str(text).split()) for text in texts)


def test_the_fleet_page_shows_the_demo_fleet_and_updates_itself_in_chromium(
    browser: Any,  # noqa: F811 -- the fixture
    artifacts: Path,  # noqa: F811 -- the fixture
) -> None:
    """Signed in with the operator token, the page shows the demo's agents (one offline, with
    why), the task nobody can do waiting with its reason and the completed tasks; a new issue
    with markup in its title appears without a reload, its title as plain text, and a closed
    issue's task moves to cancelled; a completed task's page shows its timeline, receipt
    checks and Forgejo links. Screenshots of both pages are kept."""
    from selenium.webdriver.common.by import By

    seen: dict[str, str] = {}

    def drive(fleet: DemoFleet) -> None:
        window = browser
        window.get(fleet.page_url)
        assert window.find_elements(By.ID, "token"), "the page asks for the operator token"
        window.find_element(By.ID, "token").send_keys(fleet.operator_token)
        window.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(window, lambda: bool(window.find_elements(By.ID, "tasks-waiting")), "the fleet")
        cookie = window.get_cookie("agent_fleet_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert fleet.operator_token not in window.page_source

        agents = text_of(window, "main section:nth-of-type(2)")
        for agent_id in (LOCAL_HOST, *PULL_AGENTS):
            assert agent_id in agents
        assert "offline" in agents and "missed intervals" in agents
        assert RUST_REASON in text_of(window, "#tasks-waiting")
        assert "Add a --version flag to the CLI" in text_of(window, "#tasks-done")
        window.set_window_size(1360, 1500)
        window.save_screenshot(str(artifacts / "dashboard-overview.png"))

        # A person files an issue whose title is markup, and closes the waiting one.
        window.execute_script("window.stayed = true;")
        fleet.person.create_issue(
            fleet.repo,
            title=EVIL_TITLE,
            body="## Goal\nNothing an agent here can do.",
            labels=("fleet/task", "agent/developer", "needs/code:rust"),
        )
        [rust] = [n for n in fleet.issues.values() if not DEMO_ISSUES[n - 1].runnable]
        fleet.person.edit_issue(fleet.repo, rust, state="closed")
        wait_for(window, lambda: EVIL_TITLE in text_of(window, "#tasks-waiting"), "the new task")
        wait_for(
            window,
            lambda: "Port the parser to Rust" in text_of(window, "#tasks-cancelled"),
            "the closed issue's task as cancelled",
        )
        assert window.execute_script("return window.stayed === true"), "the page reloaded"
        assert window.execute_script("return typeof window.pwned") == "undefined"
        assert window.find_elements(By.CSS_SELECTOR, "main img") == []
        assert window.find_elements(By.CSS_SELECTOR, "main script") == []
        assert "live · updated" in text_of(window, "#live-status")
        window.save_screenshot(str(artifacts / "dashboard-overview-updated.png"))

        link = window.execute_script(
            "return document.querySelector('#tasks-done a.mono').href"
        )  # the live page may re-render under a held element: follow the address instead
        window.get(link)
        wait_for(window, lambda: bool(window.find_elements(By.ID, "timeline")), "a task's page")
        timeline = text_of(window, "#timeline")
        for step in (
            "new → created",
            "created → assigned",
            "running → review_pending",
            "verification ✓",
            "review_pending → completed",
        ):
            assert step in timeline
        assert "diff" in text_of(window, "ul.checks")
        hrefs = [a.get_attribute("href") for a in window.find_elements(By.CSS_SELECTOR, "a")]
        assert any("/issues/" in h and h.startswith(fleet.sandbox.url) for h in hrefs)
        assert any("/pulls/" in h and h.startswith(fleet.sandbox.url) for h in hrefs)
        window.set_window_size(1360, 1200)
        window.save_screenshot(str(artifacts / "dashboard-task.png"))
        seen["ok"] = "yes"

    lines: list[str] = []
    assert run_demo(out=lines.append, keep=drive) == 0, "\n".join(lines)
    assert seen == {"ok": "yes"}
    page_line = next(line for line in lines if line.startswith("▶ the fleet page: http://"))
    assert page_line.endswith("/")
    for name in ("dashboard-overview.png", "dashboard-overview-updated.png", "dashboard-task.png"):
        assert (artifacts / name).stat().st_size > 10_000, f"{name} looks empty"


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch: Any) -> None:
    """CI=true turns a missing Chromium into a failure naming the packages; elsewhere it is a
    skip with the same hint."""
    import pytest

    from tests.browser_fixtures import INSTALL_HINT, _missing

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium-driver"):
        _missing("Chromium (the chromium package)")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception) as skipped:
        _missing("Chromium (the chromium package)")
    assert INSTALL_HINT in str(skipped.value)
