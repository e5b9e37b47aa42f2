"""The ``[adapters]`` and ``[[hosts]]`` sections: how each agent CLI is run and read (and the
built-in ones), and the ssh hosts that run agents. The model in ``schema.py`` uses them."""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from reconciler.settings.values import (
    COMMAND_PLACEHOLDERS,
    CapabilityName,
    HostName,
    RoleName,
    Seconds,
    Section,
    _custom,
)


def _check_placeholders(argv: tuple[str, ...]) -> tuple[str, ...]:
    known = ", ".join("{" + name + "}" for name in sorted(COMMAND_PLACEHOLDERS))
    for index, arg in enumerate(argv):
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
        except ValueError as exc:
            raise _custom(
                "command_template",
                f"argument {index} {arg!r}: {exc} (write a literal brace as {{{{ or }}}})",
            ) from None
        for name in fields:
            if name not in COMMAND_PLACEHOLDERS:
                raise _custom(
                    "command_template",
                    f"argument {index} {arg!r}: unknown placeholder {{{name}}}; known: {known}",
                )
    return argv


class AdapterSettings(Section):
    """How to run one kind of agent CLI and read its output."""

    command: tuple[str, ...] = Field(
        min_length=1,
        description="Argv template; each element may use {prompt}, {workdir}, {session_id}.",
    )
    parser: Literal["claude-json", "codex-jsonl", "raw"] = Field(
        default="raw", description="How the output is read: summary, session id, cost, tokens."
    )
    env: Mapping[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the command."
    )
    resume_command: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Argv template to continue a session; must use {session_id}.",
    )
    budget_usd_args: tuple[str, ...] = Field(
        default=(),
        description="Arguments appended to the command when the task has a dollar budget, "
        "with {budget_usd} (e.g. Claude Code's `--max-budget-usd {budget_usd}`), so the CLI "
        "enforces the limit itself too; the streamed usage is metered either way.",
    )
    package: str | None = Field(
        default=None,
        pattern=r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*@[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+-]*$",
        description="The npm package of the CLI, pinned to an exact version "
        "(`@openai/codex@0.169.0`): what `agent-fleet hosts install` installs.",
    )

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_placeholders(value)

    @field_validator("budget_usd_args")
    @classmethod
    def _budget_placeholders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ", ".join(
            "{" + name + "}" for name in sorted(COMMAND_PLACEHOLDERS | {"budget_usd"})
        )
        for index, arg in enumerate(value):
            for _, name, _, _ in string.Formatter().parse(arg):
                if name is not None and name not in COMMAND_PLACEHOLDERS | {"budget_usd"}:
                    raise _custom(
                        "command_template",
                        f"argument {index} {arg!r}: unknown placeholder {{{name}}}; known: {known}",
                    )
        return value

    @field_validator("resume_command")
    @classmethod
    def _resume_placeholders(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        _check_placeholders(value)
        if not any("{session_id}" in arg for arg in value):
            raise _custom("command_template", "must contain {session_id}")
        return value


# Only the agent's git worktree and the task prompt vary between runs; the executor sets the
# working directory (Claude Code has no --cwd flag) and passes stdin=/dev/null.
BUILTIN_ADAPTERS: Mapping[str, AdapterSettings] = {
    "claude-code": AdapterSettings(
        command=(
            "claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose",
            "--permission-mode", "bypassPermissions",
        ),
        parser="claude-json",
        resume_command=(
            "claude", "-p", "{prompt}", "--resume", "{session_id}",
            "--output-format", "stream-json", "--verbose",
            "--permission-mode", "bypassPermissions",
        ),
        budget_usd_args=("--max-budget-usd", "{budget_usd}"),
        package="@anthropic-ai/claude-code@2.1.329",
    ),
    # danger-full-access: with workspace-write Codex cannot commit in a git worktree (the
    # worktree's index lives under the main repository's .git, which it keeps read-only), and
    # `exec resume` takes no --sandbox flag (a resumed run would silently be read-only).
    "codex": AdapterSettings(
        command=(
            "codex", "exec", "--json", "--color", "never", "--sandbox", "danger-full-access",
            "--cd", "{workdir}", "{prompt}",
        ),
        parser="codex-jsonl",
        resume_command=(
            "codex", "exec", "resume", "{session_id}", "--json",
            "-c", 'sandbox_mode="danger-full-access"', "{prompt}",
        ),
        package="@openai/codex@0.169.0",
    ),
}  # fmt: skip


class HostSettings(Section):
    """One ssh host declared in the file; it becomes an agent that is pushed tasks over ssh."""

    name: HostName = Field(description="Unique name; also the agent id (`fleet/assign:<name>`).")
    address: str = Field(
        min_length=1, description='Host name or IP; "localhost" runs locally without ssh.'
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="ssh port (unset: the `Port` ~/.ssh/config gives the address, else 22).",
    )
    user: str | None = Field(default=None, description="ssh user (unset: ssh's default).")
    key_file: Path | None = Field(
        default=None, description="Private key file (unset: ssh agent and ssh config)."
    )
    known_hosts_file: Path | None = Field(
        default=None,
        description=(
            "known_hosts file holding this host's key (unset: ~/.ssh/known_hosts, "
            "/etc/ssh/ssh_known_hosts and the host's ssh config); unknown keys are refused."
        ),
    )
    agent_type: str = Field(
        default="claude-code", min_length=1, description="Kind of agent, e.g. claude-code, codex."
    )
    adapter: str = Field(
        default="claude-code", description="Name of the entry in [adapters] used to run tasks."
    )
    roles: tuple[RoleName, ...] = Field(default=(), description="Roles this agent takes.")
    capabilities: tuple[CapabilityName, ...] = Field(
        default=(), description="Capabilities this agent offers, e.g. code:python."
    )
    max_concurrency: int = Field(default=1, ge=1, description="Tasks run at the same time.")
    cli_prefix: str = Field(
        default="~/.local",
        min_length=1,
        description="npm prefix `agent-fleet hosts install` installs the agent CLI into "
        "(`<prefix>/bin` must be on the host's PATH).",
    )
    forgejo_login: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}$",
        description="The agent's own Forgejo account: the issues of its tasks are assigned "
        "to it (unset: no assignee).",
    )
    workdir: str = Field(
        min_length=1, description="Directory on the host where task worktrees are created."
    )
    mcp_command: tuple[str, ...] = Field(
        default=("agent-fleet", "mcp"),
        min_length=1,
        description="How the agent CLI starts agent-fleet's MCP server on the host (the fleet "
        "tools of its runs, docs/mcp.md); used when api.public_url is set.",
    )
    restart_command: str | None = Field(
        default=None, description="Shell command run on the host after repeated health failures."
    )
    health_interval: Seconds = Field(default=60.0, description="Seconds between health checks.")
    failures_before_offline: int = Field(
        default=3, ge=1, description="Consecutive failed checks before the host is offline."
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Free disk (MiB) in workdir below which the host is unhealthy.",
    )

    @property
    def is_local(self) -> bool:
        """True when tasks run on this machine without ssh."""
        return self.address == "localhost"
