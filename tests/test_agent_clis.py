"""The real ``claude`` and ``codex`` CLIs, end to end against the local model-API stand-in.

Each test runs a pinned binary the way an executor does: an adapter template rendered with a
prompt built from an issue, in a git worktree on a task branch, stdin from /dev/null, under a
wall-clock timeout, and its output parsed into the receipt fields or a failure reason.

The binaries come from ``.ci/agent-clis.sh`` (``$AGENT_FLEET_CLI_DIR``, by default
``~/.cache/agent-fleet/agent-clis``). When they are missing the tests fail and say how to
install them; CI always installs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.fleet.budgets import Budget, UsageMeter
from reconciler.forgejo.types import Issue, IssueState
from reconciler.run.adapters import (
    AgentResult,
    LocalRun,
    RunOutput,
    group_members,
    parse_output,
    render_command,
    render_env,
    start_local,
)
from reconciler.run.prompt import build_prompt
from reconciler.settings import BUILTIN_ADAPTERS, AdapterSettings
from tests.modelapi import INPUT_TOKENS, OUTPUT_TOKENS, ModelApiStandIn, Script

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / ".ci" / "agent-clis.sh"
CLI_DIR = Path(
    os.environ.get("AGENT_FLEET_CLI_DIR") or Path.home() / ".cache" / "agent-fleet" / "agent-clis"
)
# Generous for a run that does answer (each takes about a second), short for one that hangs.
RUN_TIMEOUT = 60.0
HANG_TIMEOUT = 4.0
ONE_TURN_TOKENS = INPUT_TOKENS + OUTPUT_TOKENS

# Codex with the sandbox flags that let it commit in a git worktree (workspace-write keeps the
# repository's .git read-only, and a worktree's index lives there) and keep them on resume,
# which accepts neither --sandbox nor --cd.
CODEX_ADAPTER = BUILTIN_ADAPTERS["codex"]
CLAUDE_ADAPTER = BUILTIN_ADAPTERS["claude-code"]


# --- the binaries -------------------------------------------------------------------------------


def _pinned_versions() -> dict[str, str]:
    """The versions .ci/agent-clis.sh installs, as `--version` prints them."""
    text = INSTALL_SCRIPT.read_text(encoding="utf-8")
    claude = re.search(r"^CLAUDE_VERSION=(\S+)$", text, re.MULTILINE)
    codex = re.search(r"^CODEX_VERSION=(\S+)$", text, re.MULTILINE)
    assert claude and codex, f"{INSTALL_SCRIPT} no longer pins CLAUDE_VERSION and CODEX_VERSION"
    return {"claude": f"{claude.group(1)} (Claude Code)", "codex": f"codex-cli {codex.group(1)}"}


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, str]:
    """Paths of the pinned claude and codex binaries; fails (never skips) when they are missing."""
    found: dict[str, str] = {}
    for name, version in _pinned_versions().items():
        binary = CLI_DIR / "node_modules" / ".bin" / name
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"{name} is not installed at {binary}: run `bash {INSTALL_SCRIPT}` "
                "(it installs the pinned claude and codex; set AGENT_FLEET_CLI_DIR to use "
                "another directory)",
                pytrace=False,
            )
        reported = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        ).stdout.strip()
        if reported != version:
            pytest.fail(
                f"{binary} reports {reported!r}, the tests pin {version!r}: run "
                f"`bash {INSTALL_SCRIPT}`",
                pytrace=False,
            )
        found[name] = str(binary)
    return found


def _with_binary(adapter: AdapterSettings, binary: str) -> AdapterSettings:
    """The adapter running ``binary`` in place of the bare program name."""
    resume = adapter.resume_command
    return adapter.model_copy(
        update={
            "command": (binary, *adapter.command[1:]),
            "resume_command": (binary, *resume[1:]) if resume else None,
        }
    )


# --- a task in a worktree -----------------------------------------------------------------------

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Build Agent",
    "GIT_AUTHOR_EMAIL": "agent@example.org",
    "GIT_COMMITTER_NAME": "Build Agent",
    "GIT_COMMITTER_EMAIL": "agent@example.org",
}


@dataclass(frozen=True)
class TaskCheckout:
    repo: Path
    worktree: Path
    branch: str


def _git(*args: str, cwd: Path) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **GIT_IDENTITY}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> TaskCheckout:
    """A repository with one commit and a worktree on the task's branch, as executors make it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# tool\n")
    _git("add", "README.md", cwd=repo)
    _git("commit", "-q", "-m", "Start", cwd=repo)
    branch = "task/12-3f9a1c2b-add-notes"
    worktree = tmp_path / "worktrees" / "12-3f9a1c2b"
    _git("worktree", "add", "-q", "-b", branch, str(worktree), cwd=repo)
    return TaskCheckout(repo=repo, worktree=worktree, branch=branch)


