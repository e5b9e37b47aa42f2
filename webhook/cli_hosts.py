"""``agent-fleet hosts …``: ssh hosts added, prepared, scaled and removed from the command line.

The desired state stays in the configuration file: ``add``, ``scale`` and ``remove`` edit its
``[[hosts]]`` tables with ``reconciler.settings.editing`` (comments kept, the result validated
before it replaces the file), and the running daemon, which watches the file, takes the change
up. ``install`` prepares a host over ssh (``reconciler.run.install``). ``remove`` first drains
the host through the running daemon's agent API and waits for its running tasks, unless
``--now``. ``webhook/cli.py`` adds this group to the ``agent-fleet`` command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from reconciler.errors import ConfigError, FleetError

_CONFIG = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("config/fleet.toml"),
    show_default=True,
    help="The TOML configuration file.",
)


def _csv(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for item in value for part in item.split(",") if part.strip())


def _config_failed(exc: ConfigError) -> None:
    click.echo(
        f"agent-fleet: {exc.source or 'the configuration'}: the change was not made", err=True
    )
    for path, message in exc.problems:
        click.echo(f"  {path}: {message}", err=True)
    sys.exit(2)


@click.group()
def hosts() -> None:
    """Add, prepare, scale and remove ssh hosts; the configuration file keeps the desired state.

    \b
    Example:
      agent-fleet hosts add gpu-02 --ssh fleet@gpu-02.internal --roles developer --workdir /srv/work
    """


@hosts.command("add")
@click.argument("name")
@click.option("--ssh", "target", required=True, help="USER@HOST (or HOST) to reach it over ssh.")
@click.option(
    "--port", type=int, default=None, help="ssh port (default: ~/.ssh/config's, else 22)."
)
@click.option("--workdir", required=True, help="Where task worktrees are made on the host.")
@click.option("--adapter", default="claude-code", show_default=True, help="Entry of [adapters].")
@click.option(
    "--type", "agent_type", default=None, help="Agent type (default: the adapter's name)."
)
@click.option("--roles", multiple=True, callback=_csv, help="Roles, comma-separated.")
@click.option("--capabilities", multiple=True, callback=_csv, help="Capabilities, comma-separated.")
@click.option("--max-concurrency", type=int, default=1, show_default=True, help="Tasks at once.")
@click.option("--key-file", default=None, help="ssh private key on this machine.")
@click.option("--known-hosts-file", default=None, help="known_hosts file holding the host's key.")
@click.option("--forgejo-login", default=None, help="The agent's own Forgejo account.")
@_CONFIG
def hosts_add(
    name: str,
    target: str,
    port: int | None,
    workdir: str,
    adapter: str,
    agent_type: str | None,
    roles: tuple[str, ...],
    capabilities: tuple[str, ...],
    max_concurrency: int,
    key_file: str | None,
    known_hosts_file: str | None,
    forgejo_login: str | None,
    config_file: Path,
) -> None:
    """Declare an ssh host in the configuration file (its comments kept); the running daemon
    picks it up. Nothing is written when the result would not be valid.

    \b
    Example:
      agent-fleet hosts add gpu-02 --ssh fleet@gpu-02.internal --workdir /srv/work \\
          --adapter codex --roles developer --capabilities code:python --max-concurrency 2
    """
    from reconciler.settings.editing import add_host

    user, _, address = target.rpartition("@")
    fields: dict[str, Any] = {
        "name": name,
        "address": address,
        "user": user or None,
        "port": port,
        "key_file": key_file,
        "known_hosts_file": known_hosts_file,
        "agent_type": agent_type or adapter,
        "adapter": adapter,
        "roles": roles,
        "capabilities": capabilities,
        "max_concurrency": max_concurrency,
        "workdir": workdir,
        "forgejo_login": forgejo_login,
    }
    try:
        host = add_host(config_file, fields)
    except ConfigError as exc:
        _config_failed(exc)
        return
    click.echo(
        f"{config_file}: added host {host.name} ({host.address}, {host.max_concurrency} slot(s))"
    )
    click.echo(f"  next: agent-fleet hosts install {host.name} --config {config_file}")


@hosts.command("scale")
@click.argument("name")
@click.argument("max_concurrency", type=click.IntRange(min=1))
@_CONFIG
def hosts_scale(name: str, max_concurrency: int, config_file: Path) -> None:
    """Change how many tasks the host runs at once (its max_concurrency).

    \b
    Example:
      agent-fleet hosts scale gpu-02 4
    """
    from reconciler.settings.editing import scale_host

    try:
        host = scale_host(config_file, name, max_concurrency)
    except ConfigError as exc:
        _config_failed(exc)
        return
    click.echo(f"{config_file}: host {host.name} now runs {host.max_concurrency} task(s) at once")


@hosts.command("install")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Only look: say what each step would do.")
@_CONFIG
def hosts_install(name: str, dry_run: bool, config_file: Path) -> None:
    """Prepare the host over ssh, step by step and idempotently: git present, the work
    directory, the adapter's agent CLI (npm, pinned version) in the host's cli_prefix.

    Exits 0 when every step is done (or, with --dry-run, could be looked at), 1 when a step
    failed, 3 when the host cannot be reached.

    \b
    Example:
      agent-fleet hosts install gpu-02 --dry-run
      agent-fleet hosts install gpu-02
    """
    from reconciler.run.install import Step, install_host
    from reconciler.settings import load_settings

    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        _config_failed(exc)
        return
    host = next((h for h in settings.hosts if h.name == name), None)
    if host is None:
        raise click.UsageError(f"no host named {name!r} in {config_file}")

    def report(step: Step) -> None:
        click.echo(f"  {'ok ' if step.ok else 'FAIL'} {step.name}: {step.detail}")

    click.echo(f"{'checking' if dry_run else 'preparing'} {host.name} ({host.address})")
    try:
        steps = install_host(settings, host, dry_run=dry_run, report=report)
    except FleetError as exc:
        click.echo(f"agent-fleet: {exc}", err=True)
        sys.exit(3)
    sys.exit(0 if all(s.ok for s in steps) else 1)


@hosts.command("remove")
@click.argument("name")
@click.option("--now", is_flag=True, help="Do not drain or wait: remove it at once.")
@click.option("--wait", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--server", envvar="AGENT_FLEET_SERVER", default=None, help="The daemon's URL.")
@click.option("--token", envvar="AGENT_FLEET_TOKEN", default=None, help="The operator token.")
@_CONFIG
def hosts_remove(
    name: str, now: bool, wait: float, server: str | None, token: str | None, config_file: Path
) -> None:
    """Drain the host through the running daemon (no new tasks), wait until its running tasks
    are done, then remove it from the configuration. With --now: remove it at once (the daemon
    then takes its running tasks back and requeues them).

    \b
    Example:
      agent-fleet hosts remove gpu-02
      agent-fleet hosts remove gpu-02 --now
    """
    from reconciler.settings.editing import declared_host, remove_host

    try:
        declared_host(config_file, name)
    except ConfigError as exc:
        _config_failed(exc)
        return
    if not now:
        _drain_and_wait(name, config_file, server=server, token=token, wait=wait)
    try:
        remove_host(config_file, name)
    except ConfigError as exc:
        _config_failed(exc)
        return
    click.echo(f"{config_file}: removed host {name}")


def _drain_and_wait(
    name: str, config_file: Path, *, server: str | None, token: str | None, wait: float
) -> None:
    from reconciler.agent.client import AgentApi
    from reconciler.console.client import daemon_url, get
    from reconciler.fleet import operations
    from reconciler.fleet.api import AgentSummary, DrainRequest
    from reconciler.settings import load_settings

    settings = load_settings(config_file)
    url = server or daemon_url(settings.webhook)
    secret = token or (
        settings.api.operator_token.get_secret_value() if settings.api.operator_token else None
    )
    if secret is None:
        raise click.UsageError("no operator token: set api.operator_token or pass --token")
    try:
        AgentApi(url).call(
            operations.DRAIN, DrainRequest(), params={"agent_id": name}, credential=secret
        )
        click.echo(f"draining {name}: it takes no new task")
        deadline = time.monotonic() + wait

        def running_tasks() -> tuple[object, ...]:
            agent = get(
                url,
                operations.GET_AGENT,
                AgentSummary,
                params={"agent_id": name},
                token=secret,
                timeout=10.0,
            )
            return tuple(agent.current_tasks)

        while running := running_tasks():
            if time.monotonic() > deadline:
                click.echo(
                    f"agent-fleet: {name} still runs {len(running)} task(s) after {wait:g} s; "
                    "it stays drained (use --now to remove it anyway)",
                    err=True,
                )
                sys.exit(1)
            click.echo(f"  waiting for {len(running)} running task(s)")
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))
    except FleetError as exc:
        click.echo(
            f"agent-fleet: {exc} (is the daemon running? --now removes without it)", err=True
        )
        sys.exit(3)


__all__ = ["hosts"]
