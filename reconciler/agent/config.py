"""What a pull worker is told: :class:`WorkerConfig`, and the adapter it runs.

``agent-fleet agent run`` (``webhook/cli.py``) builds a :class:`WorkerConfig` from its options
(choosing the adapter with :func:`resolve_adapter`) and hands it to
``reconciler.agent.worker.serve``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path, PurePath

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from reconciler.settings import BUILTIN_ADAPTERS, AdapterSettings


class WorkerConfig(BaseModel):
    """Everything ``agent-fleet agent run`` is told; see its help for each option."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = Field(pattern=r"^https?://", description="The daemon's URL.")
    token: SecretStr | None = Field(
        default=None,
        description="To register: the enrolment secret, or the agent's current token. Not "
        "needed once the state directory holds a token from an earlier registration.",
    )
    agent_id: str | None = Field(default=None, description="None: the saved id, or a new one.")
    agent_type: str = Field(min_length=1, description="claude-code, codex-cli, …")
    adapter: AdapterSettings
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = Field(default=1, ge=1, le=1000)
    hostname: str = Field(default_factory=socket.gethostname)
    workdir: Path = Field(description="Clones, worktrees and run logs live here.")
    state_dir: Path = Field(description="The worker's own store: its token and receipt outbox.")
    forgejo_token: SecretStr = Field(description="Forgejo API token: read issues, push, open PRs.")
    forgejo_login: str = Field(
        default="", description="The agent's own Forgejo account, to be assigned its issues."
    )
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between dequeues.")
    retry_initial: float = Field(default=1.0, gt=0, description="First receipt retry delay.")
    retry_max: float = Field(default=60.0, gt=0, description="Longest receipt retry delay.")
    request_timeout: float = Field(default=30.0, gt=0, description="Seconds per API call.")


def resolve_adapter(
    name: str, *, command: Sequence[str] = (), parser: str | None = None
) -> AdapterSettings:
    """The adapter named ``name`` (claude-code, codex), or a custom ``command`` template with
    ``parser`` (claude-json, codex-jsonl, raw; default raw). Raises ``ValueError`` otherwise."""
    if command:
        return AdapterSettings.model_validate(
            {"command": tuple(command), "parser": parser or "raw"}
        )
    if name not in BUILTIN_ADAPTERS:
        known = ", ".join(sorted(BUILTIN_ADAPTERS))
        raise ValueError(f"unknown adapter {name!r}: use one of {known}, or give a --command")
    adapter = BUILTIN_ADAPTERS[name]
    return adapter if parser is None else adapter.model_copy(update={"parser": parser})


def cli_type(name: str, *, command: Sequence[str] = ()) -> str:
    """The type a worker registers as when none is given: the CLI it actually runs.

    The adapter's name (``claude-code``, ``codex``), or for a ``command`` of one's own its
    program's name (``aider`` for ``aider --yes …``; the module for ``python -m pkg.tool``).
    """
    if not command:
        return name
    program = PurePath(command[0]).name
    if program.startswith("python") and len(command) > 2 and command[1] == "-m":
        program = command[2].rsplit(".", 1)[-1]
    return program or "custom"


__all__ = ["WorkerConfig", "cli_type", "resolve_adapter"]
