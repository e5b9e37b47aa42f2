"""Preparing an ssh host to run agents: git present, the work directory, the pinned agent CLI.

``agent-fleet hosts install NAME`` (``webhook/cli_hosts.py``) calls :func:`install_host`. It
runs one short ``sh`` script per step over ssh (``reconciler.run.hosts.run_remote``; locally
for ``localhost``) and reports each step as it goes. Every step first looks, then acts only
when something is missing, so running it again changes nothing; with ``dry_run`` it only
looks and says what it would do.

1. **git** must be on the host's PATH. It is not installed here (that needs root and the
   system's package manager): its absence stops the install with what to run.
2. **work directory**: created (``mkdir -p``) when missing.
3. **agent CLI**: the adapter's ``package`` (an npm package pinned to an exact version) is
   installed with ``npm install --global --prefix <cli_prefix>`` unless that exact version is
   already in the prefix; ``<cli_prefix>/bin`` must be on the PATH ssh commands get.

Values reach the scripts as shell-quoted assignments, never pasted into them unquoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.run.hosts import RemoteResult, run_remote
from reconciler.settings import HostSettings, Settings

STEP_TIMEOUT = 60.0
NPM_TIMEOUT = 900.0


@dataclass(frozen=True)
class Step:
    """One install step's outcome: ``ok`` false stops the install."""

    name: str
    ok: bool
    detail: str


def split_package(spec: str) -> tuple[str, str]:
    """(name, version) of a pinned npm spec: ``@openai/codex@0.169.0`` → ``@openai/codex``,
    ``0.169.0``."""
    name, _, version = spec.rpartition("@")
    if not name or not version:
        raise ValueError(f"{spec!r} is not pinned: give name@version")
    return name, version


def _assign(**values: str) -> str:
    return "\n".join(f"{key}={shlex.quote(value)}" for key, value in values.items())


def _prefix_expr(prefix: str) -> str:
    # ``~`` is the remote user's home: expanded there, not here.
    if prefix == "~" or prefix.startswith("~/"):
        return '"$HOME"' + shlex.quote(prefix[1:]) if prefix != "~" else '"$HOME"'
    return shlex.quote(prefix)


GIT_SCRIPT = """\
if command -v git >/dev/null 2>&1; then git --version; exit 0; fi
echo "git is not on the PATH: install it with the system's package manager (apt-get install git, dnf install git)"
exit 3
"""

WORKDIR_SCRIPT = """\
if [ -d "$workdir" ]; then echo "$workdir exists"; exit 0; fi
if [ "$dry" = 1 ]; then echo "would create $workdir"; exit 0; fi
mkdir -p -- "$workdir" && echo "created $workdir"
"""

CLI_SCRIPT = """\
manifest="$prefix/lib/node_modules/$name/package.json"
if [ -f "$manifest" ] && grep -q "\\"version\\": *\\"$version\\"" "$manifest"; then
  echo "$name $version is installed in $prefix"; exit 0
fi
if [ "$dry" = 1 ]; then echo "would run: npm install --global --prefix $prefix $name@$version"; exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "npm is not on the PATH: install Node.js first"; exit 3; }
npm install --global --no-fund --no-audit --prefix "$prefix" "$name@$version" >&2 || exit
echo "installed $name $version in $prefix"
"""


def install_host(
    settings: Settings,
    host: HostSettings,
    *,
    dry_run: bool = False,
    report: Callable[[Step], None] = lambda step: None,
    known_hosts_file: Path | None = None,
) -> list[Step]:
    """Prepare ``host`` step by step (see the module docstring); every step's outcome, in order,
    each also given to ``report`` as soon as it is known. Stops at the first failed step.
    Raises ``TransientError`` when the host cannot be reached."""
    adapter = settings.adapter_for(host)
    dry = "1" if dry_run else "0"
    known = known_hosts_file or host.known_hosts_file
    steps: list[Step] = []

    def run(name: str, script: str, timeout: float) -> bool:
        ran: RemoteResult = run_remote(host, script, timeout=timeout, known_hosts_file=known)
        text = (ran.stdout.strip() or ran.stderr.strip()).splitlines()
        detail = text[-1] if text else f"exit {ran.exit_code}"
        if ran.timed_out:
            detail = f"timed out after {timeout:g} s"
        step = Step(name, ran.exit_code == 0 and not ran.timed_out, detail)
        steps.append(step)
        report(step)
        return step.ok

    if not run("git", GIT_SCRIPT, STEP_TIMEOUT):
        return steps
    if not run("workdir", _assign(workdir=host.workdir, dry=dry) + "\n" + WORKDIR_SCRIPT,
               STEP_TIMEOUT):  # fmt: skip
        return steps
    if adapter.package is None:
        step = Step("agent CLI", True, f"adapter {host.adapter!r} names no package: not installed")
        steps.append(step)
        report(step)
        return steps
    name, version = split_package(adapter.package)
    script = (
        f"prefix={_prefix_expr(host.cli_prefix)}\n"
        + _assign(name=name, version=version, dry=dry)
        + "\n"
        + CLI_SCRIPT
    )
    run("agent CLI", script, NPM_TIMEOUT)
    return steps


__all__ = ["Step", "install_host", "split_package"]
