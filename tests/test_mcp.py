"""The fleet MCP server: task tokens, the task endpoints behind it, and its tools over MCP."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

from reconciler.agent.client import AgentApi
from reconciler.agent.mcpserver import TOKEN_ENV, build_server, task_of
from reconciler.fleet.tasktokens import TaskTokens
from reconciler.models import AgentStatus
from reconciler.run.adapters import (
    FleetTools,
    claude_mcp_config,
    fleet_tools_env,
    parse_output,
    render_command,
    render_env,
    start_local,
    with_fleet_tools,
)
from tests.modelapi import ModelApiStandIn, Script
from tests.test_agent_clis import (  # noqa: F401  (fixtures: agent_clis, checkout, home)
    CLAUDE_ADAPTER,
    CODEX_ADAPTER,
    RUN_TIMEOUT,
    TaskCheckout,
    _with_binary,
    agent_clis,
    checkout,
    home,
)
from tests.test_agents_api import error_of
from tests.test_fleet import ENROLMENT, OPERATOR, Harness
from webhook.agents_api import install_agent_api
from webhook.app import make_app
from webhook.mcp_api import install_mcp_api
from webhook.server import HttpServer

ROOT = Path(__file__).resolve().parent.parent


class Rig:
    """The agent API and the task endpoints served over HTTP, over one registry."""

    def __init__(self, harness: Harness) -> None:
        self.registry = harness
        self.tokens = TaskTokens(b"test-secret")
        app = make_app()
        install_agent_api(
            app, fleet=harness.fleet, settings=harness.settings, max_body_bytes=64 * 1024
        )
        install_mcp_api(app, fleet=harness.fleet, tokens=self.tokens, max_body_bytes=64 * 1024)
        self.server = HttpServer(app, host="127.0.0.1", port=0)
        self.server.start()
        self.http = httpx.Client(base_url=f"{self.server.url}/api/v1")

    def call(
        self, method: str, path: str, *, token: str | None, **kwargs: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def register(self, agent_id: str) -> str:
        answer = self.call(
            "POST",
            "/agents/register",
            token=ENROLMENT,
            json={"type": "claude-code", "agent_id": agent_id},
        )
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["token"])

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    harness = Harness(tmp_path)
    served = Rig(harness)
    yield served
    served.close()
    harness.close()


# --- tokens ----------------------------------------------------------------------------------


def test_a_task_token_names_its_task_and_lease_and_only_its_issuer_accepts_it() -> None:
    """A token checks out under its own secret only, and any change to it is refused."""
    tokens = TaskTokens(b"one")
    token = tokens.issue("12-3f9a1c2b", 3)
    grant = tokens.check(token)
    assert grant is not None and (grant.task_id, grant.lease_generation) == ("12-3f9a1c2b", 3)
    assert task_of(token) == "12-3f9a1c2b"
    assert TaskTokens(b"two").check(token) is None
    assert tokens.check(token.replace(".3.", ".4.")) is None
    assert tokens.check(token.replace("12-3f9a1c2b", "13-3f9a1c2b")) is None
    assert tokens.check(token[:-2]) is None
    assert tokens.check("not-a-token") is None
    with pytest.raises(ValueError, match="cannot be put"):
        tokens.issue("a.b", 1)


# --- the task endpoints ----------------------------------------------------------------------


def test_the_brief_is_the_tasks_own_and_refuses_another_tasks_id(rig: Rig) -> None:
    """A task's token reads its task; another task's id is 403, no or a forged token 401."""
    rig.register("a1")
    task = rig.registry.give_task("a1", 12)
    other = rig.registry.give_task("a1", 13)
    token = rig.tokens.issue(task.id, task.lease_generation)
    brief = rig.call("GET", f"/tasks/{task.id}/brief", token=token)
    assert brief.status_code == 200, brief.text
    body = brief.json()
    assert (body["task_id"], body["issue_number"], body["lease_generation"]) == (task.id, 12, 1)
    refused = rig.call("GET", f"/tasks/{other.id}/brief", token=token)
    assert (refused.status_code, error_of(refused)) == (403, "not_your_task")
    forged = TaskTokens(b"another-secret").issue(task.id, task.lease_generation)
    assert error_of(rig.call("GET", f"/tasks/{task.id}/brief", token=forged)) == "unknown_token"
    assert error_of(rig.call("GET", f"/tasks/{task.id}/brief", token=None)) == "missing_token"
    operator = rig.call("GET", f"/tasks/{task.id}/brief", token=OPERATOR)
    assert (operator.status_code, error_of(operator)) == (401, "unknown_token")


def test_progress_is_recorded_as_an_event_and_shown_in_the_brief(rig: Rig) -> None:
    """A percent and a step become one progress event on the task's history."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    token = rig.tokens.issue(task.id, task.lease_generation)
    path = f"/tasks/{task.id}/progress"
    reported = rig.call("POST", path, token=token, json={"percent": 40, "step": "running tests"})
    assert reported.status_code == 200 and reported.json()["changed"] is True
    history = rig.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()["events"]
    assert (history[-1]["kind"], history[-1]["actor"], history[-1]["reason"]) == (
        "progress",
        "agent:a1",
        "40% · running tests",
    )
    brief = rig.call("GET", f"/tasks/{task.id}/brief", token=token).json()
    assert brief["progress"] == ["40% · running tests"]
    bad = rig.call("POST", path, token=token, json={"percent": 140, "step": "x"})
    assert (bad.status_code, error_of(bad)) == (400, "invalid_body")