def _prompt(checkout: TaskCheckout) -> str:
    now = datetime(2026, 11, 21, tzinfo=UTC)
    issue = Issue(
        id=1,
        number=12,
        title="Add release notes",
        body="## Goal\nAdd a NOTES.md.\n\n## Validation\n`cat NOTES.md`<!-- hidden -->",
        state=IssueState.OPEN,
        labels=("fleet/task",),
        author="alice",
        assignees=(),
        created_at=now,
        updated_at=now,
        closed_at=None,
        is_pull=False,
        html_url="",
    )
    return build_prompt(
        issue=issue, comments=(), trusted={"alice"}.__contains__, repo="acme/tool",
        branch=checkout.branch,
    )  # fmt: skip


# Writes and commits a file, so the run is proven to act in the worktree on the task branch.
EDIT = "printf 'notes\\n' > NOTES.md && git add NOTES.md && git commit -q -m 'Add NOTES.md'"


@dataclass(frozen=True)
class Ran:
    result: AgentResult
    run: LocalRun
    stdout: str


def _run(
    adapter: AdapterSettings,
    checkout: TaskCheckout,
    env: dict[str, str],
    *,
    prompt: str,
    session_id: str | None = None,
    timeout: float = RUN_TIMEOUT,
    log_path: Path | None = None,
) -> Ran:
    argv = render_command(
        adapter,
        prompt=prompt,
        workdir=str(checkout.worktree),
        session_id=session_id,
        resume=session_id is not None,
    )
    full_env = {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", **GIT_IDENTITY, **env,
        **render_env(adapter),
    }  # fmt: skip
    run = start_local(argv, cwd=checkout.worktree, env=full_env, timeout=timeout, log_path=log_path)
    output = run.wait()
    return Ran(result=parse_output(adapter.parser, output), run=run, stdout=output.stdout)


def _committed(checkout: TaskCheckout) -> tuple[str, str]:
    """Subject of the task branch's last commit and the file it added, read from the repo."""
    subject = _git("log", "-1", "--format=%s", checkout.branch, cwd=checkout.repo)
    added = _git("show", "--name-only", "--format=", checkout.branch, cwd=checkout.repo)
    return subject, added


def _group_gone(run: LocalRun) -> bool:
    return run.pid is not None and group_members(run.pid) == []


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """An empty home for the CLI: no credentials or settings of the machine leak in."""
    path = tmp_path / "home"
    path.mkdir()
    yield path


# --- Claude Code --------------------------------------------------------------------------------


def test_claude_edits_the_worktree_and_reports_the_receipt_fields(
    agent_clis: dict[str, str],
    model_api: ModelApiStandIn,
    checkout: TaskCheckout,
    home: Path,
    tmp_path: Path,
) -> None:
    """The built-in claude-code adapter commits on the task branch; result fields are filled."""
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    base = model_api.base_url(Script.tool_call(EDIT, then="Added NOTES.md."))
    log = tmp_path / "logs" / "12.log"
    prompt = _prompt(checkout)
    ran = _run(
        adapter, checkout, model_api.claude_env(base, home=home), prompt=prompt, log_path=log
    )
    assert ran.result.error is None, ran.stdout
    assert ran.result.ok
    assert ran.result.summary == "Added NOTES.md."
    assert ran.result.session_id is not None
    assert re.fullmatch(r"[0-9a-f-]{36}", ran.result.session_id)
    assert ran.result.cost_usd > 0
    assert ran.result.tokens == 2 * ONE_TURN_TOKENS  # the tool call turn and the answer
    assert ran.result.duration_s > 0
    assert _committed(checkout) == ("Add NOTES.md", "NOTES.md")
    first = model_api.requests(base)[0].body
    sent = json.dumps(first["messages"])
    assert "## Goal" in sent and "Add a NOTES.md." in sent and "hidden" not in sent
    assert json.loads(log.read_text().splitlines()[-1])["session_id"] == ran.result.session_id
    assert model_api.unknown_requests() == []


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (Script.failure(401), "Failed to authenticate. API Error: 401 stand-in failure"),
        (None, "Not logged in · Please run /login"),
    ],
    ids=["api-401", "no-credentials"],
)
def test_claude_auth_errors_become_the_failure_reason(
    agent_clis: dict[str, str],
    model_api: ModelApiStandIn,
    checkout: TaskCheckout,
    home: Path,
    script: Script | None,
    error: str,
) -> None:
    """Auth failures (subtype success, is_error true) fail the run with Claude's message."""
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    env = {"HOME": str(home)}
    if script is not None:
        env = model_api.claude_env(model_api.base_url(script), home=home)
    ran = _run(adapter, checkout, env, prompt=_prompt(checkout))
    assert (ran.result.ok, ran.result.error) == (False, error)
    assert ran.result.summary == ""


