"""Adapters: command templates, local runs under a timeout, and the output parsers.

The parser tables use outputs recorded from Claude Code 2.1.329 and Codex 0.169.0
(``docs/adapters.md``); ``tests/test_agent_clis.py`` runs the real binaries.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from reconciler.run.adapters import (
    AgentResult,
    RunOutput,
    group_members,
    parse_claude_json,
    parse_codex_jsonl,
    parse_output,
    parse_raw,
    render_command,
    render_env,
    run_local,
    start_local,
)
from reconciler.settings import BUILTIN_ADAPTERS, AdapterSettings

CLAUDE = AdapterSettings(
    command=("claude", "-p", "{prompt}", "--output-format", "json"),
    parser="claude-json",
    resume_command=("claude", "-p", "{prompt}", "-r", "{session_id}", "--output-format", "json"),
)
CODEX = AdapterSettings(
    command=("codex", "exec", "--json", "--cd", "{workdir}", "{prompt}"),
    parser="codex-jsonl",
    resume_command=("codex", "exec", "resume", "{session_id}", "--json", "{prompt}"),
)
ENV = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}


# --- templates ------------------------------------------------------------------------------


def test_placeholders_are_replaced_inside_their_own_argument() -> None:
    """A prompt with spaces, quotes and braces stays one argv element, never shell-split."""
    prompt = 'fix it; rm -rf / {not a placeholder} "quoted" $HOME'
    argv = render_command(CODEX, prompt=prompt, workdir="/w/t 1", session_id=None, resume=False)
    assert argv == ["codex", "exec", "--json", "--cd", "/w/t 1", prompt]


def test_a_rerun_with_a_known_session_uses_the_resume_command() -> None:
    """Resuming a task's session runs resume_command with the session id filled in."""
    argv = render_command(CODEX, prompt="again", workdir="/w", session_id="th-1", resume=True)
    assert argv == ["codex", "exec", "resume", "th-1", "--json", "again"]
    claude = render_command(CLAUDE, prompt="again", workdir="/w", session_id="s-9", resume=True)
    assert claude[3:5] == ["-r", "s-9"]


@pytest.mark.parametrize(
    ("adapter", "session_id"),
    [(CODEX, None), (AdapterSettings(command=("agent", "{prompt}")), "s-1")],
    ids=["no-session-yet", "adapter-without-resume"],
)
def test_resume_without_a_session_or_resume_command_starts_afresh(
    adapter: AdapterSettings, session_id: str | None
) -> None:
    """Without a session id or a resume_command, a rerun runs the ordinary command."""
    fresh = render_command(adapter, prompt="p", workdir="/w", session_id=session_id, resume=False)
    rerun = render_command(adapter, prompt="p", workdir="/w", session_id=session_id, resume=True)
    assert rerun == fresh


def test_a_fresh_run_does_not_resume_even_with_a_session() -> None:
    """resume=False ignores the session: a new task run is a new session."""
    argv = render_command(CODEX, prompt="p", workdir="/w", session_id="th-1", resume=False)
    assert "resume" not in argv


def test_a_command_needing_a_session_id_without_one_is_an_error() -> None:
    """A template using {session_id} with no session gives a clear error, not an empty argument."""
    adapter = AdapterSettings(command=("agent", "--session", "{session_id}", "{prompt}"))
    with pytest.raises(ValueError, match=r"needs \{session_id\}"):
        render_command(adapter, prompt="p", workdir="/w", session_id=None, resume=False)


def test_literal_braces_in_a_template_stay_braces() -> None:
    """`{{` and `}}` in a template are literal braces, as in the settings' check."""
    adapter = AdapterSettings(command=("agent", "--json={{}}", "{prompt}"))
    argv = render_command(adapter, prompt="p", workdir="/w", session_id=None, resume=False)
    assert argv == ["agent", "--json={}", "p"]