def test_a_stale_lease_is_refused_once_the_task_is_requeued(rig: Rig) -> None:
    """The agent goes offline, its task is requeued under a new lease: the old token gets 409."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    token = rig.tokens.issue(task.id, task.lease_generation)
    assert rig.call("GET", f"/tasks/{task.id}/brief", token=token).status_code == 200
    rig.registry.clock.advance(181)
    rig.registry.reconcile("a1")
    assert rig.registry.agent("a1").status is AgentStatus.OFFLINE
    for method, path, body in (
        ("GET", "brief", None),
        ("POST", "progress", {"percent": 50, "step": "late"}),
    ):
        late = rig.call(method, f"/tasks/{task.id}/{path}", token=token, json=body)
        assert (late.status_code, error_of(late)) == (409, "stale_lease")


# --- the MCP server ----------------------------------------------------------------------------


def test_the_tools_act_for_the_task_and_refuse_after_the_lease_is_gone(rig: Rig) -> None:
    """Over MCP: `task` and `progress` work for the run's task; a stale lease is a tool error."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    api = AgentApi(rig.server.url)
    api.token = rig.tokens.issue(task.id, task.lease_generation)
    server = build_server(api, task.id)

    async def session() -> tuple[set[str], dict[str, object], str, str]:
        async with Client(server) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            brief = await client.call_tool("task", {})
            assert not brief.is_error and brief.structured_content is not None
            done = await client.call_tool("progress", {"percent": 10, "step": "reading"})
            assert not done.is_error
            rig.registry.clock.advance(181)
            rig.registry.reconcile("a1")
            late = await client.call_tool("progress", {"percent": 20, "step": "late"})
            assert late.is_error
            return names, brief.structured_content, _text(done), _text(late)

    names, brief, done, late = anyio.run(session)
    assert names == {"task", "progress", "ask", "decide", "share", "context"}
    assert brief["task_id"] == task.id and brief["branch"] == task.branch
    assert "10% reading" in done
    assert "stale_lease" in late


