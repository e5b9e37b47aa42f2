"""Slow I/O stays out of reconciles: hosts whose ssh health check hangs do not delay
assigning a task to another, healthy host. The daemon's assembly (loop with its workers per
controller, host probes on their own threads) against the in-memory Forgejo."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from reconciler.keys import issue_key
from reconciler.models import TaskState, task_id_for
from reconciler.run.hosts import HostHealth
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ForgejoSettings,
    HostSettings,
    LoopSettings,
    Settings,
    StoreSettings,
)
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO
from webhook.daemon import build, prepare_repos

HUNG = ("stuck-1", "stuck-2", "stuck-3", "stuck-4", "stuck-5")


def wait_until(what: str, check: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_hosts_whose_ssh_check_hangs_do_not_delay_assigning_a_task_to_another(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Five hosts' checks hang (more than the registry has workers); a healthy host still comes
    online and a new task is assigned to it while those checks are still hanging."""
    release = threading.Event()
    hanging: set[str] = set()

    def check(host: HostSettings, *, command: str, timeout: float) -> HostHealth:
        if host.name in HUNG:
            hanging.add(host.name)
            release.wait(60)
        return HostHealth(True, True, True, 10_000, ())

    hosts = tuple(
        HostSettings(
            name=name,
            address="localhost",
            adapter="sleeper",
            workdir=str(tmp_path / name),
            roles=("developer",) if name == "good-1" else ("other",),
        )
        for name in (*HUNG, "good-1")
    )
    settings = Settings(
        forgejo=ForgejoSettings(
            url=served_forge.url,
            token=SecretStr(served_forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
        ),
        hosts=hosts,
        adapters={"sleeper": AdapterSettings(command=("sleep", "30"), parser="raw")},
        loop=LoopSettings(workers=2, resync_interval=3600),
        store=StoreSettings(path=tmp_path / "state"),
    )
    store = Store.open(tmp_path / "state")
    assembly = build(settings, store=store, host_check=check)
    try:
        prepare_repos(assembly)
        assembly.loop.start()
        assembly.probes.start()
        for host in hosts:
            assembly.enqueue(issue_key("", 0)._replace(controller="registry", id=host.name))
        wait_until("every hung check to be in flight", lambda: hanging == set(HUNG))
        wait_until(
            "the healthy host online",
            lambda: (a := store.find_agent("good-1")) is not None and a.status == "online",
        )
        number = served_forge.create_issue(
            DEMO_REPO, "Work for good-1", labels=["fleet/task", "agent/developer"]
        )
        assembly.enqueue(issue_key(DEMO_REPO, number))
        tid = task_id_for(DEMO_REPO, number)
        wait_until(
            "the task assigned to the healthy host",
            lambda: (t := store.find_task(tid)) is not None and t.agent_id == "good-1",
        )
        assert store.get_task(tid).state in (TaskState.ASSIGNED, TaskState.RUNNING)
        assert all(assembly.probes.in_flight(name) for name in HUNG), "checks ended early"
    finally:
        release.set()
        assembly.probes.stop()
        assembly.loop.stop(grace=10)
        for close in assembly.closers:
            close()
        store.close()