def test_claude_runs_with_bounded_retries_and_no_telemetry() -> None:
    """Claude Code gets the variables that make it fail fast and stay quiet when unattended."""
    env = render_env(CLAUDE)
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert env["DISABLE_TELEMETRY"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert "IS_SANDBOX" not in env


def test_claude_bypassing_permissions_is_declared_a_sandbox() -> None:
    """bypassPermissions is refused as root unless IS_SANDBOX=1; the built-in adapter gets it."""
    assert render_env(BUILTIN_ADAPTERS["claude-code"])["IS_SANDBOX"] == "1"


def test_the_adapters_own_environment_wins() -> None:
    """An adapter's env overrides the defaults and is passed on as given."""
    adapter = CLAUDE.model_copy(update={"env": {"CLAUDE_CODE_MAX_RETRIES": "0", "X": "y"}})
    env = render_env(adapter)
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert env["X"] == "y"


def test_codex_needs_no_extra_environment() -> None:
    """Codex gets only what its adapter declares."""
    assert render_env(CODEX) == {}


# --- running locally ------------------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_run_reads_nothing_from_stdin(tmp_path: Path) -> None:
    """stdin is /dev/null: a CLI reading it sees end of file at once instead of waiting."""
    out = run_local(
        _python("import sys; print(repr(sys.stdin.read()))"), cwd=tmp_path, env=ENV, timeout=30
    )
    assert out.stdout.strip() == "''"
    assert (out.exit_code, out.timed_out, out.cancelled) == (0, False, False)


def test_a_run_gets_exactly_the_environment_and_directory_given(tmp_path: Path) -> None:
    """The child sees the env mapping as given (nothing inherited) and runs in cwd."""
    code = "import os; print(os.getcwd()); print(os.environ.get('X')); print('HOME' in os.environ)"
    out = run_local(_python(code), cwd=tmp_path, env={**ENV, "X": "42"}, timeout=30)
    assert out.stdout.split() == [str(tmp_path), "42", "False"]


def test_output_reaches_the_log_while_the_run_is_going(tmp_path: Path) -> None:
    """The child only ends once it sees its own first line in the log: streamed, not at the end."""
    log = tmp_path / "logs" / "task.log"
    code = (
        "import sys, pathlib\n"
        "print('first line', flush=True)\n"
        f"log = pathlib.Path({str(log)!r})\n"
        "while not (log.exists() and 'first line' in log.read_text()):\n"
        "    pass\n"
        "print('saw it')\n"
        "print('on stderr', file=sys.stderr)\n"
    )
    out = run_local(_python(code), cwd=tmp_path, env=ENV, timeout=20, log_path=log)
    assert not out.timed_out, "the first line never reached the log while the child ran"
    assert out.stdout.split("\n")[:2] == ["first line", "saw it"]
    assert "on stderr" in out.stderr
    assert "on stderr" in log.read_text()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """At the wall-clock limit the CLI and everything it started are gone; the run says so."""
    script = "sleep 60 & echo $!; sleep 60"
    out = run_local(["sh", "-c", script], cwd=tmp_path, env=ENV, timeout=0.5)
    grandchild = int(out.stdout.split()[0])
    assert out.timed_out and not out.cancelled
    assert out.timeout_s == 0.5
    assert not _alive(grandchild)


def test_a_cli_ignoring_term_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """A process that traps SIGTERM still ends: KILL follows the grace period."""
    script = "trap '' TERM; echo armed; while :; do sleep 0.1; done"
    run = start_local(["sh", "-c", script], cwd=tmp_path, env=ENV, timeout=0.5, kill_grace=0.3)
    out = run.wait()
    assert out.timed_out
    assert run.pid is not None and group_members(run.pid) == []


def test_cancel_from_another_thread_stops_the_run(tmp_path: Path) -> None:
    """Closing an issue mid-run: cancel() from another thread ends the run and its children."""
    run = start_local(["sh", "-c", "sleep 60 & sleep 60"], cwd=tmp_path, env=ENV, timeout=60)
    canceller = threading.Thread(target=run.cancel)
    canceller.start()
    out = run.wait()
    canceller.join(timeout=10)
    assert out.cancelled and not out.timed_out
    assert run.pid is not None and group_members(run.pid) == []


def test_a_set_cancel_event_stops_run_local(tmp_path: Path) -> None:
    """run_local watches a threading.Event and stops the run when it is set."""
    cancel = threading.Event()
    cancel.set()
    out = run_local(["sleep", "60"], cwd=tmp_path, env=ENV, timeout=60, cancel=cancel)
    assert out.cancelled
    assert parse_raw(out).error == "cancelled"


def test_background_processes_do_not_outlive_a_finished_run(tmp_path: Path) -> None:
    """A CLI that exits leaving a child behind (holding stdout) returns, and the child is killed."""
    out = run_local(["sh", "-c", "sleep 60 & echo $!"], cwd=tmp_path, env=ENV, timeout=30)
    assert out.exit_code == 0 and not out.timed_out
    assert not _alive(int(out.stdout.strip()))


def test_a_missing_cli_ends_like_in_a_shell(tmp_path: Path) -> None:
    """A command that cannot start gives exit code 127 and says why, in the log too."""
    log = tmp_path / "task.log"
    out = run_local(["no-such-agent-cli"], cwd=tmp_path, env=ENV, timeout=5, log_path=log)
    assert out.exit_code == 127
    assert "no-such-agent-cli" in out.stderr
    assert "no-such-agent-cli" in log.read_text()
    assert "status 127" in (parse_raw(out).error or "")


def test_a_timeout_must_be_positive(tmp_path: Path) -> None:
    """A zero timeout is refused rather than killing every run at once."""
    with pytest.raises(ValueError, match="timeout"):
        run_local(["true"], cwd=tmp_path, env=ENV, timeout=0)


# --- parsers ----------------------------------------------------------------------------------

# Recorded from claude 2.1.329 (fields the parser ignores trimmed).
CLAUDE_SUCCESS = {
    "type": "result", "subtype": "success", "is_error": False, "duration_ms": 228,
    "num_turns": 1, "result": "hi from mock", "session_id": "f799fd94-a83b-4d8d-a054-12e69e02f211",
    "total_cost_usd": 9.6e-05, "terminal_reason": "completed", "api_error_status": None,
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 3,
              "cache_read_input_tokens": 5, "output_tokens": 4},
}  # fmt: skip
CLAUDE_NOT_LOGGED_IN = {
    "type": "result", "subtype": "success", "is_error": True, "duration_ms": 184,
    "num_turns": 1, "result": "Not logged in · Please run /login",
    "session_id": "4f89031f-7151-48ba-b6de-91a4e6cd3935", "total_cost_usd": 0,
    "terminal_reason": "api_error", "api_error_status": None,
}  # fmt: skip
CLAUDE_MAX_TURNS = {
    "type": "result", "subtype": "error_max_turns", "is_error": True, "duration_ms": 244,
    "num_turns": 2, "errors": ["Reached maximum number of turns (1)"],
    "session_id": "660bdd0e-3509-4e14-b95c-ad47bd82bf3f", "total_cost_usd": 0.000225,
    "terminal_reason": "max_turns",
}  # fmt: skip
CLAUDE_401 = {
    "type": "result", "subtype": "success", "is_error": True, "duration_ms": 174,
    "result": "Failed to authenticate. API Error: 401 stand-in failure",
    "session_id": "1da25e78-b466-49e4-a7e0-ac4b94a5ca7b", "total_cost_usd": 0,
    "terminal_reason": "api_error", "api_error_status": 401,
}  # fmt: skip


