"""What an agent CLI run produced and how it is read: :class:`RunOutput` (exit code, output,
timings) and the parsers that turn it into an :class:`AgentResult` (summary, session id, cost,
tokens, duration, error) for Claude Code's JSON, Codex's JSON lines and raw text. Parsers never
raise on bad output. ``reconciler.run.adapters`` re-exports them; see ``docs/adapters.md``.
"""

from __future__ import annotations

import json
import math
import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from reconciler.text import format_duration

ParserName = Literal["claude-json", "codex-jsonl", "raw"]


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
    stopped_reason: str | None = None
    """Why the run was stopped while its output streamed (``over budget: spent X of Y``)."""


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
    if output.stopped_reason is not None:
        return replace(result, ok=False, error=output.stopped_reason)
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
