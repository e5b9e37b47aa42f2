"""The ``agent-fleet`` command line: a thin layer over library calls.

Each command is a few lines; the work lives in the modules it calls. Every command carries an
example in its help, and ``tests/test_cli.py`` checks that each one is documented in
``docs/cli.md``. This module is the composition root: it defines ``main`` with the daemon's own
commands (``config check``, ``run``, ``reconcile --once``, ``demo``) and adds the command groups
of the modules beside it: ``cli_console.py`` (``agents``, ``status``, ``tasks show``),
``cli_agent.py`` (``agent run``) and ``cli_hosts.py`` (``hosts``); the first two share
``cli_common.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler import __version__
from reconciler.errors import ConfigError, StoreError, StoreLockedError
from webhook.cli_agent import agent
from webhook.cli_common import _CONFIG_OPTION, _load_or_exit, _open_store_or_exit
from webhook.cli_console import agents, status, tasks

if TYPE_CHECKING:
    from reconciler.engine.loop import Loop, Outcome


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
    from webhook.demo import UntilInterrupted, run_demo

    configure_logging(level="info" if verbose else "warning")
    if not keep:
        sys.exit(run_demo(out=click.echo))
    waiter = UntilInterrupted()
    sys.exit(run_demo(out=click.echo, keep=waiter, ready=waiter.arm))


@click.command("mcp")
def mcp_server() -> None:
    """Serve the fleet's tools to one agent run over stdio (the Model Context Protocol).

    Started by the agent CLI from the MCP configuration the executor or the pull worker
    writes for the run, never by hand in normal use. Reads the daemon's URL from
    AGENT_FLEET_SERVER and the run's task token from AGENT_FLEET_TASK_TOKEN; acts only for
    that task and only while its lease is current. See docs/mcp.md.

    \b
    Example:
      AGENT_FLEET_SERVER=http://fleet.internal:8080 AGENT_FLEET_TASK_TOKEN=aft1.12-3f9a.1.… \\
          agent-fleet mcp
    """
    from reconciler.agent.mcpserver import server_from_env

    try:
        server = server_from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    server.run("stdio")


def _add_host_commands() -> None:
    from webhook.cli_hosts import hosts

    main.add_command(hosts)


_add_host_commands()


for command in (agents, status, tasks, agent, mcp_server):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