def _output(stdout: str, *, exit_code: int = 0, stderr: str = "", **flags: object) -> RunOutput:
    return RunOutput(
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=bool(flags.get("timed_out", False)),
        duration_s=1.5,
        cancelled=bool(flags.get("cancelled", False)),
        timeout_s=flags.get("timeout_s", 600.0),  # type: ignore[arg-type]
    )


def test_claude_success_gives_every_receipt_field() -> None:
    """Summary, session, cost, tokens (input incl. cache + output) and duration come from the result."""
    result = parse_claude_json(_output(json.dumps(CLAUDE_SUCCESS)))
    assert result == AgentResult(
        ok=True,
        summary="hi from mock",
        session_id="f799fd94-a83b-4d8d-a054-12e69e02f211",
        cost_usd=9.6e-05,
        tokens=24,
        duration_s=0.228,
        error=None,
    )


@pytest.mark.parametrize(
    ("result", "exit_code", "error"),
    [
        (CLAUDE_NOT_LOGGED_IN, 1, "Not logged in · Please run /login"),
        (CLAUDE_MAX_TURNS, 1, "reached maximum number of turns (1)"),
        (CLAUDE_401, 1, "Failed to authenticate. API Error: 401 stand-in failure"),
        ({**CLAUDE_401, "result": "Bad key"}, 1, "Bad key (API status 401)"),
        ({**CLAUDE_MAX_TURNS, "subtype": "error_during_execution", "errors": ["tool crashed"]}, 1,
         "tool crashed"),
        ({**CLAUDE_SUCCESS, "is_error": False, "subtype": "error_max_budget_usd", "errors": []}, 1,
         "Claude Code ended with error_max_budget_usd"),
    ],
    ids=["not-logged-in", "max-turns", "http-401", "status-added", "during-execution", "budget"],
)  # fmt: skip
def test_claude_errors_are_read_from_is_error_before_subtype(
    result: dict[str, object], exit_code: int, error: str
) -> None:
    """An auth failure is subtype success with is_error true: the error is the result text."""
    parsed = parse_claude_json(_output(json.dumps(result), exit_code=exit_code))
    assert not parsed.ok
    assert parsed.error == error
    assert parsed.summary == ""
    assert parsed.session_id == result["session_id"]


