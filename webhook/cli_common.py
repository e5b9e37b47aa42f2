"""What the ``agent-fleet`` commands share: loading the configuration or exiting with its errors,
opening the store, finding the daemon and its operator token, and the common options.
``webhook/cli.py`` and the command modules beside it (``cli_console.py``, ``cli_agent.py``) use
them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.errors import ConfigError, StoreError, StoreLockedError

if TYPE_CHECKING:
    from reconciler.settings import Settings
    from reconciler.store import Store


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
