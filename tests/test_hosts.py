"""Health checks, restarts and command runs on ssh hosts, against a real private sshd.

The ssh host is this machine through the ``sshd`` fixture, so files a remote command writes
are visible here. Localhost variants point at a closed port: they pass only without ssh.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from reconciler.errors import TransientError
from reconciler.run.hosts import check_host, cli_for, restart_host, run_remote
from reconciler.settings import HostSettings, load_settings

if TYPE_CHECKING:
    from tests.sshd_fixtures import SshServer


TIMEOUT = 10.0
ABSENT_CLI = "agent-fleet-absent-cli"
CLOSED_PORT = 1


def local_host(root: Path, **overrides: object) -> HostSettings:
    """A localhost host working in ``root``; its port is closed, so ssh would fail."""
    fields: dict[str, object] = {
        "name": "here",
        "address": "localhost",
        "port": CLOSED_PORT,
        "workdir": str(root),
        "min_free_disk_mb": 0,
    }
    return HostSettings.model_validate({**fields, **overrides})


def live_processes_with(argument: str) -> list[int]:
    """Pids of processes (any user) whose argv contains ``argument``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(int(entry.name))
    return found


# --- health checks over ssh ----------------------------------------------------------------


def test_a_host_with_the_cli_git_and_disk_is_healthy(sshd: SshServer) -> None:
    """Reachable, CLI and git on the PATH, disk above the floor: healthy, no problems."""
    sshd.install_cli("claude")
    health = check_host(
        sshd.host_settings(), command="claude", timeout=TIMEOUT, known_hosts_file=sshd.known_hosts
    )
    assert health.problems == ()
    assert health.healthy
    assert (health.reachable, health.cli_present, health.git_present) == (True, True, True)
    assert health.free_disk_mb is not None and health.free_disk_mb > 0


def test_a_missing_cli_is_reported_by_name(sshd: SshServer) -> None:
    """A host without the agent CLI is reachable but unhealthy, and says which CLI is missing."""
    health = check_host(
        sshd.host_settings(), command=ABSENT_CLI, timeout=TIMEOUT, known_hosts_file=sshd.known_hosts
    )
    assert health.problems == (f"{ABSENT_CLI} not found on PATH",)
    assert not health.healthy
    assert health.reachable and health.git_present and not health.cli_present


def test_a_stopped_sshd_is_unreachable_with_the_connection_error(sshd: SshServer) -> None:
    """A dead host is reported unreachable with ssh's reason, not raised."""
    sshd.install_cli("claude")
    with sshd.stopped():
        health = check_host(
            sshd.host_settings(),
            command="claude",
            timeout=TIMEOUT,
            known_hosts_file=sshd.known_hosts,
        )
    assert health.problems == (f"ssh to 127.0.0.1:{sshd.port} failed: Connection refused",)
    assert not health.reachable and not health.healthy
    assert health.free_disk_mb is None