def test_claude_stream_json_uses_its_last_result_line() -> None:
    """With --output-format stream-json the result is the last `type: result` line."""
    lines = [
        {"type": "system", "subtype": "init", "session_id": "d104"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}]}},
        {**CLAUDE_SUCCESS, "session_id": "d104", "result": "streamed"},
    ]
    parsed = parse_claude_json(_output("\n".join(json.dumps(line) for line in lines) + "\n"))
    assert (parsed.ok, parsed.summary, parsed.session_id) == (True, "streamed", "d104")


def test_claude_stream_without_a_result_keeps_the_session_and_fails() -> None:
    """A stream cut before its result fails, but the session from `init` is kept for a resume."""
    stdout = json.dumps({"type": "system", "subtype": "init", "session_id": "d104"}) + "\n"
    parsed = parse_claude_json(_output(stdout, exit_code=-9, stderr="boom"))
    assert not parsed.ok
    assert parsed.session_id == "d104"
    assert parsed.error == "claude was killed by SIGKILL and printed no result object; stderr: boom"


@pytest.mark.parametrize(
    ("stdout", "exit_code", "stderr", "error"),
    [
        ("", 1, "Error: When using --print, --output-format=stream-json requires --verbose\n", "claude exited with status 1 and printed nothing; stderr: Error: When using --print, --output-format=stream-json requires --verbose"),
        ("Not logged in · Please run /login\n", 1, "", "claude exited with status 1 and printed no result object; stderr was empty"),
        ('{"type": "result", "is_err', 0, "", "claude exited with status 0 and printed no result object; stderr was empty"),
        ("[1, 2]", 0, "", "claude exited with status 0 and printed no result object; stderr was empty"),
    ],
    ids=["usage-error", "text-output", "truncated-json", "not-an-object"],
)  # fmt: skip
def test_unreadable_claude_output_is_an_error_result(
    stdout: str, exit_code: int, stderr: str, error: str
) -> None:
    """Output that holds no result object never raises; the error quotes the stderr tail."""
    parsed = parse_claude_json(_output(stdout, exit_code=exit_code, stderr=stderr))
    assert (parsed.ok, parsed.error) == (False, error)


def test_claude_odd_numbers_count_as_zero() -> None:
    """Negative, boolean, huge or non-numeric cost and usage values do not break the result."""
    odd = {**CLAUDE_SUCCESS, "total_cost_usd": -1, "duration_ms": True,
           "usage": {"input_tokens": "12", "output_tokens": 10**400, "cache_read_input_tokens": 2}}  # fmt: skip
    parsed = parse_claude_json(_output(json.dumps(odd)))
    assert (parsed.cost_usd, parsed.tokens, parsed.duration_s) == (0.0, 2, 0.0)


# Recorded from codex 0.169.0.
CODEX_SUCCESS = """\
{"type":"thread.started","thread_id":"01a1fc8c-c4ca-7610-9a1d-aa3d0926c34f"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `gpt-mock` not found. Defaulting to fallback metadata; this can degrade performance and cause issues."}}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hello-from-tool'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hello-from-tool'","aggregated_output":"hello-from-tool\\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"first message"}}
{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"hi from mock"}}
{"type":"turn.completed","usage":{"input_tokens":50,"cached_input_tokens":20,"cache_write_input_tokens":0,"output_tokens":12,"reasoning_output_tokens":3}}
"""
CODEX_401 = """\
{"type":"thread.started","thread_id":"01a1fc89-8b11-7793-a994-e3289d7b26ce"}
{"type":"turn.started"}
{"type":"error","message":"unexpected status 401 Unauthorized: mock failure 401, url: http://127.0.0.1:18099/fail401/v1/responses"}
{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: mock failure 401, url: http://127.0.0.1:18099/fail401/v1/responses"}}
"""
CODEX_RECONNECTING = """\
{"type":"thread.started","thread_id":"01a1fc83-3862-7ce1-b3c1-e754950615fb"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion: failed to lookup address information: Name does not resolve)"}
"""


def test_codex_success_gives_thread_usage_and_the_last_message() -> None:
    """Thread id, input+output tokens and the final agent message; no cost from Codex."""
    result = parse_codex_jsonl(_output(CODEX_SUCCESS))
    assert result == AgentResult(
        ok=True,
        summary="hi from mock",
        session_id="01a1fc8c-c4ca-7610-9a1d-aa3d0926c34f",
        cost_usd=0.0,
        tokens=62,
        duration_s=1.5,
        error=None,
    )


