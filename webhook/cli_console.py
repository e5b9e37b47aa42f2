"""The read-only commands of ``agent-fleet`` that ask a running daemon: ``agents``, ``status``
and ``tasks show``. ``webhook/cli.py`` adds them to the command line; what they print comes
from ``reconciler.console``.
"""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.models import TaskState
from webhook.cli_common import _CONFIG_OPTION, _SERVER_OPTION, _TOKEN_OPTION, _daemon_target


@click.command()
@_CONFIG_OPTION
@_SERVER_OPTION
@_TOKEN_OPTION
@click.option(
    "--status",
    type=click.Choice(["online", "offline", "draining"]),
    default=None,
    help="Only agents in this status.",
)
@click.option(
    "--capability", multiple=True, help="Only agents with this capability; repeat for several."
)
@click.option("--role", default=None, help="Only agents with this role.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def agents(
    config_file: Path,
    server: str | None,
    token: str | None,
    status: str | None,
    capability: tuple[str, ...],
    role: str | None,
    as_json: bool,
) -> None:
    """List the fleet's agents, with why an agent is offline or draining.

    Asks the running daemon (GET /api/v1/agents with the operator token): heartbeats live in
    the daemon's memory and it holds the state store, so the store is not read directly.

    \b
    Examples:
      agent-fleet agents --config config/fleet.toml
      agent-fleet agents --status offline --capability code:python --json
    """
    from datetime import UTC, datetime

    from reconciler.console.client import fetch_agents
    from reconciler.console.views import agents_json, agents_table
    from reconciler.errors import FleetError
    from reconciler.models import AgentStatus

    server, token = _daemon_target(config_file, server, token)
    try:
        found = fetch_agents(
            server,
            token=token,
            capabilities=capability,
            status=AgentStatus(status) if status else None,
            role=role,
        )
    except (FleetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(agents_json(found) if as_json else agents_table(found, now=datetime.now(UTC)))


@click.command()
@_CONFIG_OPTION
@_SERVER_OPTION
@_TOKEN_OPTION
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in TaskState]),
    help="Only tasks in this state; repeat for several.",
)
@click.option("--repo", default=None, help="Only tasks of this repository (owner/name).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a report.")
def status(
    config_file: Path,
    server: str | None,
    token: str | None,
    states: tuple[str, ...],
    repo: str | None,
    as_json: bool,
) -> None:
    """Show the live tasks: counts by state, then each task with its agent, or why it waits
    (no agent has code:rust; all 3 matching agents at capacity; backing off after attempt 2:
    next try in 30 s), or why it failed.

    Asks the running daemon (GET /api/v1/tasks with the operator token).

    \b
    Examples:
      agent-fleet status --config config/fleet.toml
      agent-fleet status --state created --repo acme/web
      agent-fleet status --server http://fleet.internal:8080 --token "$OPERATOR_TOKEN" --json
    """
    from datetime import UTC, datetime

    from reconciler.console.client import fetch_tasks
    from reconciler.console.views import status_report
    from reconciler.errors import FleetError
    from reconciler.fleet.api import TaskList

    server, token = _daemon_target(config_file, server, token)
    try:
        tasks = fetch_tasks(
            server,
            token=token,
            states=[TaskState(s) for s in states],
            repo=repo,
        )
    except (FleetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(TaskList(tasks=tuple(tasks)).model_dump_json(indent=2))
    else:
        click.echo(status_report(tasks, now=datetime.now(UTC)))


@click.group()
def tasks() -> None:
    """Look at one task of the fleet.

    \b
    Example:
      agent-fleet tasks show 12-3f9a1c2b --config config/fleet.toml
    """


@tasks.command("show")
@click.argument("task_id")
@_CONFIG_OPTION
@_SERVER_OPTION
@_TOKEN_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON instead of the timeline."
)
def tasks_show(
    task_id: str, config_file: Path, server: str | None, token: str | None, as_json: bool
) -> None:
    """Show one task and its full history: created, assigned (agent, lease), running, progress,
    the pull request, reviews, receipts, each verification of a receipt, completed or failed.

    Asks the running daemon (GET /api/v1/tasks/ID with the operator token). The id is the one
    agent-fleet status lists, issue number first.

    \b
    Examples:
      agent-fleet tasks show 12-3f9a1c2b --config config/fleet.toml
      agent-fleet tasks show 12-3f9a1c2b --json
    """
    from datetime import UTC, datetime

    from reconciler.console.client import fetch_task
    from reconciler.console.history import task_report
    from reconciler.errors import FleetError

    server, token = _daemon_target(config_file, server, token)
    try:
        history = fetch_task(server, task_id, token=token)
    except (FleetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        history.model_dump_json(indent=2)
        if as_json
        else task_report(history, now=datetime.now(UTC))
    )
