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

This module holds the templates (step 1) and is the one import path for all three steps: runs
on this machine live in ``reconciler.run.localrun``, the output model and the parsers in
``reconciler.run.parsers``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

from reconciler.run.localrun import KILL_GRACE_S, LocalRun, group_members, run_local, start_local
from reconciler.run.parsers import (
    AgentResult,
    ParserName,
    RunOutput,
    parse_claude_json,
    parse_codex_jsonl,
    parse_output,
    parse_raw,
)
from reconciler.settings import AdapterSettings

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


# --- templates ----------------------------------------------------------------------------


def render_command(
    adapter: AdapterSettings,
    *,
    prompt: str,
    workdir: str,
    session_id: str | None,
    resume: bool,
    budget_usd: float | None = None,
) -> list[str]:
    """The argv for one run: ``resume_command`` when resuming a known session, else ``command``,
    followed by the adapter's ``budget_usd_args`` when the task has a dollar budget.

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
    if budget_usd is not None:
        amount = f"{budget_usd:.6f}".rstrip("0").rstrip(".")
        argv += [formatter.vformat(arg, (), {**values, "budget_usd": amount})
                 for arg in adapter.budget_usd_args]  # fmt: skip
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


__all__ = [
    "CLAUDE_MAX_RETRIES",
    "CLAUDE_UNATTENDED_ENV",
    "KILL_GRACE_S",
    "AgentResult",
    "LocalRun",
    "ParserName",
    "RunOutput",
    "group_members",
    "parse_claude_json",
    "parse_codex_jsonl",
    "parse_output",
    "parse_raw",
    "render_command",
    "render_env",
    "run_local",
    "start_local",
]
