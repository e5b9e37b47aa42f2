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

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


# --- the fleet's MCP server ---------------------------------------------------------------

FLEET_MCP_NAME = "fleet"
FLEET_TOOL_PROGRAMS = frozenset({"claude", "codex"})
"""The CLIs :func:`with_fleet_tools` configures to load the fleet's MCP server."""
SERVER_ENV = "AGENT_FLEET_SERVER"
TOKEN_ENV = "AGENT_FLEET_TASK_TOKEN"


@dataclass(frozen=True)
class FleetTools:
    """How a run starts ``agent-fleet mcp``: the daemon's URL, the run's task token, and the
    command (the worker's own interpreter, so the server is the installed agent-fleet)."""

    server: str
    token: str
    command: tuple[str, ...] = ("agent-fleet", "mcp")

    def env(self) -> dict[str, str]:
        """The variables the server reads; given to the CLI, which passes them on."""
        return {SERVER_ENV: self.server, TOKEN_ENV: self.token}


def claude_mcp_config(tools: FleetTools) -> str:
    """Claude Code's ``--mcp-config`` file for the run (it holds the token: write it 0600)."""
    server = {"command": tools.command[0], "args": list(tools.command[1:]), "env": tools.env()}
    return json.dumps({"mcpServers": {FLEET_MCP_NAME: server}})


def claude_mcp_config_by_reference(tools: FleetTools) -> str:
    """Claude Code's ``--mcp-config`` JSON naming the server's variables instead of holding
    their values: Claude Code expands ``${VAR}`` from its own environment, so the JSON (given
    inline, on the command line) carries no token."""
    env = {name: f"${{{name}}}" for name in tools.env()}
    server = {"command": tools.command[0], "args": list(tools.command[1:]), "env": env}
    return json.dumps({"mcpServers": {FLEET_MCP_NAME: server}})


def fleet_tools_env(argv: Sequence[str]) -> dict[str, str]:
    """Variables a CLI loading the fleet's tools needs besides :meth:`FleetTools.env`.

    Claude Code otherwise defers MCP tools behind its ``ToolSearch`` tool, so the model would
    not see ``mcp__fleet__*`` until it searched for them; the fleet's few tools are offered up
    front instead.
    """
    program = Path(argv[0]).name if argv else ""
    return {"ENABLE_TOOL_SEARCH": "false"} if program == "claude" else {}


MCP_STARTUP_TIMEOUT_S = 60
"""How long Codex waits for the fleet's MCP server to start before it fails the run."""


def with_fleet_tools(argv: Sequence[str], *, tools: FleetTools, config_file: str) -> list[str]:
    """``argv`` with the fleet's MCP server added, for the CLIs that load one per run.

    Claude Code: ``--mcp-config <config_file>`` at the end (the option takes several values,
    so nothing may follow it); the caller writes :func:`claude_mcp_config` there. Codex:
    ``-c mcp_servers.fleet.…`` overrides right after the program (Codex's global options),
    forwarding the two variables (and ``PYTHONPATH``, which Codex does not pass on by itself,
    for a worker run from a checkout) from the CLI's environment by name, so the token is in
    no argv, and marking the server required, so Codex waits for its tools. Any other program is unchanged, whatever its parser (it may read the variables
    itself): the options are the real CLIs' own.
    """
    program = Path(argv[0]).name if argv else ""
    if program == "claude":
        return [*argv, "--mcp-config", config_file]
    if program == "codex":
        prefix = f"mcp_servers.{FLEET_MCP_NAME}"
        overrides = [
            f"{prefix}.command={json.dumps(tools.command[0])}",
            f"{prefix}.args={json.dumps(list(tools.command[1:]))}",
            f"{prefix}.env_vars={json.dumps([SERVER_ENV, TOKEN_ENV, 'PYTHONPATH'])}",
            # Without these Codex may send the first turn before the server has listed its
            # tools (a loaded host), and the model never sees them: wait for it, or fail.
            f"{prefix}.required=true",
            f"{prefix}.startup_timeout_sec={MCP_STARTUP_TIMEOUT_S}",
        ]
        return [argv[0], *(arg for o in overrides for arg in ("-c", o)), *argv[1:]]
    return list(argv)


__all__ = [
    "CLAUDE_MAX_RETRIES",
    "CLAUDE_UNATTENDED_ENV",
    "FLEET_MCP_NAME",
    "FLEET_TOOL_PROGRAMS",
    "KILL_GRACE_S",
    "SERVER_ENV",
    "TOKEN_ENV",
    "AgentResult",
    "FleetTools",
    "LocalRun",
    "ParserName",
    "RunOutput",
    "claude_mcp_config",
    "claude_mcp_config_by_reference",
    "fleet_tools_env",
    "group_members",
    "parse_claude_json",
    "parse_codex_jsonl",
    "parse_output",
    "parse_raw",
    "render_command",
    "render_env",
    "run_local",
    "start_local",
    "with_fleet_tools",
]
