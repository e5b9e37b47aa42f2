"""The operator guide stays true: every repository file it names exists, every
``agent-fleet`` command in its examples — and in docs/cli.md's — parses against the real
command line (subcommands, options, choices), and its ``promtool`` commands run as written."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from webhook.cli import main

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operations.md"
CLI_DOC = ROOT / "docs" / "cli.md"
# A backticked repository path: under one of the top-level folders, or a root file.
REPO_PATH = re.compile(
    r"`((?:config|docs|tests|bench|reconciler|controllers|webhook|\.ci)/[^`\s]+"
    r"|Dockerfile(?:\.worker)?|CHANGELOG\.md|README\.md)`"
)


def code_lines(text: str) -> list[str]:
    """The lines of the shell code blocks (fenced as ``sh`` or bare; ``$`` prompts dropped),
    with backslash continuations joined."""
    blocks: list[list[str]] = []
    fence: str | None = None  # the opening fence while inside a block
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence = line.strip()
                blocks.append([])
            else:
                fence = None
        elif fence in ("```", "```sh"):
            blocks[-1].append(line)
    lines: list[str] = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", "\n".join(block)).splitlines():
            command = line.split("   #", 1)[0].strip().removeprefix("$ ")
            if command:
                lines.append(command)
    return lines


def parse_command(argv: list[str]) -> None:
    """Parse ``agent-fleet ARGV`` as click would run it, without running it: raises
    :class:`click.UsageError` for an unknown command or option or a bad value."""
    command: click.Command = main
    name = "agent-fleet"
    while True:
        try:
            ctx = command.make_context(name, list(argv))
        except click.exceptions.Exit:  # --version, --help
            return
        if not isinstance(command, click.Group):
            return
        # A group keeps the subcommand and what follows it unparsed (click 8.2+ as _protected_args).
        rest = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        if not rest:
            return
        sub, found, argv = command.resolve_command(ctx, rest)
        if found is None:
            raise click.UsageError(f"no command {sub!r}")
        command, name = found, f"{name} {sub}"


def test_every_repository_file_the_guide_names_exists() -> None:
    """Each path in backticks under config/, docs/, .ci/ … and each root file exists."""
    named = set(REPO_PATH.findall(GUIDE.read_text()))
    assert len(named) > 10
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


@pytest.mark.parametrize("page", [GUIDE, CLI_DOC], ids=lambda p: p.name)
def test_every_agent_fleet_command_in_the_docs_parses(page: Path) -> None:
    """Each ``agent-fleet …`` example names real subcommands and options with valid values."""
    commands = [c for c in code_lines(page.read_text()) if c.startswith("agent-fleet ")]
    assert len(commands) >= 3
    for command in commands:
        try:
            parse_command(shlex.split(command)[1:])
        except click.UsageError as exc:
            pytest.fail(f"{command}: {exc}")


def test_the_command_check_rejects_a_wrong_option() -> None:
    """The parse above can fail: an unknown option or subcommand is reported."""
    with pytest.raises(click.UsageError):
        parse_command(["status", "--colour"])
    with pytest.raises(click.UsageError):
        parse_command(["statsu"])


def test_the_guides_promtool_commands_run_as_written() -> None:
    """The alert-rule checks the guide shows pass when run from the repository root."""
    commands = [c for c in code_lines(GUIDE.read_text()) if c.startswith("promtool ")]
    assert len(commands) == 2
    if shutil.which("promtool") is None:
        from tests.test_deploy import validator

        validator("promtool")
    for command in commands:
        result = subprocess.run(
            shlex.split(command), cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
