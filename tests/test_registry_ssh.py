"""The registry controller health-checking config-declared hosts over a real sshd: healthy
hosts are online, a missing CLI is reported, a dead sshd goes offline after N failed checks
and its restart command is attempted exactly once per failure streak."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from controllers.registry import RegistryController
from reconciler.engine.reconcile import ActContext, Actuator
from reconciler.fleet.agents import Fleet
from reconciler.keys import agent_key
from reconciler.models import AgentStatus
from reconciler.run.hosts import RestartOutcome, restart_host
from reconciler.run.probes import HostProbes
from reconciler.settings import ForgejoSettings, HostSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import ManualClock


@dataclass
class CountingRestart:
    calls: list[str] = field(default_factory=list)

    def __call__(self, host: HostSettings, *, timeout: float, **kw: Any) -> RestartOutcome:
        self.calls.append(host.name)
        return restart_host(host, timeout=timeout, **kw)


@dataclass
class Registry:
    controller: RegistryController
    store: Store
    clock: ManualClock
    restarts: CountingRestart
    probes: HostProbes

    def check(self, name: str, *, after: float = 0.0) -> None:
        """The due health checks, in this thread, then the registry's pass."""
        self.clock.advance(after)
        self.probes.run_due()
        self.controller.reconcile(agent_key(name))

    def status(self, name: str) -> tuple[AgentStatus, str]:
        agent = self.store.get_agent(name)
        return agent.status, agent.status_reason


def settings_for(*hosts: HostSettings) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="http://forgejo.invalid", token=SecretStr("t"), bot_login="bot"
        ),
        hosts=hosts,
    )


@pytest.fixture
def registry_for(tmp_path: Path, forge_clock: ManualClock) -> Iterator[Any]:
    opened: list[Store] = []

    def make(*hosts: HostSettings) -> Registry:
        settings = settings_for(*hosts)
        store = Store.open(tmp_path / f"state-{len(opened)}")
        opened.append(store)
        fleet = Fleet(store, settings=lambda: settings, clock=forge_clock)
        actuator = Actuator(ActContext(gateway=None, store=store))  # type: ignore[arg-type]
        restarts = CountingRestart()
        probes = HostProbes(settings=lambda: settings, clock=forge_clock, restart=restarts)
        controller = RegistryController(
            store, fleet, actuator, settings=lambda: settings, clock=forge_clock, probes=probes
        )
        return Registry(controller, store, forge_clock, restarts, probes)

    yield make
    for store in opened:
        store.close()


def test_a_healthy_host_is_online(sshd: Any, registry_for: Any) -> None:
    """The CLI and git are there, the disk has room: the host's agent is online."""
    sshd.install_cli("claude")
    host = sshd.host_settings(
        name="box-1", adapter="claude-code", known_hosts_file=sshd.known_hosts
    )
    registry = registry_for(host)
    registry.check("box-1")
    assert registry.status("box-1")[0] is AgentStatus.ONLINE


def test_a_host_whose_cli_is_missing_says_so(sshd: Any, registry_for: Any) -> None:
    """No codex on the host's PATH: never online, and the reason names the missing CLI."""
    host = sshd.host_settings(
        name="box-2", adapter="codex", known_hosts_file=sshd.known_hosts, failures_before_offline=1
    )
    registry = registry_for(host)
    registry.check("box-2")
    status, reason = registry.status("box-2")
    assert status is AgentStatus.OFFLINE
    assert "codex not found" in reason


def test_a_stopped_sshd_goes_offline_after_n_failures_and_is_restarted_once(
    sshd: Any, registry_for: Any, tmp_path: Path
) -> None:
    """Three failed checks → offline; the restart command is attempted exactly once in the
    streak however many checks fail after it."""
    sshd.install_cli("claude")
    marker = tmp_path / "restarted"
    host = sshd.host_settings(
        name="box-3",
        adapter="claude-code",
        known_hosts_file=sshd.known_hosts,
        failures_before_offline=3,
        health_interval=60,
        restart_command=f"touch {marker}",
    )
    registry = registry_for(host)
    registry.check("box-3")
    assert registry.status("box-3")[0] is AgentStatus.ONLINE
    with sshd.stopped():
        registry.check("box-3", after=60)
        registry.check("box-3", after=60)
        assert registry.status("box-3")[0] is AgentStatus.ONLINE, "offline before N failures"
        registry.check("box-3", after=60)
        status, reason = registry.status("box-3")
        assert status is AgentStatus.OFFLINE and "Connection refused" in reason
        for _ in range(3):
            registry.check("box-3", after=60)
    assert registry.restarts.calls == ["box-3"]
    # The restart went over ssh to a dead sshd: attempted, and reported as failed.
    assert not marker.exists()
    registry.check("box-3", after=60)
    assert registry.status("box-3")[0] is AgentStatus.ONLINE, "back once sshd answers again"
