"""Agent CLI adapters: command templates to argv and environment, local runs, output parsers.

An adapter (``[adapters.<name>]`` in the config, see ``reconciler.settings.AdapterSettings``)
says how to start one kind of agent CLI and how to read what it prints. The executors use this
module in three steps:

1. :func:`render_command` and :func:`render_env` turn the adapter's template into an argv (no
   shell is involved; each placeholder is replaced inside its own argv element) and the extra
   environment the CLI needs to run unattended.
2. :func:`run_local` (or :func:`start_local`, which returns a handle that another thread can
   :meth:`LocalRun.cancel`) runs it on this machine: stdin from ``/dev/null``, output streamed
   to a per-task log while it runs, a wall-clock timeout that kills the whole process group.
   The ssh executor (``reconciler.run.hosts``) runs the same argv remotely and fills the same
   :class:`RunOutput`.
3. :func:`parse_output` reads a :class:`RunOutput` with the adapter's parser into an
   :class:`AgentResult` (summary, session id, cost, tokens, duration, error). Parsers never raise
   on bad output: whatever the CLI printed, the result says what went wrong.

The output formats are those of Claude Code 2.1.329 and Codex 0.169.0; ``docs/adapters.md``
shows them and the quirks handled here.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import string
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal

from reconciler.settings import AdapterSettings
from reconciler.text import format_duration

ParserName = Literal["claude-json", "codex-jsonl", "raw"]

# Claude Code retries a failing API call for about three minutes by default; a task should
# fail in seconds instead and be retried by agent-fleet's own backoff.
CLAUDE_MAX_RETRIES = 2
CLAUDE_UNATTENDED_ENV: Mapping[str, str] = {
    "CLAUDE_CODE_MAX_RETRIES": str(CLAUDE_MAX_RETRIES),
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
# Arguments with which Claude Code skips its permission prompts; as root it refuses them
# unless IS_SANDBOX=1 says the machine is a sandbox (task worktrees on agent hosts are).
_CLAUDE_BYPASS_ARGS = frozenset({"bypassPermissions", "--dangerously-skip-permissions"})

# Seconds between the TERM sent to a run's process group and the KILL that follows.
KILL_GRACE_S = 5.0
# How much output is kept in memory (the log file gets all of it). Parsers need the start of
# Codex's stream (thread id) and the end of every stream (result, usage, last message).
STDOUT_HEAD_BYTES = 1 << 20
STDOUT_TAIL_BYTES = 16 << 20
STDERR_TAIL_BYTES = 64 << 10
# Characters of output quoted in an error or used as a raw summary.
ERROR_TAIL_CHARS = 500
RAW_SUMMARY_CHARS = 2000


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutput:
    """What one run of an agent CLI produced, locally or over ssh.

    ``exit_code`` is the process's status (negative: killed by that signal, as ``subprocess``
    reports it; 124 from a remote ``timeout``). ``timeout_s`` is the limit that applied, so a
    timed-out run can say which it was.
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    cancelled: bool = False
    timeout_s: float | None = None


@dataclass(frozen=True)
class AgentResult:
    """What an agent run amounts to: the receipt fields and, when it failed, why.

    ``tokens`` counts input tokens (cached ones included) plus output tokens. ``cost_usd`` is
    0 when the CLI reports no cost (Codex never does).
    """

    ok: bool
    summary: str
    session_id: str | None
    cost_usd: float
    tokens: int
    duration_s: float
    error: str | None


# --- templates ----------------------------------------------------------------------------


def render_command(
    adapter: AdapterSettings,
    *,
    prompt: str,
    workdir: str,
    session_id: str | None,
    resume: bool,
) -> list[str]:
    """The argv for one run: ``resume_command`` when resuming a known session, else ``command``.

    ``resume`` asks to continue ``session_id`` (a rerun of the same task); without a session id
    or without a ``resume_command`` the run starts a fresh session. Raises ``ValueError`` when
    the chosen template needs ``{session_id}`` and there is none.
    """
    template = adapter.command
    if resume and session_id and adapter.resume_command is not None:
        template = adapter.resume_command
    values = {"prompt": prompt, "workdir": workdir, "session_id": session_id or ""}
    formatter = string.Formatter()
    argv: list[str] = []
    for index, element in enumerate(template):
        names = {name for _, name, _, _ in formatter.parse(element) if name is not None}
        if "session_id" in names and not session_id:
            raise ValueError(
                f"argument {index} {element!r} of the command needs {{session_id}}, "
                "but this run has no session to continue"
            )
        argv.append(formatter.vformat(element, (), values))
    return argv


