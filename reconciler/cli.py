"""The ``agent-fleet`` command line: a thin layer over library calls.

Each command is a few lines; the work lives in the modules it calls. Every command carries an
example in its help, and ``tests/test_cli.py`` checks that each one is documented in
``docs/cli.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import __version__
from reconciler.errors import ConfigError


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


@main.command()
def demo() -> None:
    """Run agent-fleet end to end on this machine with no outside service.

    Starts an embedded Forgejo sandbox on loopback, creates a demo repository with the label
    vocabulary and a few labelled issues through the Forgejo gateway, reads them back, prints
    them, and stops everything it started.

    \b
    Example:
      agent-fleet demo
    """
    from webhook.demo import run_demo

    sys.exit(run_demo(out=click.echo))


if __name__ == "__main__":  # pragma: no cover
    main()
