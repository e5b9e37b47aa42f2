"""Health checks, restarts and command runs on the ssh hosts declared in ``[[hosts]]``.

The registry controller calls ``check_host`` every ``health_interval`` and ``restart_host``
once per failure streak; the executor calls ``run_remote`` to run an agent CLI on a host.
This is the only module that talks ssh (fabric, paramiko, invoke); a host whose address is
``localhost`` gets the same treatment with a local subprocess and no ssh at all.

**One connection, one command.** Each ssh command costs 30–45 ms on top of a ≈75 ms connect,
so a health check opens one connection and runs one POSIX ``sh`` script that reports every
fact at once, a ``key=value`` line each: where the agent CLI and git are on the PATH, which
directory it measured (the host's workdir, or its nearest existing parent) and the free
kilobytes ``df -Pk`` gives for it. Python turns the report into a ``HostHealth``. Values
reach the script as positional arguments (``sh -c SCRIPT sh ARG…``), never pasted into it,
so no setting can inject shell code.

**Every remote command is wrapped in ``timeout``.** fabric's own timeout gives up waiting
but leaves the remote process running, so the remote side runs ``timeout -k 5 N sh -c …``
(GNU coreutils, exit 124 when the limit struck); fabric's timeout stays as a backstop for a
connection that hangs. Local commands run in their own process group, killed on timeout.

**Host keys are checked.** fabric accepts any host key by default; here an unknown key is
refused. Keys are read from ``~/.ssh/known_hosts``, ``/etc/ssh/ssh_known_hosts`` and the
``UserKnownHostsFile``/``GlobalKnownHostsFile`` of the host's entry in ``~/.ssh/config``, or
from the one file given as ``known_hosts_file``.

Health checks and restarts never raise for a sick host: what went wrong is in the result.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fabric  # type: ignore[import-untyped]
import paramiko  # type: ignore[import-untyped]
from invoke.exceptions import CommandTimedOut

from reconciler.errors import TransientError
from reconciler.run.local import KILL_AFTER, ScriptResult, run_script
from reconciler.settings import HostSettings, Settings
from reconciler.text import describe_error, format_duration

# fabric gives up this long after the remote `timeout` should have ended the command, in
# case the connection itself hangs.
BACKSTOP_GRACE = 5.0
# Restart output is kept for display on the host's status, so only its end is kept.
MAX_RESTART_OUTPUT = 4000
# What GNU timeout exits with when it stopped the command.
TIMED_OUT_EXIT = 124
GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")

# paramiko logs every connection failure with a traceback before raising it; the failure is
# reported in the result here, so its own log would only repeat it, every health_interval.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

_REPORT_HEADER = "agent-fleet-health 1"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# $1 = the agent CLI, $2 = the workdir. Prints the report read by _parse_report. `command -v`
# also names non-executable files given as a path (dash), hence the -x test for those.
_HEALTH_SCRIPT = f"""\
exec </dev/null
echo '{_REPORT_HEADER}'
found() {{
  p=$(command -v "$1" 2>/dev/null) || return 1
  case $p in /*) [ -f "$p" ] && [ -x "$p" ] || return 1 ;; esac
  echo "$p"
}}
echo "cli=$(found "$1")"
echo "git=$(found git)"
dir=$2
case $dir in "~") dir=$HOME ;; "~/"*) dir=$HOME/${{dir#"~/"}} ;; esac
while [ ! -d "$dir" ] && [ "$dir" != / ] && [ "$dir" != . ]; do dir=$(dirname -- "$dir"); done
echo "dir=$dir"
df -Pk -- "$dir" 2>/dev/null | {{ read -r _; read -r _ _ _ avail _; echo "free_kb=$avail"; }}
echo end
"""


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostHealth:
    """What one health check found; ``problems`` says in words what is wrong, if anything."""

    reachable: bool
    cli_present: bool
    git_present: bool
    free_disk_mb: int | None
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        """True when the host can take tasks: reachable, CLI and git present, disk enough."""
        return not self.problems


@dataclass(frozen=True)
class RestartOutcome:
    """What running a host's ``restart_command`` did; ``output`` is its merged stdout+stderr."""

    ok: bool
    exit_code: int | None
    output: str


@dataclass(frozen=True)
class RemoteResult:
    """A finished command; ``exit_code`` is None when it was stopped for taking too long."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool


# --- public functions ----------------------------------------------------------------------


def cli_for(settings: Settings, host: HostSettings) -> str:
    """The executable a host's adapter runs (the first word of its command), e.g. ``claude``."""
    return settings.adapter_for(host).command[0]


def check_host(
    host: HostSettings,
    *,
    command: str,
    timeout: float,
    known_hosts_file: Path | None = None,
) -> HostHealth:
    """Check ``host`` in one ssh round trip: reachable, ``command`` and git found, disk free.

    ``command`` is the agent CLI (see ``cli_for``); it is looked up on the PATH of a
    non-interactive ssh session, the environment the executor's commands get. ``timeout``
    bounds the connection and, again, the remote command.
    """
    if not command:
        raise ValueError("check_host needs the agent CLI's name, e.g. 'claude'")
    _check_timeout(timeout)
    try:
        ran = _run(
            host,
            _HEALTH_SCRIPT,
            (command, host.workdir),
            timeout=timeout,
            known_hosts_file=known_hosts_file,
        )
    except _Unreachable as exc:
        return HostHealth(
            reachable=False,
            cli_present=False,
            git_present=False,
            free_disk_mb=None,
            problems=(exc.message,),
        )
    return _health_from(ran, host=host, command=command, timeout=timeout)


def restart_host(
    host: HostSettings, *, timeout: float, known_hosts_file: Path | None = None
) -> RestartOutcome:
    """Run the host's ``restart_command`` on it (locally for localhost), within ``timeout``.

    Never raises: a host without a restart command, an unreachable host and a command that
    fails or times out each give an outcome with ``ok=False`` and the reason in ``output``.
    """
    _check_timeout(timeout)
    if not host.restart_command:
        return RestartOutcome(
            ok=False, exit_code=None, output=f"host {host.name} has no restart_command"
        )
    # One stream, so the output reads in the order it was written.
    script = "exec </dev/null 2>&1\n" + host.restart_command
    try:
        ran = _run(host, script, (), timeout=timeout, known_hosts_file=known_hosts_file)
    except _Unreachable as exc:
        return RestartOutcome(ok=False, exit_code=None, output=exc.message)
    output = ran.stdout.strip()
    if ran.timed_out:
        output = f"{output}\nrestart command timed out after {format_duration(timeout)}".lstrip()
    return RestartOutcome(
        ok=ran.exit_code == 0 and not ran.timed_out,
        exit_code=None if ran.timed_out else ran.exit_code,
        output=_tail(output, MAX_RESTART_OUTPUT),
    )


def run_remote(
    host: HostSettings,
    argv_or_script: Sequence[str] | str,
    *,
    timeout: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    known_hosts_file: Path | None = None,
) -> RemoteResult:
    """Run a command on ``host`` (locally for localhost) and wait for it, at most ``timeout``.

    A sequence is an argv, run as is; a string is a shell script for ``sh``. ``cwd`` and
    ``env`` apply on the host; stdin is always /dev/null (agent CLIs wait for input otherwise).
    When the time is up the command gets TERM, then KILL ``KILL_AFTER`` seconds later, and the
    result has ``timed_out`` set. Raises ``TransientError`` when the host cannot be reached.
    """
    _check_timeout(timeout)
    if not isinstance(argv_or_script, str) and not argv_or_script:
        raise ValueError("run_remote needs a command: the argv is empty")
    lines = ["exec </dev/null"]
    if cwd is not None:
        lines.append(f"cd -- {shlex.quote(cwd)} || exit")
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        lines.append(f"export {name}={shlex.quote(value)}")
    if isinstance(argv_or_script, str):
        lines.append(argv_or_script)
        args: tuple[str, ...] = ()
    else:
        lines.append('exec "$@"')
        args = tuple(argv_or_script)
    try:
        ran = _run(host, "\n".join(lines), args, timeout=timeout, known_hosts_file=known_hosts_file)
    except _Unreachable as exc:
        raise TransientError(exc.message) from None
    return RemoteResult(
        exit_code=None if ran.timed_out else ran.exit_code,
        stdout=ran.stdout,
        stderr=ran.stderr,
        timed_out=ran.timed_out,
    )


# --- reading the health report -------------------------------------------------------------


def _health_from(ran: _Ran, *, host: HostSettings, command: str, timeout: float) -> HostHealth:
    report = _parse_report(ran.stdout)
    if ran.timed_out:
        # A hung df (a dead network mount) lands here; whatever was reported before counts.
        problems = [f"health check on {_target(host)} timed out after {format_duration(timeout)}"]
    elif "end" not in report:
        detail = (ran.stderr.strip() or ran.stdout.strip() or "no output").splitlines()[-1]
        problems = [f"health check on {_target(host)} failed (exit {ran.exit_code}): {detail}"]
    else:
        problems = []
    cli_present = bool(report.get("cli"))
    git_present = bool(report.get("git"))
    if "cli" in report and not cli_present:
        problems.append(f"{command} not found on PATH")
    if "git" in report and not git_present:
        problems.append("git not found on PATH")
    free_disk_mb = None
    checked = report.get("dir", host.workdir)
    if report.get("free_kb", "").isdigit():
        free_disk_mb = int(report["free_kb"]) // 1024
        if free_disk_mb < host.min_free_disk_mb:
            problems.append(
                f"only {free_disk_mb} MiB free in {checked} (minimum {host.min_free_disk_mb})"
            )
    elif "free_kb" in report:
        problems.append(f"free disk space in {checked} could not be read with df -Pk")
    return HostHealth(
        reachable=not ran.timed_out and "end" in report,
        cli_present=cli_present,
        git_present=git_present,
        free_disk_mb=free_disk_mb,
        problems=tuple(problems),
    )


def _parse_report(stdout: str) -> dict[str, str]:
    """The report's ``key=value`` lines; what a shell rc file printed before it is ignored."""
    lines = stdout.splitlines()
    if _REPORT_HEADER not in lines:
        return {}
    report: dict[str, str] = {}
    for line in lines[lines.index(_REPORT_HEADER) + 1 :]:
        key, _, value = line.partition("=")
        report[key] = value
    return report


# --- running a script, here or over ssh ----------------------------------------------------


# What a script run here or over ssh left behind.
_Ran = ScriptResult


class _Unreachable(Exception):
    """The ssh connection could not be made or broke; ``message`` says why, for people."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def _run(
    host: HostSettings,
    script: str,
    args: Sequence[str],
    *,
    timeout: float,
    known_hosts_file: Path | None,
) -> _Ran:
    """Run the POSIX sh ``script`` with positional ``args`` on the host, within ``timeout``."""
    if host.is_local:
        return run_script(script, args, timeout=timeout)
    return _run_over_ssh(
        host,
        script,
        args,
        timeout=timeout,
        known_hosts_file=known_hosts_file or host.known_hosts_file,
    )


def _run_over_ssh(
    host: HostSettings,
    script: str,
    args: Sequence[str],
    *,
    timeout: float,
    known_hosts_file: Path | None,
) -> _Ran:
    limit = f"{timeout:.3f}"
    remote = shlex.join(
        ["timeout", "-k", f"{KILL_AFTER:g}", limit, "sh", "-c", script, "sh", *args]
    )
    where = _target(host)
    if host.key_file is not None and not host.key_file.expanduser().is_file():
        raise _Unreachable(f"ssh to {where} failed: key file {host.key_file} does not exist")
    # Any exception from fabric or paramiko means the host could not be used; it is reported,
    # not raised, so that the registry counts it as a failed check (hence the BLE001s).
    try:
        connection = _connection(host, timeout=timeout, known_hosts_file=known_hosts_file)
    except Exception as exc:  # noqa: BLE001
        raise _Unreachable(f"ssh to {where} failed: {_describe(exc)}") from None
    with connection:
        try:
            connection.open()
        except Exception as exc:  # noqa: BLE001
            raise _Unreachable(f"ssh to {where} failed: {_describe(exc)}") from None
        try:
            result = connection.run(
                remote,
                hide=True,
                warn=True,
                pty=False,
                in_stream=False,
                encoding="utf-8",
                timeout=math.ceil(timeout + KILL_AFTER + BACKSTOP_GRACE),
            )
        except CommandTimedOut as exc:
            return _Ran(
                exit_code=None,
                stdout=str(exc.result.stdout),
                stderr=str(exc.result.stderr),
                timed_out=True,
            )
        except Exception as exc:  # noqa: BLE001
            raise _Unreachable(f"ssh to {where} broke off: {_describe(exc)}") from None
    exit_code = int(result.exited)
    return _Ran(
        exit_code=exit_code,
        stdout=str(result.stdout),
        stderr=str(result.stderr),
        timed_out=exit_code == TIMED_OUT_EXIT,
    )


def _connection(host: HostSettings, *, timeout: float, known_hosts_file: Path | None) -> Any:
    """A fabric Connection (not yet open) that refuses host keys it does not know."""
    connect_kwargs: dict[str, object] = {
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        "channel_timeout": timeout,
    }
    if host.key_file is not None:
        connect_kwargs["key_filename"] = str(host.key_file.expanduser())
    connection = fabric.Connection(
        host.address,
        user=host.user,
        port=host.port,
        # fabric truncates this to whole seconds, and 0 would mean "no timeout".
        connect_timeout=max(1, math.ceil(timeout)),
        connect_kwargs=connect_kwargs,
    )
    # fabric opens a Connection per ProxyJump hop from ~/.ssh/config, each accepting any key.
    hop = connection
    while isinstance(hop, fabric.Connection):
        hop.client.set_missing_host_key_policy(_RefuseUnknownHostKey())
        for path in _known_hosts_files(hop.ssh_config, known_hosts_file):
            if path.is_file():
                hop.client.load_system_host_keys(str(path))
        hop.connect_timeout = connection.connect_timeout
        hop = hop.gateway
    return connection


def _known_hosts_files(ssh_config: Mapping[str, Any], explicit: Path | None) -> list[Path]:
    """Where host keys are read from: ``explicit`` alone, else OpenSSH's usual files."""
    if explicit is not None:
        return [explicit]
    user = str(ssh_config.get("userknownhostsfile", "~/.ssh/known_hosts")).split()
    system = str(ssh_config.get("globalknownhostsfile", GLOBAL_KNOWN_HOSTS)).split()
    return [Path(name).expanduser() for name in (*user, *system)]


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]
    """The server's host key is in no known_hosts file."""


class _RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Like paramiko's RejectPolicy, with a message that says how to fix it."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHostKey(
            f"host key of {hostname} ({key.get_name()} {key.fingerprint}) is in no known_hosts "
            "file; check the fingerprint and add it (ssh-keyscan) to ~/.ssh/known_hosts"
        )


def _describe(exc: BaseException) -> str:
    """A one-line reason for a failed ssh connection, without paramiko's noise."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {getattr(e, "strerror", None) or str(e) for e in exc.errors.values()}
        return "; ".join(sorted(reasons))
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication refused ({exc})"
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key mismatch: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return describe_error(exc)


# --- small pieces --------------------------------------------------------------------------


def _target(host: HostSettings) -> str:
    if host.is_local:
        return "localhost"
    return host.address if host.port is None else f"{host.address}:{host.port}"


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")


def _tail(text: str, limit: int) -> str:
    """The end of ``text``, at most ``limit`` characters, marked when something was cut."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]