def render_env(adapter: AdapterSettings) -> dict[str, str]:
    """Variables to add to the environment of the adapter's CLI (the adapter's ``env`` wins).

    Claude Code gets bounded API retries and no telemetry or non-essential traffic, and
    ``IS_SANDBOX=1`` when its command bypasses permission prompts (refused as root otherwise).
    """
    extra: dict[str, str] = {}
    if _is_claude(adapter):
        extra.update(CLAUDE_UNATTENDED_ENV)
        templates = (adapter.command, adapter.resume_command or ())
        if any(arg in _CLAUDE_BYPASS_ARGS for template in templates for arg in template):
            extra["IS_SANDBOX"] = "1"
    extra.update(adapter.env)
    return extra


def _is_claude(adapter: AdapterSettings) -> bool:
    return adapter.parser == "claude-json" or Path(adapter.command[0]).name == "claude"


# --- running locally ----------------------------------------------------------------------


class _Capture:
    """One output stream of a run: kept in memory (head and tail) and copied to the log."""

    def __init__(self, *, head: int, tail: int) -> None:
        self._head_limit = head
        self._tail_limit = tail
        self._head = bytearray()
        self._tail = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]
            self.truncated = True

    def text(self) -> str:
        gap = b"\n" if self.truncated and self._head else b""
        return bytes(self._head + gap + self._tail).decode("utf-8", errors="replace")


class LocalRun:
    """A CLI started by :func:`start_local`; :meth:`wait` for its output, or :meth:`cancel` it.

    The process leads its own process group, so stopping it stops everything it started
    (Codex runs its native binary and the agent's shell commands as children).
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None,
        *,
        timeout: float,
        log: IO[bytes] | None,
        kill_grace: float,
        ended: RunOutput | None = None,
    ) -> None:
        self._process = process
        self._timeout = timeout
        self._log = log
        self._kill_grace = kill_grace
        self._started = time.monotonic()
        self._stop_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._timed_out = False
        self._stdout = _Capture(head=STDOUT_HEAD_BYTES, tail=STDOUT_TAIL_BYTES)
        self._stderr = _Capture(head=0, tail=STDERR_TAIL_BYTES)
        self._output = ended
        self._readers: list[threading.Thread] = []
        if process is not None:
            self._readers = [
                self._reader(process.stdout, self._stdout, "stdout"),
                self._reader(process.stderr, self._stderr, "stderr"),
            ]

    @property
    def pid(self) -> int | None:
        """The process id, which is also the id of the run's process group (None: not started)."""
        return self._process.pid if self._process is not None else None

    def cancel(self) -> None:
        """Stop the run from any thread; returns once its processes are gone.

        :meth:`wait` then returns a :class:`RunOutput` with ``cancelled`` set.
        """
        self._cancelled.set()
        if self._process is not None:
            self._stop_group(self._process)

    def wait(self) -> RunOutput:
        """Wait for the run to end, or stop it at its wall-clock timeout; the output."""
        if self._output is not None:
            return self._output
        process = self._process
        assert process is not None  # a run that did not start has its output already
        remaining = self._timeout - (time.monotonic() - self._started)
        try:
            process.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            self._timed_out = not self._cancelled.is_set()
            self._stop_group(process)
        duration = time.monotonic() - self._started
        # Whatever the CLI left running in the background ends with the run; it would also
        # keep the output pipes open.
        _kill_group(process.pid, signal.SIGKILL)
        _wait_until_group_gone(process.pid, limit=self._kill_grace)
        for reader in self._readers:
            reader.join(timeout=self._kill_grace)
        if self._log is not None:
            self._log.close()
        self._output = RunOutput(
            exit_code=process.returncode,
            stdout=self._stdout.text(),
            stderr=self._stderr.text(),
            timed_out=self._timed_out,
            duration_s=duration,
            cancelled=self._cancelled.is_set(),
            timeout_s=self._timeout,
        )
        return self._output

    def _stop_group(self, process: subprocess.Popen[bytes]) -> None:
        """TERM the process group, KILL it after the grace period, reap the leader."""
        with self._stop_lock:
            if process.poll() is None:
                _kill_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self._kill_grace)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
            _wait_until_group_gone(process.pid, limit=self._kill_grace)

    def _reader(self, stream: IO[bytes] | None, capture: _Capture, name: str) -> threading.Thread:
        def pump() -> None:
            if stream is None:
                return
            with stream:
                while chunk := os.read(stream.fileno(), 65536):
                    capture.add(chunk)
                    if self._log is not None:
                        with self._log_lock:
                            self._log.write(chunk)
                            self._log.flush()

        thread = threading.Thread(target=pump, name=f"agent-run-{name}", daemon=True)
        thread.start()
        return thread