def test_claude_max_turns_becomes_the_failure_reason(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """`--max-turns 1` with a tool call ends in error_max_turns, reported as such."""
    builtin = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    adapter = builtin.model_copy(update={"command": (*builtin.command, "--max-turns", "1")})
    env = model_api.claude_env(model_api.base_url(Script.tool_call(EDIT)), home=home)
    ran = _run(adapter, checkout, env, prompt=_prompt(checkout))
    assert (ran.result.ok, ran.result.error) == (False, "reached maximum number of turns (1)")
    assert ran.result.session_id is not None


def test_claude_resume_continues_the_same_session(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """A rerun with the task's session id resumes it: same session, earlier turns sent again."""
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    base = model_api.base_url(Script.text_reply("ok"))
    env = model_api.claude_env(base, home=home)
    first = _run(adapter, checkout, env, prompt="first request 7f3a")
    assert first.result.ok, first.result.error
    again = _run(
        adapter, checkout, env, prompt="follow-up 9c1d", session_id=first.result.session_id
    )
    assert again.result.ok, again.result.error
    assert again.result.session_id == first.result.session_id
    history = json.dumps(model_api.requests(base)[-1].body["messages"])
    assert "first request 7f3a" in history and "follow-up 9c1d" in history


# --- Codex ----------------------------------------------------------------------------------------


def test_codex_edits_the_worktree_and_reports_the_receipt_fields(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """Codex commits on the task branch; thread id, tokens and last message are read, cost is 0."""
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    base = model_api.base_url(Script.tool_call(EDIT, then="Added NOTES.md."))
    ran = _run(adapter, checkout, model_api.codex_env(base, home=home), prompt=_prompt(checkout))
    assert ran.result.error is None, ran.stdout
    assert ran.result.summary == "Added NOTES.md."
    assert ran.result.session_id is not None
    assert re.fullmatch(r"[0-9a-f-]{36}", ran.result.session_id)
    assert ran.result.tokens == 2 * ONE_TURN_TOKENS
    assert ran.result.cost_usd == 0.0
    assert _committed(checkout) == ("Add NOTES.md", "NOTES.md")
    assert model_api.unknown_requests() == []


def test_codex_turn_failed_becomes_the_failure_reason(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """An HTTP 401 from the provider ends in turn.failed; its message is the reason."""
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    base = model_api.base_url(Script.failure(401))
    ran = _run(adapter, checkout, model_api.codex_env(base, home=home), prompt=_prompt(checkout))
    assert not ran.result.ok
    assert ran.result.error is not None
    assert ran.result.error.startswith("unexpected status 401 Unauthorized: stand-in failure")
    assert ran.result.session_id is not None


def test_codex_resume_continues_the_same_thread(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """`codex exec resume <thread>` keeps the thread id and sends the earlier turn again."""
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    base = model_api.base_url(Script.text_reply("ok"))
    env = model_api.codex_env(base, home=home)
    first = _run(adapter, checkout, env, prompt="first request 7f3a")
    assert first.result.ok, first.result.error
    again = _run(
        adapter, checkout, env, prompt="follow-up 9c1d", session_id=first.result.session_id
    )
    assert again.result.ok, again.result.error
    assert again.result.session_id == first.result.session_id
    last = model_api.requests(base)[-1].body
    history = json.dumps(last["input"])
    assert "first request 7f3a" in history and "follow-up 9c1d" in history
    turn = json.loads(last["client_metadata"]["x-codex-turn-metadata"])
    assert turn["sandbox_mode"] == "danger-full-access"


# --- runs that must be stopped ----------------------------------------------------------------------


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_hanging_api_call_is_stopped_by_the_wall_clock_timeout(
    agent_clis: dict[str, str],
    model_api: ModelApiStandIn,
    checkout: TaskCheckout,
    home: Path,
    cli: str,
) -> None:
    """The model API never answers: the run fails as timed out and every process of it is gone."""
    base = model_api.base_url(Script.hang())
    if cli == "claude":
        adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
        env = model_api.claude_env(base, home=home)
    else:
        adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
        env = model_api.codex_env(base, home=home)
    ran = _run(adapter, checkout, env, prompt=_prompt(checkout), timeout=HANG_TIMEOUT)
    assert model_api.requests(base), f"{cli} did not reach the model API within {HANG_TIMEOUT} s"
    assert (ran.result.ok, ran.result.error) == (False, f"timed out after {HANG_TIMEOUT:g} s")
    assert _group_gone(ran.run)


def test_cancelling_a_running_codex_stops_it_at_once(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """A task cancelled mid-run (its issue closed) stops Codex and its native child process."""
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    base = model_api.base_url(Script.hang())
    argv = render_command(
        adapter, prompt=_prompt(checkout), workdir=str(checkout.worktree), session_id=None,
        resume=False,
    )  # fmt: skip
    env = {"PATH": os.environ["PATH"], **model_api.codex_env(base, home=home)}
    run = start_local(argv, cwd=checkout.worktree, env=env, timeout=RUN_TIMEOUT)
    assert model_api.wait_for_request(base, timeout=30), "codex never called the model API"
    assert run.pid is not None and len(group_members(run.pid)) >= 2  # node and the native binary
    canceller = threading.Thread(target=run.cancel)
    canceller.start()
    output = run.wait()
    canceller.join(timeout=30)
    result = parse_output("codex-jsonl", output)
    assert (output.cancelled, output.timed_out) == (True, False)
    assert (result.ok, result.error) == (False, "cancelled")
    assert result.session_id is not None  # thread.started came before the hang
    assert _group_gone(run)


# --- budgets ------------------------------------------------------------------------------------


def _metered_run(
    adapter: AdapterSettings,
    checkout: TaskCheckout,
    env: dict[str, str],
    meter: UsageMeter,
    budget: Budget,
) -> tuple[AgentResult, RunOutput, LocalRun]:
    argv = render_command(
        adapter, prompt=_prompt(checkout), workdir=str(checkout.worktree), session_id=None,
        resume=False, budget_usd=budget.usd,
    )  # fmt: skip
    full_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **GIT_IDENTITY, **env,
                **render_env(adapter)}  # fmt: skip

    def watch(line: str) -> str | None:
        meter.feed(line)
        return meter.over(budget)

    run = start_local(argv, cwd=checkout.worktree, env=full_env, timeout=RUN_TIMEOUT, watch=watch)
    output = run.wait()
    return parse_output(adapter.parser, output), output, run


def test_claude_is_stopped_mid_stream_when_its_usage_passes_the_budget(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """The first assistant message's usage passes a 50-token budget: the run is stopped there
    (the model's next answer never comes, so only the budget can end it) and fails saying so."""
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    base = model_api.base_url(Script.tool_call("echo metered", then_hang=True))
    meter = UsageMeter("claude-json", price_per_million=6.0)
    result, output, run = _metered_run(
        adapter, checkout, model_api.claude_env(base, home=home), meter, Budget(tokens=50)
    )
    assert output.stopped_reason is not None, output.stdout
    assert not output.timed_out
    assert (result.ok, result.error) == (False, output.stopped_reason)
    assert re.fullmatch(r"over budget: spent [\d,]+ of 50 tokens", output.stopped_reason)
    assert meter.tokens >= INPUT_TOKENS
    assert '"type":"result"' not in output.stdout.replace(" ", "")  # it never finished
    assert _group_gone(run)


def test_claude_is_given_its_dollar_budget_as_max_budget_usd(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """A dollar budget reaches Claude Code as --max-budget-usd, and its reported cost is used."""
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    base = model_api.base_url(Script.text_reply("hi"))
    meter = UsageMeter("claude-json")
    budget = Budget(usd=0.0001)  # one answer from the stand-in costs about $0.0004
    argv = render_command(adapter, prompt="p", workdir=".", session_id=None, resume=False,
                          budget_usd=budget.usd)  # fmt: skip
    assert argv[-2:] == ["--max-budget-usd", "0.0001"]
    result, output, _ = _metered_run(
        adapter, checkout, model_api.claude_env(base, home=home), meter, budget
    )
    assert not meter.cost_estimated, (
        output.stdout[-2000:] and meter.cost_usd is not None and meter.cost_usd > 0
    )
    assert result.ok is False
    assert result.error is not None and result.error.startswith("over budget: spent $"), (
        result.error
    )


def test_codex_is_stopped_at_the_turn_end_that_passes_its_budget(
    agent_clis: dict[str, str], model_api: ModelApiStandIn, checkout: TaskCheckout, home: Path
) -> None:
    """Codex reports usage only when a turn completes: the run fails over budget there, its
    cost estimated from the token price (Codex reports none)."""
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    base = model_api.base_url(Script.text_reply("hi"))
    meter = UsageMeter("codex-jsonl", price_per_million=2.5)
    result, output, run = _metered_run(
        adapter, checkout, model_api.codex_env(base, home=home), meter, Budget(tokens=50)
    )
    assert meter.tokens == ONE_TURN_TOKENS
    assert output.stopped_reason == f"over budget: spent {ONE_TURN_TOKENS} of 50 tokens"
    assert (result.ok, result.error) == (False, output.stopped_reason)
    assert meter.cost_estimated
    assert meter.cost_usd == pytest.approx(ONE_TURN_TOKENS * 2.5 / 1e6)
    assert _group_gone(run)