def test_agent_fleet_mcp_serves_the_tools_over_stdio(rig: Rig) -> None:
    """The `agent-fleet mcp` command, started as an agent CLI starts it, answers over stdio."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AGENT_FLEET_SERVER": rig.server.url,
        TOKEN_ENV: rig.tokens.issue(task.id, task.lease_generation),
    }
    command = StdioServerParameters(
        command=sys.executable, args=["-m", "webhook.cli", "mcp"], env=env, cwd=str(ROOT)
    )

    async def session() -> tuple[set[str], str]:
        async with Client(command, read_timeout_seconds=60) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            answer = await client.call_tool("progress", {"percent": 70, "step": "pushing"})
            return names, _text(answer)

    names, text = anyio.run(session)
    assert names == {"task", "progress", "ask", "decide", "share", "context"}
    assert "70% pushing" in text
    events = rig.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()["events"]
    assert events[-1]["reason"] == "70% · pushing"


def _text(result: object) -> str:
    content = getattr(result, "content", [])
    return " ".join(getattr(part, "text", "") for part in content)


# --- how a run loads the server -----------------------------------------------------------------


def test_claude_gets_a_config_file_codex_overrides_and_other_programs_nothing() -> None:
    """Claude Code: --mcp-config last; Codex: -c overrides after the program, naming the
    variables (the token is in no argv); a scripted CLI is left alone."""
    tools = FleetTools(server="http://fleet:8080", token="aft1.t.1.mac", command=("af", "mcp"))
    claude = with_fleet_tools(["claude", "-p", "do it"], tools=tools, config_file="/s/t.json")
    assert claude == ["claude", "-p", "do it", "--mcp-config", "/s/t.json"]
    config = json.loads(claude_mcp_config(tools))["mcpServers"]["fleet"]
    assert config == {
        "command": "af",
        "args": ["mcp"],
        "env": {
            "AGENT_FLEET_SERVER": "http://fleet:8080",
            "AGENT_FLEET_TASK_TOKEN": "aft1.t.1.mac",
        },
    }
    codex = with_fleet_tools(["/opt/codex", "exec", "do it"], tools=tools, config_file="x")
    assert codex[:1] == ["/opt/codex"] and codex[-2:] == ["exec", "do it"]
    assert codex[1:-2] == [
        "-c",
        'mcp_servers.fleet.command="af"',
        "-c",
        'mcp_servers.fleet.args=["mcp"]',
        "-c",
        'mcp_servers.fleet.env_vars=["AGENT_FLEET_SERVER", "AGENT_FLEET_TASK_TOKEN", "PYTHONPATH"]',
        "-c",
        "mcp_servers.fleet.required=true",
        "-c",
        "mcp_servers.fleet.startup_timeout_sec=60",
    ]
    assert not any("aft1" in arg for arg in codex)
    scripted = [sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"]
    assert with_fleet_tools(scripted, tools=tools, config_file="x") == scripted


# --- the real agent CLIs ------------------------------------------------------------------------


def test_real_claude_calls_the_fleet_progress_tool_through_its_mcp_config(
    rig: Rig,
    agent_clis: dict[str, str],  # noqa: F811  (the fixture imported above)
    model_api: ModelApiStandIn,
    checkout: TaskCheckout,  # noqa: F811
    home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Claude Code, given the worker's --mcp-config, starts `agent-fleet mcp` and its call of
    mcp__fleet__progress lands on the task's history."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    tools = FleetTools(
        server=rig.server.url,
        token=rig.tokens.issue(task.id, task.lease_generation),
        command=(sys.executable, "-m", "webhook", "mcp"),
    )
    config_file = tmp_path / "mcp.json"
    config_file.write_text(claude_mcp_config(tools))
    adapter = _with_binary(CLAUDE_ADAPTER, agent_clis["claude"])
    script = Script.mcp_call("progress", {"percent": 30, "step": "via claude"}, then="Reported.")
    base = model_api.base_url(script)
    argv = with_fleet_tools(
        render_command(
            adapter, prompt="Report progress.", workdir=str(checkout.worktree), session_id=None,
            resume=False,
        ),
        tools=tools,
        config_file=str(config_file),
    )  # fmt: skip
    env = {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
        **model_api.claude_env(base, home=home), **render_env(adapter), **tools.env(),
        **fleet_tools_env(argv),
    }  # fmt: skip
    output = start_local(argv, cwd=checkout.worktree, env=env, timeout=RUN_TIMEOUT).wait()
    result = parse_output(adapter.parser, output)
    assert result.ok, output.stdout + output.stderr
    offered = {t["name"] for t in model_api.requests(base)[0].body.get("tools", [])}
    assert {"mcp__fleet__task", "mcp__fleet__progress"} <= offered
    events = rig.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()["events"]
    assert [e["reason"] for e in events if e["kind"] == "progress"] == ["30% · via claude"]


def test_real_codex_calls_the_fleet_progress_tool_through_its_config_overrides(
    rig: Rig,
    agent_clis: dict[str, str],  # noqa: F811  (the fixture imported above)
    model_api: ModelApiStandIn,
    checkout: TaskCheckout,  # noqa: F811
    home: Path,  # noqa: F811
) -> None:
    """Codex, given the worker's -c mcp_servers.fleet overrides, starts `agent-fleet mcp` with
    the forwarded variables and its call of the progress tool lands on the task's history."""
    rig.register("a1")
    task = rig.registry.give_task("a1", running=True)
    tools = FleetTools(
        server=rig.server.url,
        token=rig.tokens.issue(task.id, task.lease_generation),
        command=(sys.executable, "-m", "webhook", "mcp"),
    )
    adapter = _with_binary(CODEX_ADAPTER, agent_clis["codex"])
    script = Script.mcp_call("progress", {"percent": 60, "step": "via codex"}, then="Reported.")
    base = model_api.base_url(script)
    argv = with_fleet_tools(
        render_command(
            adapter, prompt="Report progress.", workdir=str(checkout.worktree), session_id=None,
            resume=False,
        ),
        tools=tools,
        config_file="unused",
    )  # fmt: skip
    env = {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
        **model_api.codex_env(base, home=home), **render_env(adapter), **tools.env(),
        **fleet_tools_env(argv),
    }  # fmt: skip
    output = start_local(argv, cwd=checkout.worktree, env=env, timeout=RUN_TIMEOUT).wait()
    offered = {t.get("name"): t for t in model_api.requests(base)[0].body.get("tools", [])}
    assert "mcp__fleet" in offered, output.stdout + output.stderr
    assert {t["name"] for t in offered["mcp__fleet"]["tools"]} == {
        "task",
        "progress",
        "ask",
        "decide",
        "share",
        "context",
    }
    result = parse_output(adapter.parser, output)
    assert result.ok, output.stdout + output.stderr
    events = rig.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()["events"]
    assert [e["reason"] for e in events if e["kind"] == "progress"] == ["60% · via codex"]