def test_codex_turn_failed_is_the_error() -> None:
    """turn.failed's message is the failure reason; the thread id is kept."""
    result = parse_codex_jsonl(_output(CODEX_401, exit_code=1))
    assert not result.ok
    assert result.error == (
        "unexpected status 401 Unauthorized: mock failure 401, "
        "url: http://127.0.0.1:18099/fail401/v1/responses"
    )
    assert result.session_id == "01a1fc89-8b11-7793-a994-e3289d7b26ce"


def test_a_codex_error_event_alone_is_not_fatal() -> None:
    """A reconnect notice before a completed turn does not fail the run."""
    stdout = CODEX_RECONNECTING + CODEX_SUCCESS.split("\n", 1)[1]
    assert parse_codex_jsonl(_output(stdout)).ok


def test_a_codex_run_that_never_finished_its_turn_failed() -> None:
    """No turn.completed and no turn.failed (killed while reconnecting): an error naming the last notice."""
    result = parse_codex_jsonl(_output(CODEX_RECONNECTING, exit_code=-15))
    assert not result.ok
    assert result.error is not None
    assert "was killed by SIGTERM and ended without turn.completed or turn.failed" in result.error
    assert "last error event: Reconnecting... 2/5" in result.error


def test_a_timed_out_codex_run_fails_but_keeps_its_thread() -> None:
    """A timeout is the error whatever was printed; the thread id still allows a resume."""
    result = parse_codex_jsonl(
        _output(CODEX_RECONNECTING, exit_code=-15, timed_out=True, timeout_s=90.0)
    )
    assert (result.ok, result.error) == (False, "timed out after 1 min 30 s")
    assert result.session_id == "01a1fc83-3862-7ce1-b3c1-e754950615fb"


@pytest.mark.parametrize(
    ("stdout", "exit_code", "fragment"),
    [
        ("", 1, "codex exited with status 1 and printed nothing; stderr: Not inside a trusted directory"),
        ("not json\n{broken\n", 1, "ended without turn.completed or turn.failed (2 output lines were not JSON events)"),
        ("[]\n42\n", 0, "(2 output lines were not JSON events)"),
        (CODEX_SUCCESS, 2, "codex exited with status 2 and reported a completed turn"),
    ],
    ids=["nothing", "garbage", "not-objects", "exit-after-completion"],
)  # fmt: skip
def test_unreadable_codex_output_is_an_error_result(
    stdout: str, exit_code: int, fragment: str
) -> None:
    """Malformed lines never raise; a run without a turn outcome fails with a clear reason."""
    stderr = "Not inside a trusted directory and --skip-git-repo-check was not specified.\n"
    result = parse_codex_jsonl(_output(stdout, exit_code=exit_code, stderr=stderr))
    assert not result.ok
    assert fragment in (result.error or "")


def test_stray_lines_do_not_spoil_a_completed_codex_turn() -> None:
    """A non-JSON line among the events (a warning on stdout) is skipped when the turn completed."""
    assert parse_codex_jsonl(_output("WARNING: something\n" + CODEX_SUCCESS)).ok


def test_raw_output_summary_is_the_tail_of_stdout() -> None:
    """Any other CLI: exit 0 is success and the end of stdout is the summary."""
    result = parse_raw(_output("line\n" * 1000 + "final words\n"))
    assert result.ok
    assert result.summary.endswith("final words")
    assert len(result.summary) <= 2001
    assert (result.session_id, result.cost_usd, result.tokens) == (None, 0.0, 0)


def test_raw_failure_quotes_the_stderr_tail() -> None:
    """A non-zero exit fails with the exit status and the end of stderr."""
    result = parse_raw(_output("", exit_code=3, stderr="x" * 2000 + "the real reason\n"))
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("the agent CLI exited with status 3; stderr: …")
    assert result.error.endswith("the real reason")


@pytest.mark.parametrize("parser", ["claude-json", "codex-jsonl", "raw"])
def test_every_parser_fails_a_timed_out_or_cancelled_run(parser: str) -> None:
    """A run stopped by its timeout or a cancellation fails whatever it printed."""
    good = {"claude-json": json.dumps(CLAUDE_SUCCESS), "codex-jsonl": CODEX_SUCCESS, "raw": "ok"}
    timed_out = _output(good[parser], timed_out=True, timeout_s=2.5)
    cancelled = _output(good[parser], cancelled=True)
    assert parse_output(parser, timed_out).error == "timed out after 2.5 s"  # type: ignore[arg-type]
    assert parse_output(parser, cancelled).error == "cancelled"  # type: ignore[arg-type]


def test_an_unknown_parser_is_an_error() -> None:
    """parse_output names the known parsers when given another."""
    with pytest.raises(ValueError, match="claude-json, codex-jsonl, raw"):
        parse_output("xml", _output(""))  # type: ignore[arg-type]
