"""``agent-fleet agent run``: the pull worker on an agent's machine. ``webhook/cli.py`` adds the
``agent`` group to the command line; the worker itself is ``reconciler.agent.worker``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler.errors import StoreLockedError


@click.group()
def agent() -> None:
    """Run this machine as a pull agent of a fleet.

    \b
    Example:
      agent-fleet agent run --server http://fleet.internal:8080 --adapter claude-code
    """


def _csv(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """--roles a,b --roles c → (a, b, c)."""
    return tuple(item.strip() for chunk in value for item in chunk.split(",") if item.strip())


@agent.command("run")
@click.option("--server", required=True, help="The daemon's URL, e.g. http://fleet.internal:8080.")
@click.option(
    "--token",
    envvar="AGENT_FLEET_WORKER_TOKEN",
    default=None,
    help="To register: the enrolment secret or the agent's current token (not needed once --state-dir holds one).",
)
@click.option(
    "--agent-id", default=None, help="The id to register (default: the saved one, or a new one)."
)
@click.option(
    "--type",
    "agent_type",
    default=None,
    help="The agent's type (default: the adapter's name, or --command's program).",
)
@click.option(
    "--adapter",
    default="claude-code",
    show_default=True,
    help="claude-code or codex; or give --command.",
)
@click.option(
    "--command",
    "command",
    default=None,
    help="A CLI template of your own, e.g. 'my-agent --prompt {prompt}'.",
)
@click.option(
    "--parser",
    type=click.Choice(["claude-json", "codex-jsonl", "raw"]),
    default=None,
    help="How the CLI's output is read (default: the adapter's; raw with --command).",
)
@click.option("--roles", multiple=True, callback=_csv, help="Roles, comma-separated or repeated.")
@click.option(
    "--capabilities",
    multiple=True,
    callback=_csv,
    help="Capabilities, comma-separated or repeated.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Tasks run at once.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("./agent-work"),
    show_default=True,
    help="Clones, worktrees and run logs.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("./agent-state"),
    show_default=True,
    help="The worker's token and receipt outbox.",
)
@click.option(
    "--forgejo-token",
    envvar="AGENT_FLEET_WORKER_FORGEJO_TOKEN",
    required=True,
    help="Forgejo API token to read issues, push and open PRs.",
)
@click.option(
    "--forgejo-login",
    default="",
    help="The agent's own Forgejo account: its tasks' issues are assigned to it.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between dequeues while idle.",
)
@click.option("--once", is_flag=True, help="Run one task, deliver its receipt, exit.")
@click.option(
    "--log-level", default="info", show_default=True, help="debug, info, warning or error."
)
@click.option(
    "--log-json/--log-console",
    default=None,
    help="Log format (default: JSON unless on a terminal).",
)
def agent_run(
    server: str,
    token: str | None,
    agent_id: str | None,
    agent_type: str | None,
    adapter: str,
    command: str | None,
    parser: str | None,
    roles: tuple[str, ...],
    capabilities: tuple[str, ...],
    max_concurrency: int,
    workdir: Path,
    state_dir: Path,
    forgejo_token: str,
    forgejo_login: str,
    poll_interval: float,
    once: bool,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Run a pull worker: register, heartbeat, take tasks, run the agent CLI in a git
    worktree, push, open the pull request, and deliver receipts through a durable outbox.

    Stops on SIGTERM or SIGINT (runs in progress are cancelled; undelivered receipts stay in
    --state-dir for the next start). See docs/worker.md.

    \b
    Examples:
      agent-fleet agent run --server http://fleet.internal:8080 --token "$ENROLMENT" \\
          --adapter claude-code --roles developer --capabilities code:python,test
      agent-fleet agent run --server http://fleet.internal:8080 --token "$ENROLMENT" --once \\
          --command 'python -m reconciler.agent.demo_agent {prompt}' --parser claude-json
    """
    import shlex

    from pydantic import SecretStr, ValidationError

    from reconciler.agent.config import WorkerConfig, cli_type, resolve_adapter
    from reconciler.agent.worker import serve
    from reconciler.engine.logs import configure_logging

    configure_logging(level=log_level, json=log_json)
    argv = shlex.split(command) if command else []
    try:
        config = WorkerConfig(
            server=server,
            token=SecretStr(token) if token else None,
            agent_id=agent_id,
            agent_type=agent_type or cli_type(adapter, command=argv),
            adapter=resolve_adapter(adapter, command=argv, parser=parser),
            roles=roles,
            capabilities=capabilities,
            max_concurrency=max_concurrency,
            workdir=workdir.absolute(),
            state_dir=state_dir.absolute(),
            forgejo_token=SecretStr(forgejo_token),
            forgejo_login=forgejo_login,
            poll_interval=poll_interval,
        )
    except (ValueError, ValidationError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sys.exit(serve(config, once=once))
    except StoreLockedError as exc:
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(3)
