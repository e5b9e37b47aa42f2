"""The fleet's MCP tools in runs of the ssh executor: the real ``claude`` CLI, run on a host
over a real sshd, starts ``agent-fleet mcp`` there with the run's task token and reaches the
daemon at ``api.public_url``; without ``public_url`` the run gets no fleet tools."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from reconciler.fleet.agents import Fleet
from reconciler.fleet.knowledge import KnowledgeBook, pending_notes
from reconciler.fleet.queue import PullQueue
from reconciler.fleet.tasktokens import TaskTokens
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key
from reconciler.models import AgentId, RepoName, Task, TaskState, branch_for, task_id_for
from reconciler.run.adapters import FleetTools, claude_mcp_config_by_reference
from reconciler.run.ssh import HostExecutor
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ApiSettings,
    ForgejoSettings,
    Settings,
    TimeoutsSettings,
)
from reconciler.store import Store
from tests.modelapi import ModelApiStandIn, Script
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from tests.test_agent_clis import (  # noqa: F401  (fixture: agent_clis)
    CLAUDE_ADAPTER,
    _with_binary,
    agent_clis,
)
from webhook.app import make_app
from webhook.mcp_api import install_mcp_api
from webhook.server import HttpServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Rig:
    forge: ForgejoSandbox
    store: Store
    executor: HostExecutor
    server: HttpServer
    clock: ManualClock

    def task(self, number: int, *, agent: str, title: str) -> Task:
        tid = task_id_for(DEMO_REPO, number)
        task = Task(
            id=tid,
            repo=RepoName(DEMO_REPO),
            issue_number=number,
            title=title,
            state=TaskState.ASSIGNED,
            agent_id=AgentId(agent),
            lease_generation=1,
            attempt=1,
            branch=branch_for(tid, title),
            created_at=self.clock(),
            updated_at=self.clock(),
            deadline_at=self.clock() + timedelta(minutes=10),
        )
        self.store.put_task(task)
        return task


def _rig(
    forge: ForgejoSandbox,
    clock: ManualClock,
    tmp_path: Path,
    sshd: Any,
    adapter: AdapterSettings,
    *,
    public: bool,
) -> Rig:
    tokens = TaskTokens(b"ssh-test-secret")
    store = Store.open(tmp_path / "state")
    enqueued: list[Key] = []
    host = sshd.host_settings(
        name="box-1",
        adapter="claude-code",
        workdir=str(tmp_path / "remote"),
        known_hosts_file=sshd.known_hosts,
        # A checkout's agent-fleet, as a host without the package installed would be given.
        mcp_command=("env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "webhook", "mcp"),
    )
    holder: dict[str, Settings] = {}
    fleet = Fleet(store, settings=lambda: holder["s"], clock=clock, enqueue=enqueued.append)
    app = make_app()
    install_mcp_api(
        app,
        fleet=fleet,
        tokens=tokens,
        max_body_bytes=64 * 1024,
        knowledge=KnowledgeBook(store, settings=lambda: holder["s"], clock=clock),
    )
    server = HttpServer(app, host="127.0.0.1", port=0)
    server.start()
    holder["s"] = Settings(
        forgejo=ForgejoSettings(
            url=forge.url,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
        ),
        api=ApiSettings(public_url=server.url if public else None),
        hosts=(host,),
        adapters={"claude-code": adapter},
        timeouts=TimeoutsSettings(dispatch=60),
    )
    reports = PullQueue(
        store, fleet=fleet, settings=lambda: holder["s"], clock=clock, enqueue=enqueued.append
    )
    executor = HostExecutor(
        store=store,
        reports=reports,
        gateway=ForgejoGateway(forge.url, forge.admin_token),
        settings=lambda: holder["s"],
        clock=clock,
        enqueue=enqueued.append,
        log_dir=tmp_path / "logs",
        prompt_for=lambda task: f"Task #{task.issue_number}: {task.title}",
        tokens=tokens,
    )
    return Rig(forge=forge, store=store, executor=executor, server=server, clock=clock)


@pytest.fixture
def claude_on_host(
    agent_clis: dict[str, str],  # noqa: F811  (the fixture imported above)
    model_api: ModelApiStandIn,
    tmp_path: Path,
) -> tuple[AdapterSettings, str, str]:
    """The real claude as the host's adapter, pointed at the model-API stand-in scripted to
    share a note; (adapter, base URL, the note)."""
    note = "over ssh the fleet tools start on the host"
    base = model_api.base_url(
        Script.mcp_call("share", {"topic": "ssh-runs", "note": note}, then="Shared.")
    )
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    env = {**adapter.env, **model_api.claude_env(base, home=tmp_path / "home")}
    return adapter.model_copy(update={"env": env}), base, note


def _run(rig: Rig, title: str) -> Task:
    number = rig.forge.create_issue(DEMO_REPO, title)
    task = rig.task(number, agent="box-1", title=title)
    rig.executor.dispatch(task.id, AgentId("box-1"), lease_generation=1)
    assert rig.executor.wait(task.id, timeout=120)
    return task


def _close(rig: Rig) -> None:
    rig.executor.shutdown(timeout=10)
    rig.server.stop()
    rig.store.close()


def test_claude_on_an_ssh_host_shares_a_note_through_the_fleet_tools(
    served_forge: ForgejoSandbox,
    forge_clock: ManualClock,
    tmp_path: Path,
    sshd: object,
    claude_on_host: tuple[AdapterSettings, str, str],
    model_api: ModelApiStandIn,
) -> None:
    """With api.public_url set, the run's claude (over ssh) is offered mcp__fleet__share, its
    call reaches the daemon under the run's token, and the note is queued for the task."""
    adapter, base, note = claude_on_host
    rig = _rig(served_forge, forge_clock, tmp_path, sshd, adapter, public=True)
    try:
        task = _run(rig, "Share over ssh")
        requests = model_api.requests(base)
        offered = {t["name"] for t in requests[0].body.get("tools", [])}
        assert "mcp__fleet__share" in offered, (offered, rig.store.events_for(task.id)[-1])
        [(_, queued)] = pending_notes(rig.store, DEMO_REPO)
        assert (queued.text, queued.task_id, queued.agent_id) == (note, task.id, "box-1")
        assert any("shared on ssh-runs" in json.dumps(r.body) for r in requests[1:])
    finally:
        _close(rig)


