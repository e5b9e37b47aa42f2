"""`agent-fleet run` as a real process: clean stop, config reload, one daemon per store.

Each test starts the daemon as a subprocess against an in-memory Forgejo on loopback and reads
its JSON log lines; waits are bounded and event-driven (a line arriving), never sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO


def config_text(forge: ForgejoSandbox, store: Path, *, resync_interval: int = 3600) -> str:
    return f"""
[forgejo]
url = "{forge.url}"
token = "{forge.admin_token}"
repos = ["{DEMO_REPO}"]
bot_login = "fleet-admin"

[webhook]
port = 0
secret = "daemon-test-secret"

[loop]
workers = 2
resync_interval = {resync_interval}
shutdown_grace = 10

[store]
path = "{store}"
"""


@dataclass
class DaemonProcess:
    process: subprocess.Popen[str]
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                record = {"event": "raw", "text": raw.rstrip()}
            self.lines.put(record)

    def wait_for(self, event: str, *, timeout: float = 20.0) -> dict[str, Any]:
        """The first log record named ``event`` (already seen or arriving within ``timeout``)."""
        for record in self.seen:
            if record.get("event") == event:
                return record
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event!r} in the daemon's log: {self.seen[-10:]}")
            try:
                record = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(record)
            if record.get("event") == event:
                return record


def start_daemon(config: Path) -> DaemonProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FLEET_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "run", "--config", str(config), "--log-json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    daemon = DaemonProcess(process)
    threading.Thread(target=daemon.read, daemon=True).start()
    return daemon


@pytest.fixture
def daemon_config(served_forge: ForgejoSandbox, tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(config_text(served_forge, tmp_path / "state"))
    return path


@pytest.fixture
def daemon(daemon_config: Path) -> Iterator[DaemonProcess]:
    running = start_daemon(daemon_config)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=10)


def test_sigterm_stops_the_daemon_cleanly(daemon: DaemonProcess) -> None:
    """SIGTERM: in-flight work finishes, the store is closed, exit code 0."""
    started = daemon.wait_for("daemon.started")
    health = httpx.get(f"{started['url']}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0
    assert daemon.wait_for("daemon.stopped")["drained"] is True


def test_an_invalid_config_edit_leaves_the_daemon_on_the_old_config(
    daemon: DaemonProcess, daemon_config: Path, served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """A broken edit is refused with its field path; a valid one afterwards is applied."""
    started = daemon.wait_for("daemon.started")
    daemon.wait_for("config.watching")
    daemon_config.write_text(daemon_config.read_text().replace("workers = 2", "workers = -1"))
    rejected = daemon.wait_for("config.rejected")
    assert any(p.startswith("loop.workers") for p in rejected["problems"])
    assert httpx.get(f"{started['url']}/healthz", timeout=5).status_code == 200
    daemon_config.write_text(config_text(served_forge, tmp_path / "state", resync_interval=1800))
    daemon.wait_for("config.reloaded")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0


def test_a_second_daemon_on_the_same_store_refuses_to_start(
    daemon: DaemonProcess, daemon_config: Path
) -> None:
    """The store's lock keeps two daemons from reconciling the same state."""
    daemon.wait_for("daemon.started")
    second = subprocess.run(  # noqa: PLW1510 -- the exit code is the assertion
        [sys.executable, "-m", "webhook", "run", "--config", str(daemon_config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 3
    assert "another agent-fleet process" in second.stderr
    assert daemon.process.poll() is None, "the first daemon must keep running"


def test_readyz_reports_store_forgejo_resync_repos_and_loop(daemon: DaemonProcess) -> None:
    """/readyz is 200 once a resync completed, Forgejo answers, every watched repository is set
    up and every reconcile worker is alive; /metrics is Prometheus text."""
    started = daemon.wait_for("daemon.started")
    daemon.wait_for("resync.full")
    ready = httpx.get(f"{started['url']}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"store", "forgejo", "resync", "repos", "loop"}
    metrics = httpx.get(f"{started['url']}/metrics", timeout=5).text
    assert "agent_fleet_queue_depth" in metrics
    assert 'agent_fleet_forgejo_api_calls_total{operation="list_issues"' in metrics
    assert "_created" not in metrics, "prometheus_client's *_created series are dropped"