def test_low_disk_is_reported_with_the_directory_and_the_minimum(sshd: SshServer) -> None:
    """Free disk below min_free_disk_mb makes the host unhealthy, with both numbers."""
    sshd.install_cli("claude")
    host = sshd.host_settings(min_free_disk_mb=10**9)
    health = check_host(host, command="claude", timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    assert health.free_disk_mb is not None
    assert health.problems == (
        f"only {health.free_disk_mb} MiB free in {sshd.workdir} (minimum 1000000000)",
    )


def test_a_check_that_hangs_times_out_and_keeps_what_it_learnt(sshd: SshServer) -> None:
    """A hanging df (a dead network mount) ends at the timeout; the CLI lookup still counts."""
    sshd.install_cli("claude")
    sshd.install_cli("df", "exec sleep 30\n")
    health = check_host(
        sshd.host_settings(), command="claude", timeout=0.3, known_hosts_file=sshd.known_hosts
    )
    assert health.problems == (f"health check on 127.0.0.1:{sshd.port} timed out after 0.3 s",)
    assert not health.reachable and health.cli_present


def test_an_unknown_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    """A server whose key is in no known_hosts file is not trusted."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    health = check_host(sshd.host_settings(), command="sh", timeout=TIMEOUT, known_hosts_file=empty)
    assert not health.reachable
    [problem] = health.problems
    assert problem.startswith(f"ssh to 127.0.0.1:{sshd.port} failed: host key of ")
    assert "is in no known_hosts file" in problem


def test_host_keys_come_from_the_users_known_hosts_by_default(
    sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without known_hosts_file, ~/.ssh/known_hosts is read, as ssh does."""
    monkeypatch.setenv("HOME", str(sshd.client_home))
    health = check_host(sshd.host_settings(), command="sh", timeout=TIMEOUT)
    assert health.healthy, health.problems


def test_a_key_the_server_does_not_accept_is_an_authentication_problem(
    sshd: SshServer, tmp_path: Path
) -> None:
    """Logging in with a key that is not authorized is reported as refused authentication."""
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    health = check_host(
        sshd.host_settings(key_file=other),
        command="sh",
        timeout=TIMEOUT,
        known_hosts_file=sshd.known_hosts,
    )
    assert health.problems == (
        f"ssh to 127.0.0.1:{sshd.port} failed: authentication refused (Authentication failed.)",
    )


def test_a_jump_host_from_ssh_config_must_have_a_known_key_too(
    sshd: SshServer, second_sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ProxyJump hop is checked against known_hosts like the host itself, then used."""
    jump = second_sshd
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        f"Host fleet-target\n  HostName {sshd.host}\n  ProxyJump fleet-jump\n"
        f"Host fleet-jump\n  HostName {jump.host}\n  Port {jump.port}\n"
        f"  User {jump.user}\n  IdentityFile {jump.client_key}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    host = sshd.host_settings(address="fleet-target")
    refused = check_host(host, command="sh", timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    both = tmp_path / "both_known_hosts"
    both.write_text(sshd.known_hosts.read_text() + jump.known_hosts.read_text())
    through = check_host(host, command="sh", timeout=TIMEOUT, known_hosts_file=both)
    [problem] = refused.problems
    assert problem.startswith(
        f"ssh to fleet-target:{sshd.port} failed: host key of [127.0.0.1]:{jump.port} "
    )
    assert through.healthy, through.problems


def test_a_host_without_a_port_takes_the_one_its_ssh_config_entry_gives(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``port`` unset: HostName, Port, User and IdentityFile all come from ~/.ssh/config, as
    for ssh; a host that sets ``port`` still wins over the entry (here a wrong one: refused)."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        f"Host gpu-02.internal\n  HostName {sshd.host}\n  Port {sshd.port}\n"
        f"  User {sshd.user}\n  IdentityFile {sshd.client_key}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    host = HostSettings(name="gpu-02", address="gpu-02.internal", workdir=str(sshd.workdir))
    assert host.port is None and host.user is None and host.key_file is None
    health = check_host(host, command="sh", timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    assert health.healthy, health.problems
    ran = run_remote(host, "echo $PWD", timeout=TIMEOUT, cwd=str(sshd.workdir),
                     known_hosts_file=sshd.known_hosts)  # fmt: skip
    assert ran.stdout.strip() == str(sshd.workdir)
    pinned = host.model_copy(update={"port": _closed_port()})
    refused = check_host(pinned, command="sh", timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    assert not refused.reachable
    assert refused.problems[0].startswith(f"ssh to gpu-02.internal:{pinned.port} failed")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_missing_key_file_is_reported(sshd: SshServer, tmp_path: Path) -> None:
    """A key_file that does not exist is named in the problem."""
    missing = tmp_path / "no-such-key"
    health = check_host(
        sshd.host_settings(key_file=missing),
        command="sh",
        timeout=TIMEOUT,
        known_hosts_file=sshd.known_hosts,
    )
    assert health.problems == (
        f"ssh to 127.0.0.1:{sshd.port} failed: key file {missing} does not exist",
    )


# --- restarts ------------------------------------------------------------------------------


def test_restart_runs_the_command_once_and_returns_its_outcome(
    sshd: SshServer, tmp_path: Path
) -> None:
    """The restart command runs on the host exactly once; its output comes back."""
    marker = tmp_path / "restarted"
    host = sshd.host_settings(restart_command=f"echo restarted >> {marker}; echo agent is back")
    outcome = restart_host(host, timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    assert outcome.ok and outcome.exit_code == 0
    assert outcome.output == "agent is back"
    assert marker.read_text() == "restarted\n"


def test_restart_of_an_unreachable_host_reports_the_connection_error(sshd: SshServer) -> None:
    """A restart that cannot connect is an outcome with ssh's reason, not an exception."""
    host = sshd.host_settings(restart_command="true")
    with sshd.stopped():
        outcome = restart_host(host, timeout=TIMEOUT, known_hosts_file=sshd.known_hosts)
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.output == f"ssh to 127.0.0.1:{sshd.port} failed: Connection refused"


def test_a_host_without_restart_command_gets_a_non_ok_outcome(tmp_path: Path) -> None:
    """Asking to restart a host that has no restart_command says so."""
    outcome = restart_host(local_host(tmp_path), timeout=TIMEOUT)
    assert outcome == outcome.__class__(
        ok=False, exit_code=None, output="host here has no restart_command"
    )


def test_restart_output_keeps_only_its_end(tmp_path: Path) -> None:
    """Long output is cut from the front, so the last lines (the error) survive."""
    outcome = restart_host(local_host(tmp_path, restart_command="seq 1 5000"), timeout=TIMEOUT)
    assert outcome.ok
    assert len(outcome.output) == 4000
    assert outcome.output.startswith("…") and outcome.output.endswith("\n4999\n5000")


def test_a_restart_that_hangs_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    """A restart command that does not finish is stopped and reported as timed out."""
    outcome = restart_host(
        local_host(tmp_path, restart_command="echo trying; exec sleep 30"), timeout=0.3
    )
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.output == "trying\nrestart command timed out after 0.3 s"


# --- localhost -----------------------------------------------------------------------------


def test_localhost_is_checked_without_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A localhost host is checked with a local shell; its port is never dialled."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text("#!/bin/sh\n")
    (bin_dir / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    health = check_host(local_host(tmp_path), command="claude", timeout=TIMEOUT)
    assert health.problems == ()
    assert health.reachable and health.cli_present and health.git_present


def test_localhost_reports_a_missing_cli_and_low_disk(tmp_path: Path) -> None:
    """The local check finds the same problems as the remote one."""
    host = local_host(tmp_path, min_free_disk_mb=10**9)
    health = check_host(host, command=ABSENT_CLI, timeout=TIMEOUT)
    assert health.reachable and health.free_disk_mb is not None
    assert health.problems == (
        f"{ABSENT_CLI} not found on PATH",
        f"only {health.free_disk_mb} MiB free in {tmp_path} (minimum 1000000000)",
    )


def test_a_cli_given_as_an_absolute_path_must_be_executable(tmp_path: Path) -> None:
    """An absolute path counts only when it is an executable file, not any file."""
    plain = tmp_path / "not-executable"
    plain.write_text("data")
    host = local_host(tmp_path)
    assert check_host(host, command="/bin/sh", timeout=TIMEOUT).cli_present
    refused = check_host(host, command=str(plain), timeout=TIMEOUT)
    assert refused.problems == (f"{plain} not found on PATH",)


def test_a_workdir_not_yet_created_is_measured_at_its_nearest_existing_parent(
    tmp_path: Path,
) -> None:
    """The workdir may not exist before the first task; its parent's disk is what counts."""
    host = local_host(tmp_path, workdir=str(tmp_path / "not" / "yet"), min_free_disk_mb=10**9)
    health = check_host(host, command="sh", timeout=TIMEOUT)
    assert health.reachable and health.free_disk_mb is not None
    assert health.problems == (
        f"only {health.free_disk_mb} MiB free in {tmp_path} (minimum 1000000000)",
    )


def test_a_workdir_under_home_is_measured_in_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workdir written "~/..." is the host user's home, as ssh users expect."""
    monkeypatch.setenv("HOME", str(tmp_path))
    host = local_host(tmp_path, workdir="~/agents", min_free_disk_mb=10**9)
    health = check_host(host, command="sh", timeout=TIMEOUT)
    assert health.problems[-1].endswith(f"free in {tmp_path} (minimum 1000000000)")


def test_a_failing_restart_reports_its_exit_code_and_both_streams(tmp_path: Path) -> None:
    """A restart that fails is not ok; its exit code and stdout+stderr in order are kept."""
    host = local_host(tmp_path, restart_command="echo stopping; echo no such unit >&2; exit 3")
    outcome = restart_host(host, timeout=TIMEOUT)
    assert (outcome.ok, outcome.exit_code) == (False, 3)
    assert outcome.output == "stopping\nno such unit"


def test_localhost_restart_runs_locally(tmp_path: Path) -> None:
    """The restart command of a localhost host runs here, once."""
    marker = tmp_path / "restarted"
    outcome = restart_host(
        local_host(tmp_path, restart_command=f"echo x >> {marker}"), timeout=TIMEOUT
    )
    assert outcome.ok
    assert marker.read_text() == "x\n"


# --- running commands ----------------------------------------------------------------------


def test_run_remote_passes_argv_unchanged_with_cwd_and_env(sshd: SshServer) -> None:
    """Arguments arrive as given (no shell on the way); cwd and env apply on the host."""
    result = run_remote(
        sshd.host_settings(),
        ["sh", "-c", 'printf "%s|" "$@" "$PWD" "$GREETING"; echo oops >&2; exit 7', "sh",
         "a b", "$HOME", "it's"],
        timeout=TIMEOUT,
        cwd=str(sshd.workdir),
        env={"GREETING": "hello there"},
        known_hosts_file=sshd.known_hosts,
    )  # fmt: skip
    assert (result.exit_code, result.timed_out) == (7, False)
    assert result.stdout == f"a b|$HOME|it's|{sshd.workdir}|hello there|"
    assert result.stderr == "oops\n"


def test_run_remote_gives_the_command_an_empty_stdin(sshd: SshServer) -> None:
    """stdin is /dev/null, so a command reading it ends at once instead of hanging."""
    result = run_remote(
        sshd.host_settings(), "cat; echo read-all", timeout=TIMEOUT,
        known_hosts_file=sshd.known_hosts,
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (0, "read-all\n")


def test_run_remote_stops_the_remote_process_at_the_timeout(sshd: SshServer) -> None:
    """At the timeout the remote command is killed, not left running behind the connection."""
    duration = "61.4321"
    result = run_remote(
        sshd.host_settings(), ["sleep", duration], timeout=0.3, known_hosts_file=sshd.known_hosts
    )
    assert (result.timed_out, result.exit_code) == (True, None)
    assert live_processes_with(duration) == []


def test_run_remote_on_localhost_stops_the_command_at_the_timeout(tmp_path: Path) -> None:
    """The local variant kills its command at the timeout too."""
    duration = "62.4321"
    result = run_remote(local_host(tmp_path), ["sleep", duration], timeout=0.3)
    assert (result.timed_out, result.exit_code) == (True, None)
    assert live_processes_with(duration) == []


def test_run_remote_on_an_unreachable_host_raises_a_transient_error(sshd: SshServer) -> None:
    """A dispatch that cannot connect is worth retrying later."""
    with sshd.stopped(), pytest.raises(TransientError, match="Connection refused"):
        run_remote(
            sshd.host_settings(), ["true"], timeout=TIMEOUT, known_hosts_file=sshd.known_hosts
        )


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    """An empty argv, a bad variable name or a non-positive timeout are refused."""
    host = local_host(tmp_path)
    with pytest.raises(ValueError, match="argv is empty"):
        run_remote(host, [], timeout=TIMEOUT)
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        run_remote(host, ["true"], timeout=TIMEOUT, env={"A-B": "x"})
    with pytest.raises(ValueError, match="timeout must be a positive"):
        check_host(host, command="claude", timeout=0)


# --- which CLI -----------------------------------------------------------------------------


def test_cli_for_is_the_first_word_of_the_hosts_adapter_command() -> None:
    """The CLI checked on a host is the executable its adapter runs."""
    env = {
        "AGENT_FLEET_FORGEJO__URL": "https://f.example.org",
        "AGENT_FLEET_FORGEJO__TOKEN": "t",
        "AGENT_FLEET_FORGEJO__BOT_LOGIN": "bot",
        "AGENT_FLEET_HOSTS": '[{"name": "a", "address": "a.example.org", "workdir": "/w",'
        ' "adapter": "codex"}, {"name": "b", "address": "b.example.org", "workdir": "/w"}]',
    }
    settings = load_settings(None, env=env)
    assert [cli_for(settings, host) for host in settings.hosts] == ["codex", "claude"]
