"""A private OpenSSH server on loopback for tests of ssh hosts; a pytest plugin module.

Registered in ``tests/conftest.py``'s ``pytest_plugins``. One ``/usr/sbin/sshd -D -e`` runs
per test session, bound to 127.0.0.1 on a free port, with its own host key, an authorized
client key and its log in a file. The ``sshd`` fixture hands each test that server running
(a test may ``stop()`` it to play a dead host; the next test gets it started again);
``second_sshd`` is one more, with keys of its own, for the length of one test.

The remote PATH: sshd's ``SetEnv`` puts ``bin_dir`` before the system directories of every
session, so a test makes an agent CLI "installed" on the host with ``install_cli("claude")``
(a fake executable, removed after the test). Host keys: ``known_hosts`` holds the server's
key (pass it as ``known_hosts_file=``), and ``client_home/.ssh/known_hosts`` the same, for
tests that point ``HOME`` at ``client_home`` to exercise the default lookup.

sshd comes from Debian's openssh-server package, which ``bash .ci/test`` installs; when it
is missing the tests fail with that message rather than skip.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reconciler.settings import HostSettings

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
ADDRESS = "127.0.0.1"
READY_WITHIN = 10.0
STOP_WITHIN = 5.0


class SshServer:
    """One private sshd: where it listens, how to log in, and start/stop to play a dead host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = ADDRESS
        self.port = _free_port()
        self.user = getpass.getuser()
        self.client_key = root / "client_key"
        self.known_hosts = root / "known_hosts"
        self.client_home = root / "home"
        self.bin_dir = root / "bin"
        self.workdir = root / "work"
        self.log_file = root / "sshd.log"
        self._config = root / "sshd_config"
        self._process: subprocess.Popen[bytes] | None = None
        self._prepare()

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.root / "host_key"
        for key in (host_key, self.client_key):
            subprocess.run(
                [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        authorized = self.root / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        key_type, key_data = host_key.with_suffix(".pub").read_text().split()[:2]
        # A non-standard port is written "[address]:port" in known_hosts, as OpenSSH does.
        entry = f"[{self.host}]:{self.port} {key_type} {key_data}\n"
        self.known_hosts.write_text(entry)
        (self.client_home / ".ssh").mkdir(parents=True)
        (self.client_home / ".ssh" / "known_hosts").write_text(entry)
        self.bin_dir.mkdir()
        self.workdir.mkdir()
        self._config.write_text(
            f"""\
ListenAddress {self.host}
Port {self.port}
HostKey {host_key}
PidFile {self.root / "sshd.pid"}
AuthorizedKeysFile {authorized}
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
SetEnv PATH={self.bin_dir}:/usr/local/bin:/usr/bin:/bin
"""
        )
        if os.geteuid() == 0:
            # sshd running as root insists on its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start sshd and return once it answers with its SSH-2.0 banner."""
        if self.running:
            return
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self._config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready(self._process)

    def stop(self) -> None:
        """Stop sshd: connections to its port are refused until ``start()``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_WITHIN)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """sshd is down inside the block and up again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def install_cli(self, name: str, script: str = 'echo "$0 $*"\n') -> Path:
        """A fake executable ``name`` on the remote PATH (removed after the test)."""
        path = self.bin_dir / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        return path

    def host_settings(self, **overrides: Any) -> HostSettings:
        """A ``HostSettings`` that logs in to this server with the client key."""
        fields: dict[str, Any] = {
            "name": "ssh-test",
            "address": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": self.client_key,
            "workdir": str(self.workdir),
            "min_free_disk_mb": 0,
        }
        return HostSettings(**{**fields, **overrides})

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if _answers_ssh(self.host, self.port):
                return
            try:
                # Paces the polling and notices an sshd that exited (bad config, port taken).
                process.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"sshd exited with {process.returncode}; its log:\n{self.log()}")
        self.stop()
        pytest.fail(f"sshd did not answer on port {self.port} in {READY_WITHIN} s:\n{self.log()}")


def _answers_ssh(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as probe:
            return probe.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((ADDRESS, 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """The session's sshd; tests use ``sshd``, which makes sure it is running."""
    if not SSHD.exists() or shutil.which(SSH_KEYGEN) is None:
        pytest.fail(
            f"{SSHD} or {SSH_KEYGEN} is missing: install Debian's openssh-server package "
            "(bash .ci/test does: apt-get install -y openssh-server)"
        )
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd(sshd_server: SshServer) -> Iterator[SshServer]:
    """A running private sshd; fake CLIs a test installed are gone after it."""
    sshd_server.start()
    yield sshd_server
    for path in sshd_server.bin_dir.iterdir():
        path.unlink()


@pytest.fixture
def second_sshd(sshd_server: SshServer, tmp_path: Path) -> Iterator[SshServer]:
    """Another private sshd with keys of its own (a jump host, a second machine)."""
    server = SshServer(tmp_path / "second-sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()