def start_local(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: str | Path | None = None,
    kill_grace: float = KILL_GRACE_S,
) -> LocalRun:
    """Start ``argv`` in ``cwd`` with exactly ``env``, and return the handle of the run.

    stdin is ``/dev/null`` (Codex appends piped stdin to its prompt; Claude waits for it).
    Output is appended to ``log_path`` (its directory is created) as it arrives. A command
    that cannot be started (not found, not executable, no such ``cwd``) gives a run that has
    already ended with exit code 127, as in a shell, so every executor reports it the same way.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if not argv:
        raise ValueError("empty command")
    log: IO[bytes] | None = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (closed when the run ends)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        message = f"cannot start {argv[0]!r} in {str(cwd)!r}: {exc.strerror or exc}\n"
        if log is not None:
            log.write(message.encode())
            log.close()
        not_started = RunOutput(
            exit_code=127,
            stdout="",
            stderr=message,
            timed_out=False,
            duration_s=time.monotonic() - started,
            timeout_s=timeout,
        )
        return LocalRun(None, timeout=timeout, log=None, kill_grace=kill_grace, ended=not_started)
    return LocalRun(process, timeout=timeout, log=log, kill_grace=kill_grace)


def run_local(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: str | Path | None = None,
    cancel: threading.Event | None = None,
) -> RunOutput:
    """Run ``argv`` to the end (see :func:`start_local`); setting ``cancel`` stops it early."""
    run = start_local(argv, cwd=cwd, env=env, timeout=timeout, log_path=log_path)
    if cancel is None or run.pid is None:
        return run.wait()
    done = threading.Event()

    def watch() -> None:
        # Wakes on either event; `done` lets the watcher end with the run.
        while not done.is_set():
            if cancel.wait(0.05):
                run.cancel()
                return

    watcher = threading.Thread(target=watch, name=f"run-{run.pid}-cancel", daemon=True)
    watcher.start()
    try:
        return run.wait()
    finally:
        done.set()
        watcher.join()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (or its id was reused by someone else's group)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``, read from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_until_group_gone(pgid: int, *, limit: float) -> None:
    # A killed process vanishes from /proc a moment after the signal, and processes that are
    # not our children give no event to wait on, hence the short polling.
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + limit
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


# --- parsers ------------------------------------------------------------------------------


def parse_output(parser: ParserName, output: RunOutput) -> AgentResult:
    """Read ``output`` with the named parser; a timeout or cancellation always fails the run."""
    parse = {"claude-json": parse_claude_json, "codex-jsonl": parse_codex_jsonl, "raw": parse_raw}
    if parser not in parse:
        raise ValueError(f"unknown parser {parser!r}; known: {', '.join(sorted(parse))}")
    return parse[parser](output)


def _interrupted(result: AgentResult, output: RunOutput) -> AgentResult:
    """A run that was stopped fails whatever it printed; what it printed still counts."""
    if output.cancelled:
        return replace(result, ok=False, error="cancelled")
    if output.timed_out:
        limit = output.timeout_s if output.timeout_s is not None else output.duration_s
        return replace(result, ok=False, error=f"timed out after {format_duration(limit)}")
    return result


def _tail(text: str, limit: int = ERROR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _failure(program: str, output: RunOutput, what: str) -> str:
    """An error message for a run whose output could not be read."""
    message = f"{program} {_exit_description(output.exit_code)} and {what}"
    stderr = _tail(output.stderr)
    return f"{message}; stderr: {stderr}" if stderr else f"{message}; stderr was empty"


def _number(value: object) -> float:
    """A non-negative JSON number, or 0 for anything else (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float: not a plausible count or price
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# Claude Code ------------------------------------------------------------------------------

_MAX_TURNS = re.compile(r"maximum number of turns \((\d+)\)", re.IGNORECASE)


def parse_claude_json(output: RunOutput) -> AgentResult:
    """Claude Code's result object (``--output-format json``, or the last ``stream-json`` line).

    ``is_error`` is checked before ``subtype``: an API or auth failure arrives as
    ``subtype: "success"`` with ``is_error: true`` and the message in ``result``.
    """
    result = _claude_result_object(output.stdout)
    if result is None:
        what = "printed no result object" if output.stdout.strip() else "printed nothing"
        failed = AgentResult(
            ok=False,
            summary="",
            session_id=_claude_any_session(output.stdout),
            cost_usd=0.0,
            tokens=0,
            duration_s=output.duration_s,
            error=_failure("claude", output, what),
        )
        return _interrupted(failed, output)
    usage = result.get("usage")
    tokens = 0
    if isinstance(usage, dict):
        tokens = int(
            sum(
                _number(usage.get(key))
                for key in (
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "output_tokens",
                )
            )
        )
    duration_ms = result.get("duration_ms")
    session = result.get("session_id")
    error = _claude_error(result)
    parsed = AgentResult(
        ok=error is None,
        summary=_text(result.get("result")).strip() if error is None else "",
        session_id=session if isinstance(session, str) and session else None,
        cost_usd=_number(result.get("total_cost_usd")),
        tokens=tokens,
        duration_s=_number(duration_ms) / 1000 if duration_ms is not None else output.duration_s,
        error=error,
    )
    return _interrupted(parsed, output)


def _claude_error(result: Mapping[str, Any]) -> str | None:
    subtype = _text(result.get("subtype"))
    errors = [e for e in result.get("errors") or () if isinstance(e, str) and e.strip()]
    if result.get("is_error") is True:
        if subtype == "error_max_turns":
            found = next((m for m in map(_MAX_TURNS.search, errors) if m), None)
            turns = found.group(1) if found else str(result.get("num_turns", "?"))
            return f"reached maximum number of turns ({turns})"
        message = _text(result.get("result")).strip() or "; ".join(errors)
        if not message:
            message = f"Claude Code reported an error ({subtype or 'no subtype'})"
        status = result.get("api_error_status")
        if isinstance(status, int) and str(status) not in message:
            message += f" (API status {status})"
        return message
    if subtype not in ("", "success"):
        return "; ".join(errors) or f"Claude Code ended with {subtype}"
    return None


def _json_objects(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL text, last line first; lines that are not objects are skipped."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _claude_result_object(stdout: str) -> dict[str, Any] | None:
    try:
        whole = json.loads(stdout)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and whole.get("type") == "result":
        return whole
    return next((obj for obj in _json_objects(stdout) if obj.get("type") == "result"), None)


def _claude_any_session(stdout: str) -> str | None:
    """The session id of a stream that ended without a result (its ``init`` line has one)."""
    for obj in _json_objects(stdout):
        session = obj.get("session_id")
        if isinstance(session, str) and session:
            return session
    return None


# Codex ------------------------------------------------------------------------------------


def parse_codex_jsonl(output: RunOutput) -> AgentResult:
    """Codex's ``exec --json`` events: thread id, usage, last agent message, turn failure.

    A lone ``error`` event ("Reconnecting... 2/5") is not fatal; the turn's outcome is its
    ``turn.completed`` or ``turn.failed`` event, and a stream with neither (killed, crashed)
    failed. Codex reports no cost, so ``cost_usd`` is 0.
    """
    thread_id: str | None = None
    summary = ""
    tokens = 0
    outcome: Literal["completed", "failed"] | None = None
    failure = ""
    last_error = ""
    malformed = 0
    for line in output.stdout.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        if not isinstance(event, dict):
            malformed += 1
            continue
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            thread_id = event["thread_id"]
        elif kind == "turn.completed":
            outcome = "completed"
            usage = event.get("usage")
            if isinstance(usage, dict):
                # input_tokens already includes the cached ones.
                tokens += int(
                    _number(usage.get("input_tokens")) + _number(usage.get("output_tokens"))
                )
        elif kind == "turn.failed":
            outcome = "failed"
            details = event.get("error")
            failure = _text(details.get("message")) if isinstance(details, dict) else ""
        elif kind == "error":
            last_error = _text(event.get("message"))
        elif kind == "item.completed":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "agent_message":
                summary = _text(item.get("text")).strip() or summary
    error: str | None = None
    if outcome == "failed":
        error = failure or last_error or "Codex reported a failed turn without a message"
    elif outcome is None:
        if thread_id is None and not output.stdout.strip():
            error = _failure("codex", output, "printed nothing")
        else:
            what = "ended without turn.completed or turn.failed"
            if malformed:
                what += f" ({malformed} output lines were not JSON events)"
            error = _failure("codex", output, what)
            if last_error:
                error += f"; last error event: {last_error}"
    elif output.exit_code != 0:
        error = _failure("codex", output, "reported a completed turn")
    parsed = AgentResult(
        ok=error is None,
        summary=summary,
        session_id=thread_id,
        cost_usd=0.0,
        tokens=tokens,
        duration_s=output.duration_s,
        error=error,
    )
    return _interrupted(parsed, output)


# Any other command --------------------------------------------------------------------------


def parse_raw(output: RunOutput) -> AgentResult:
    """Any CLI: the end of its stdout is the summary, exit status 0 is success."""
    error = None
    if output.exit_code != 0:
        stderr = _tail(output.stderr)
        error = f"the agent CLI {_exit_description(output.exit_code)}; " + (
            f"stderr: {stderr}" if stderr else "stderr was empty"
        )
    parsed = AgentResult(
        ok=error is None,
        summary=_tail(output.stdout, RAW_SUMMARY_CHARS),
        session_id=None,
        cost_usd=0.0,
        tokens=0,
        duration_s=output.duration_s,
        error=error,
    )
    return _interrupted(parsed, output)
