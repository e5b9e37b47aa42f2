"""Every CLI command has help with an example and is documented in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from webhook.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def all_commands(
    group: click.Group, prefix: str = "agent-fleet"
) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, path))
    return found


COMMANDS = all_commands(main)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_with_an_example(path: str, command: click.Command) -> None:
    """`--help` works and shows an example invocation of that very command."""
    args = path.split()[1:] + ["--help"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"{path} --help has no example"
    assert path in result.output, f"{path} --help's example does not show the command"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_is_documented(path: str, command: click.Command) -> None:
    """docs/cli.md has a section for each command."""
    assert f"## `{path}" in DOCS.read_text(), f"docs/cli.md lacks a '## `{path}`' section"