def test_without_a_public_url_an_ssh_run_gets_no_fleet_tools(
    served_forge: ForgejoSandbox,
    forge_clock: ManualClock,
    tmp_path: Path,
    sshd: object,
    claude_on_host: tuple[AdapterSettings, str, str],
    model_api: ModelApiStandIn,
) -> None:
    """The host cannot reach the daemon unless told where: no MCP server, no token."""
    adapter, base, _ = claude_on_host
    rig = _rig(served_forge, forge_clock, tmp_path, sshd, adapter, public=False)
    try:
        _run(rig, "No tools over ssh")
        offered = {t["name"] for t in model_api.requests(base)[0].body.get("tools", [])}
        assert not any(name.startswith("mcp__fleet__") for name in offered)
        assert pending_notes(rig.store, DEMO_REPO) == []
    finally:
        _close(rig)


def test_the_inline_claude_configuration_names_the_variables_and_holds_no_token() -> None:
    """The ssh run's --mcp-config JSON is on the host's command line: it carries ${VAR}
    references, which Claude Code expands from its environment, never the token."""
    tools = FleetTools(server="http://fleet:8080", token="aft1.t.1.secret", command=("af", "mcp"))
    config = claude_mcp_config_by_reference(tools)
    assert "secret" not in config and "fleet:8080" not in config
    assert json.loads(config)["mcpServers"]["fleet"]["env"] == {
        "AGENT_FLEET_SERVER": "${AGENT_FLEET_SERVER}",
        "AGENT_FLEET_TASK_TOKEN": "${AGENT_FLEET_TASK_TOKEN}",
    }
