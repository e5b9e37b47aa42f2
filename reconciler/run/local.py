"""Running a POSIX ``sh`` script on this machine, in a process group of its own.

``reconciler/run/hosts.py`` runs the scripts meant for a ``localhost`` host here, and
``reconciler/run/gitwork.py`` runs its git steps here for the pull worker, which works on its
own machine. On timeout the whole group gets TERM, then KILL, so nothing the script started
outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Seconds between the TERM a timed-out group gets and the KILL after it.
KILL_AFTER = 5.0


@dataclass(frozen=True)
class ScriptResult:
    """A finished script; ``exit_code`` is None when it was stopped for taking too long."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool


def run_script(
    script: str,
    args: Sequence[str] = (),
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> ScriptResult:
    """Run ``script`` with ``sh -c`` and positional ``args``, stdin /dev/null, within
    ``timeout`` seconds. ``env`` is added to this process's environment."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", script, "sh", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(process)
        return ScriptResult(exit_code=None, stdout=stdout, stderr=stderr, timed_out=True)
    return ScriptResult(exit_code=process.returncode, stdout=stdout, stderr=stderr, timed_out=False)


def stop_group(process: subprocess.Popen[str]) -> tuple[str, str]:
    """TERM the process group, KILL it if it lingers; what it printed so far."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.communicate(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            continue
    # Something left the group and holds the pipes open; give up on its output.
    return "", ""
