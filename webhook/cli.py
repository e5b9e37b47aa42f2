"""The ``agent-fleet`` command line: a thin layer over library calls.

Each command is a few lines; the work lives in the modules it calls. Every command carries an
example in its help, and ``tests/test_cli.py`` checks that each one is documented in
``docs/cli.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler import __version__
from reconciler.errors import ConfigError, StoreError, StoreLockedError
from reconciler.models import TaskState

if TYPE_CHECKING:
    from reconciler.engine.loop import Loop, Outcome
    from reconciler.settings import Settings
    from reconciler.store import Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agent-fleet")
def main() -> None:
    """agent-fleet runs a fleet of coding agents driven by a Forgejo instance.

    \b
    Examples:
      agent-fleet demo
      agent-fleet config check config/fleet.toml
    """


@main.group()
def config() -> None:
    """Inspect and validate configuration files.

    \b
    Example:
      agent-fleet config check config/fleet.toml
    """


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE against the settings model; print every error with its field path.

    Exits 0 when the file is valid, 2 when it is not (or cannot be read). Environment
    overrides (AGENT_FLEET_...) are applied as the daemon would apply them.

    \b
    Example:
      agent-fleet config check config/fleet.example.toml
    """
    from reconciler.settings import load_settings

    try:
        settings = load_settings(file)
    except ConfigError as exc:
        click.echo(f"{file}: {len(exc.problems)} error(s)", err=True)
        for path, message in exc.problems:
            click.echo(f"  {path}: {message}", err=True)
        sys.exit(2)
    repos = ", ".join(settings.forgejo.repos) or "(none)"
    click.echo(f"{file}: OK — Forgejo {settings.forgejo.url}, watching {repos}")
    for warning in settings.warnings():
        click.echo(f"  warning: {warning}", err=True)


def _load_or_exit(file: Path | None) -> Settings:
    from reconciler.settings import load_settings

    try:
        return load_settings(file)
    except ConfigError as exc:
        click.echo(f"{file}: invalid configuration, {len(exc.problems)} error(s)", err=True)
        for path, message in exc.problems:
            click.echo(f"  {path}: {message}", err=True)
        sys.exit(2)


def _open_store_or_exit(settings: Settings) -> Store:
    from reconciler.store import Store

    try:
        return Store.open(settings.store.path)
    except StoreLockedError as exc:
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(3)
    except StoreError as exc:  # e.g. written by a newer agent-fleet
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(4)


def _daemon_target(config_file: Path, server: str | None, token: str | None) -> tuple[str, str]:
    """The daemon's URL and operator token: --server/--token (or AGENT_FLEET_SERVER and
    AGENT_FLEET_TOKEN) when both are given, so no configuration file is needed; otherwise
    what is missing comes from the configuration."""
    if server and token:
        return server, token
    from reconciler.console.client import daemon_url

    settings = _load_or_exit(config_file)
    return server or daemon_url(settings.webhook), _operator_token(settings, token)


def _operator_token(settings: Settings, given: str | None) -> str:
    """The --token given, else api.operator_token from the config."""
    if given is not None:
        return given
    if settings.api.operator_token is None:
        raise click.UsageError("no operator token: set api.operator_token or pass --token")
    return settings.api.operator_token.get_secret_value()


_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("config/fleet.toml"),
    show_default=True,
    help="The TOML configuration file.",
)


_SERVER_OPTION = click.option(
    "--server",
    envvar="AGENT_FLEET_SERVER",
    default=None,
    help="The daemon's URL, e.g. http://fleet.internal:8080 (env AGENT_FLEET_SERVER; "
    "default: from webhook.bind and webhook.port in the config).",
)
_TOKEN_OPTION = click.option(
    "--token",
    envvar="AGENT_FLEET_TOKEN",
    default=None,
    help="Operator token (env AGENT_FLEET_TOKEN; default: api.operator_token from the config).",
)


@main.command()
@_CONFIG_OPTION
@click.option(
    "--log-level", default="info", show_default=True, help="debug, info, warning or error."
)
@click.option(
    "--log-json/--log-console",
    default=None,
    help="Log format (default: JSON unless on a terminal).",
)
def run(config_file: Path, log_level: str, log_json: bool | None) -> None:
    """Run the daemon: reconcile loop, webhook receiver, agent API and resync.

    Stops cleanly on SIGTERM or SIGINT: in-flight reconciles finish (up to
    loop.shutdown_grace seconds), state is flushed, exit code 0. The config file is watched;
    a valid edit is applied, an invalid one is logged and the old config keeps running.

    \b
    Example:
      agent-fleet run --config config/fleet.toml
    """
    import signal
    import threading

    from reconciler.engine.logs import configure_logging
    from webhook.daemon import Daemon

    configure_logging(level=log_level, json=log_json)
    settings = _load_or_exit(config_file)
    try:
        daemon = Daemon(settings, config_path=config_file)
    except StoreLockedError as exc:
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(3)
    except StoreError as exc:  # e.g. written by a newer agent-fleet
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(4)
    except ConfigError as exc:
        for path, message in exc.problems:
            click.echo(f"{config_file}: {path}: {message}", err=True)
        sys.exit(2)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    daemon.start()
    stop.wait()
    drained = daemon.stop()
    sys.exit(0 if drained else 1)


# A resync of at least this many keys reports its progress on stderr, about every tenth.
PROGRESS_FROM = 200


def _report_progress(loop: Loop, keys: int) -> None:
    step = max(keys // 10, 1)
    done = 0

    def count(_: Outcome) -> None:
        nonlocal done
        done += 1
        # Follow-up keys the pass enqueues itself come after the resync's: not counted.
        if done <= keys and (done % step == 0 or done == keys):
            click.echo(f"… {done} of {keys} keys reconciled", err=True)

    loop.on_outcome(count)


@main.command()
@_CONFIG_OPTION
@click.option("--once", is_flag=True, required=True, help="Run one full pass and exit.")
@click.option(
    "--dry-run", is_flag=True, help="Print the actions a pass would take; change nothing."
)
def reconcile(config_file: Path, once: bool, dry_run: bool) -> None:
    """Run one full reconcile pass over every watched repository, then exit.

    Tasks it dispatches to ssh hosts run to their end before it exits. With --dry-run nothing
    is changed, in Forgejo or locally: the actions the pass would take (labels, comments, task
    changes, dispatches) are printed, like a plan.

    \b
    Example:
      agent-fleet reconcile --once --dry-run --config config/fleet.toml
    """
    import contextlib

    from reconciler.engine.logs import configure_logging
    from reconciler.store.snapshot import open_snapshot
    from webhook.daemon import build, prepare_repos

    configure_logging(level="warning")
    settings = _load_or_exit(config_file)
    verb = "would" if dry_run else "did"
    # A dry run reads a private copy of the store: no lock, so it runs beside the daemon, and
    # whatever the pass records stays in the copy.
    opened = (
        open_snapshot(settings.store.path)
        if dry_run
        else contextlib.closing(_open_store_or_exit(settings))
    )
    with opened as store:
        assembly = build(settings, store=store, dry_run=dry_run)
        if not dry_run:
            prepare_repos(assembly)
        keys = assembly.resync.full()
        # One pass: the hosts' health checks (read only) run here, before it.
        assembly.probes.run_due()
        if keys >= PROGRESS_FROM:
            _report_progress(assembly.loop, keys)
        outcomes = assembly.loop.drain()
        # Runs dispatched to ssh hosts are part of the pass: wait for them (each is bounded by
        # its task's deadline), then reconcile what their results changed.
        executor = assembly.executor
        while executor is not None and executor.running():
            for task_id in executor.running():
                executor.wait(task_id, timeout=settings.timeouts.task_default)
            outcomes += assembly.loop.drain()
        for closer in assembly.closers:
            closer()
    total = 0
    for outcome in outcomes:
        for action in outcome.actions:
            click.echo(f"{verb}: {action}")
            total += 1
        if outcome.outcome not in ("ok", "requeued"):
            click.echo(f"{outcome.key}: {outcome.outcome} {outcome.error}".rstrip(), err=True)
    failed = sum(o.outcome == "error" for o in outcomes)
    click.echo(
        f"{len(outcomes)} key(s) reconciled, {total} action(s) {'planned' if dry_run else 'taken'}, {failed} error(s)"
    )
    sys.exit(1 if failed else 0)


@main.command()
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


@main.command()
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


@main.group()
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


@main.group()
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


@main.command()
@click.option("--verbose", is_flag=True, help="Also show the daemon's own log lines.")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the fleet running at the end, print the fleet page's URL; Ctrl-C stops it.",
)
def demo(verbose: bool, keep: bool) -> None:
    """Run agent-fleet end to end on this machine with no outside service.

    Starts an embedded Forgejo sandbox and the real daemon on loopback, with a throw-away
    state store and a local host running a deterministic demo agent; registers two pull
    agents through the agent API; files labelled issues and prints each task's life as it
    happens, through its pull request; shows the task nobody can do waiting and why, and a
    silent agent going offline. Stops everything it started; exits 0.

    \b
    Example:
      agent-fleet demo
      agent-fleet demo --verbose
      agent-fleet demo --keep      # then open the printed URL in a browser
    """
    from reconciler.engine.logs import configure_logging
    from webhook.demo import run_demo, until_interrupted

    configure_logging(level="info" if verbose else "warning")
    sys.exit(run_demo(out=click.echo, keep=until_interrupted if keep else None))


def _add_host_commands() -> None:
    from webhook.cli_hosts import hosts

    main.add_command(hosts)


_add_host_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
