"""The agent API over HTTP (in process, through WSGI): tokens, registration, heartbeats, task
status under leases, listings, drains, malformed requests, and the OpenAPI document checked
against the daemon's real routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle  # type: ignore[import-untyped]
import httpx
import pytest
from openapi_spec_validator import validate

from reconciler.console.client import daemon_url, fetch_agents
from reconciler.console.views import agents_json, agents_table
from reconciler.errors import TransientError, UnauthenticatedError
from reconciler.fleet.api import AgentQuery
from reconciler.fleet.operations import OPERATIONS
from reconciler.keys import agent_key
from reconciler.models import AgentStatus, TaskState, transition
from reconciler.settings import StoreSettings, WebhookSettings
from reconciler.store import Store
from tests.sandbox_fixtures import ManualClock
from tests.test_fleet import ENROLMENT, NOW, OPERATOR, Harness, make_settings
from webhook.agents_api import install_agent_api
from webhook.app import make_app
from webhook.daemon import build, http_app
from webhook.openapi import OPENAPI_PATH, install_openapi, openapi_document, route_operations
from webhook.server import HttpServer


class Api:
    """The app in process, and the registry behind it."""

    def __init__(self, harness: Harness) -> None:
        self.registry = harness
        app = make_app()
        install_agent_api(
            app, fleet=harness.fleet, settings=harness.settings, max_body_bytes=64 * 1024
        )
        install_openapi(app)
        self.http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://fleet")

    def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, f"/api/v1{path}", headers=headers, **kwargs)

    def register(self, agent_id: str | None = "a1", **fields: Any) -> str:
        body = {"type": "claude-code", **({"agent_id": agent_id} if agent_id else {}), **fields}
        response = self.call("POST", "/agents/register", token=ENROLMENT, json=body)
        assert response.status_code in (200, 201), response.text
        return str(response.json()["token"])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    harness = Harness(tmp_path)
    client = Api(harness)
    yield client
    client.http.close()
    harness.close()


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    return str(body["error"])


# --- registration ------------------------------------------------------------------------


def test_register_answers_the_id_and_a_token_once(api: Api) -> None:
    """201 with the id, the token and the heartbeat contract; the token works at once."""
    response = api.call(
        "POST",
        "/agents/register",
        token=ENROLMENT,
        json={
            "agent_id": "a1",
            "type": "codex-cli",
            "hostname": "box-1",
            "roles": ["developer", "release-captain"],
            "capabilities": ["code:python"],
            "max_concurrency": 2,
            "mode": "pull",
            "metadata": {"version": "0.9", "llm_model": "gpt-5", "skills": ["django", "sql"]},
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["agent_id"] == "a1" and body["created"] is True
    assert (body["heartbeat_interval_s"], body["missed_heartbeats"], body["lease_ttl_s"]) == (
        60,
        3,
        180,
    )
    agent = api.call("GET", "/agents/a1", token=body["token"]).json()
    assert agent["roles"] == ["developer", "release-captain"]  # custom roles are fine
    assert agent["metadata"]["skills"] == ["django", "sql"]
    assert agent["status"] == "online"


def test_registering_again_updates_the_entry_without_a_duplicate(api: Api) -> None:
    """Same id with its token: 200, updated, still one agent."""
    token = api.register("a1", hostname="box-1")
    response = api.call(
        "POST",
        "/agents/register",
        token=token,
        json={"agent_id": "a1", "type": "claude-code", "hostname": "box-2"},
    )
    assert response.status_code == 200 and response.json()["created"] is False
    listed = api.call("GET", "/agents", token=OPERATOR).json()["agents"]
    assert [(a["id"], a["hostname"]) for a in listed] == [("a1", "box-2")]


def test_registering_an_id_with_a_wrong_token_is_refused(api: Api) -> None:
    """403 with someone else's token, 401 with none; the enrolment secret is accepted."""
    api.register("a1")
    other = api.register("a2")
    body = {"agent_id": "a1", "type": "claude-code", "hostname": "evil"}
    wrong = api.call("POST", "/agents/register", token=other, json=body)
    assert (wrong.status_code, error_of(wrong)) == (403, "registration_refused")
    missing = api.call("POST", "/agents/register", json=body)
    assert (missing.status_code, error_of(missing)) == (401, "missing_token")
    secret = api.call("POST", "/agents/register", token=ENROLMENT, json=body)
    assert secret.status_code == 200


# --- tokens ------------------------------------------------------------------------------


def test_token_valid_invalid_missing_and_another_agents_task(api: Api) -> None:
    """200 / 401 / 401 / 403."""
    token = api.register("a1")
    api.register("b1")
    theirs = api.registry.give_task("b1")
    assert api.call("POST", "/agents/heartbeat", token=token, json={}).status_code == 200
    invalid = api.call("POST", "/agents/heartbeat", token="forged", json={})
    assert (invalid.status_code, error_of(invalid)) == (401, "unknown_token")
    missing = api.call("POST", "/agents/heartbeat", json={})
    assert (missing.status_code, error_of(missing)) == (401, "missing_token")
    other = api.call(
        "POST", f"/tasks/{theirs.id}/status", token=token, json={"lease_generation": 1, "note": "x"}
    )
    assert (other.status_code, error_of(other)) == (403, "not_your_task")
    read = api.call("GET", f"/tasks/{theirs.id}", token=token)
    assert (read.status_code, error_of(read)) == (403, "not_your_task")
    claim = api.call("POST", "/agents/heartbeat", token=token, json={"agent_id": "b1"})
    assert (claim.status_code, error_of(claim)) == (403, "not_your_agent")


def test_the_listing_is_for_operators(api: Api) -> None:
    """An agent's token reads its own record, not the fleet's listing."""
    token = api.register("a1")
    api.register("b1")
    denied = api.call("GET", "/agents", token=token)
    assert (denied.status_code, error_of(denied)) == (403, "operator_only")
    assert api.call("GET", "/agents/a1", token=token).status_code == 200
    assert api.call("GET", "/agents/b1", token=token).status_code == 403
    assert api.call("GET", "/agents/b1", token=OPERATOR).status_code == 200
    missing = api.call("GET", "/agents/nobody", token=OPERATOR)
    assert (missing.status_code, error_of(missing)) == (404, "agent_not_found")


# --- heartbeats and lost agents ----------------------------------------------------------


def test_heartbeats_keep_an_agent_online(api: Api) -> None:
    """Heartbeating every interval for ten minutes: never offline."""
    token = api.register("a1")
    for _ in range(10):
        api.registry.clock.advance(60)
        reply = api.call("POST", "/agents/heartbeat", token=token, json={"load": 0.2})
        assert reply.json()["status"] == "online"
        api.registry.reconcile("a1")
    assert api.registry.agent("a1").status is AgentStatus.ONLINE


def test_a_lost_agents_late_status_update_is_refused_with_409(api: Api) -> None:
    """Three missed intervals → offline, task requeued; the old lease's update gets 409 and the
    next heartbeat tells the agent to stop the task."""
    token = api.register("a1")
    task = api.registry.give_task("a1")
    started = api.call(
        "POST",
        f"/tasks/{task.id}/status",
        token=token,
        json={"lease_generation": 1, "state": "running"},
    )
    assert started.status_code == 200 and started.json()["task"]["state"] == "running"
    api.registry.clock.advance(181)
    api.registry.reconcile("a1")
    assert api.registry.agent("a1").status is AgentStatus.OFFLINE
    late = api.call(
        "POST", f"/tasks/{task.id}/status", token=token, json={"lease_generation": 1, "note": "50%"}
    )
    assert (late.status_code, error_of(late)) == (409, "stale_lease")
    reply = api.call(
        "POST",
        "/agents/heartbeat",
        token=token,
        json={"tasks": [{"task_id": task.id, "lease_generation": 1}]},
    )
    assert [s["code"] for s in reply.json()["stop"]] == ["requeued"]


def test_deregister_requeues_the_agents_tasks(api: Api) -> None:
    """Deregister → offline, its running task back in the queue; heartbeats refused after."""
    token = api.register("a1")
    api.registry.give_task("a1", running=True)
    response = api.call("POST", "/agents/deregister", token=token)
    assert response.status_code == 200 and response.json()["deregistered"] is True
    assert agent_key("a1") in api.registry.enqueued
    api.registry.reconcile("a1")
    assert api.registry.agent("a1").status is AgentStatus.OFFLINE
    assert api.registry.task().state is TaskState.CREATED
    after = api.call("POST", "/agents/heartbeat", token=token, json={})
    assert (after.status_code, error_of(after)) == (409, "agent_deregistered")


# --- task status -------------------------------------------------------------------------


def test_task_status_updates_append_events(api: Api) -> None:
    """assigned → running and a note each append one event; running again changes nothing."""
    token = api.register("a1")
    task = api.registry.give_task("a1")
    path = f"/tasks/{task.id}/status"
    assert api.call(
        "POST", path, token=token, json={"lease_generation": 1, "state": "running"}
    ).json()["changed"]
    again = api.call("POST", path, token=token, json={"lease_generation": 1, "state": "running"})
    assert again.status_code == 200 and again.json()["changed"] is False
    note = api.call("POST", path, token=token, json={"lease_generation": 1, "note": "tests pass"})
    assert note.json()["changed"] is True
    history = api.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()
    assert [(e["kind"], e["actor"], e["reason"]) for e in history["events"][-2:]] == [
        ("transition", "agent:a1", "the agent reports the task running"),
        ("progress", "agent:a1", "tests pass"),
    ]
    assert history["task"]["last_activity_at"] is not None
    assert api.call("GET", f"/tasks/{task.id}", token=token).status_code == 200


def test_a_run_stopped_over_budget_fails_its_task_at_once_with_its_spend(api: Api) -> None:
    """over_budget with failed: the task fails (not retryable, marked over budget) and what
    the run spent is on the task and on the failure's event; without failed it is a 400."""
    token = api.register("a1")
    task = api.registry.give_task("a1", running=True)
    path = f"/tasks/{task.id}/status"
    reason = "over budget: spent 1,500 of 1,000 tokens"
    bad = api.call("POST", path, token=token,
                   json={"lease_generation": 1, "note": reason, "over_budget": True})  # fmt: skip
    assert (bad.status_code, error_of(bad)) == (400, "invalid_body")
    answer = api.call(
        "POST",
        path,
        token=token,
        json={"lease_generation": 1, "note": reason, "failed": True, "over_budget": True,
              "spent_usd": 0.25, "spent_tokens": 1500},
    )  # fmt: skip
    assert answer.status_code == 200
    stored = api.registry.task()
    assert stored.state is TaskState.FAILED and stored.over_budget
    assert (stored.failure_reason, stored.failure_retryable) == (reason, False)
    assert (stored.spent_usd, stored.spent_tokens) == (0.25, 1500)
    last = api.call("GET", f"/tasks/{task.id}", token=OPERATOR).json()["events"][-1]
    assert (last["to_state"], last["data"]["spent_usd"]) == ("failed", 0.25)


def test_an_illegal_transition_is_a_409(api: Api) -> None:
    """A task waiting for review cannot be reported running again."""
    token = api.register("a1")
    task = api.registry.give_task("a1", running=True)
    review, event = transition(
        task, TaskState.REVIEW_PENDING, now=api.registry.clock(), actor="reconciler"
    )
    api.registry.store.record(review, event)
    response = api.call(
        "POST",
        f"/tasks/{task.id}/status",
        token=token,
        json={"lease_generation": 1, "state": "running"},
    )
    assert (response.status_code, error_of(response)) == (409, "illegal_transition")
    unknown = api.call(
        "POST", "/tasks/1-00000000/status", token=token, json={"lease_generation": 1, "note": "x"}
    )
    assert (unknown.status_code, error_of(unknown)) == (404, "task_not_found")


# --- listing and draining ----------------------------------------------------------------


def test_the_listing_filters_by_capability_status_and_role(api: Api) -> None:
    """Query parameters narrow the list; a bad status or an unknown parameter is a 400."""
    api.register("py", roles=["developer"], capabilities=["code:python", "test"])
    api.register("rev", roles=["code-reviewer"], capabilities=["code:python"])
    api.register("ops", roles=["devops"], capabilities=["terraform"])
    api.call("POST", "/agents/ops/drain", token=OPERATOR)

    def ids(query: str) -> list[str]:
        response = api.call("GET", f"/agents{query}", token=OPERATOR)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["agents"]]

    assert ids("") == ["ops", "py", "rev"]
    assert ids("?capability=code:python") == ["py", "rev"]
    assert ids("?capability=code:python&capability=test") == ["py"]
    assert ids("?status=draining") == ["ops"]
    assert ids("?role=code-reviewer&status=online") == ["rev"]
    bad = api.call("GET", "/agents?status=asleep", token=OPERATOR)
    assert (bad.status_code, error_of(bad)) == (400, "invalid_query")
    typo = api.call("GET", "/agents?capabilty=x", token=OPERATOR)
    assert (typo.status_code, error_of(typo)) == (400, "invalid_query")


def test_an_agent_or_an_operator_drains_and_undrains(api: Api) -> None:
    """The agent drains itself, an operator ends it; another agent may not touch it."""
    token = api.register("a1")
    other = api.register("b1")
    drained = api.call("POST", "/agents/a1/drain", token=token)
    assert drained.status_code == 200 and drained.json()["status"] == "draining"
    assert drained.json()["status_reason"] == "drained by the agent"
    denied = api.call("POST", "/agents/a1/undrain", token=other)
    assert (denied.status_code, error_of(denied)) == (403, "not_your_agent")
    undrained = api.call("POST", "/agents/a1/undrain", token=OPERATOR, json={})
    assert undrained.json()["status"] == "online" and undrained.json()["draining"] is False


# --- malformed requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'{"type": "claude-code", "colour": "blue"}', "invalid_body"),
        (b'{"type": ""}', "invalid_body"),
        (b'{"type": "x", "max_concurrency": "lots"}', "invalid_body"),
        (b'{"type": "x", "mode": "ssh"}', "invalid_body"),
        (b'{"type": "x", "agent_id": "no spaces allowed"}', "invalid_body"),
        (b'{"type": "x", "roles": ["bad role!"]}', "invalid_body"),
        (b'{"type": "x", "metadata": {"os": "linux"}}', "invalid_body"),
    ],
)
def test_malformed_registrations_are_400_with_a_json_error(
    api: Api, body: bytes, code: str
) -> None:
    """Never a 500: a JSON error that says what is wrong."""
    response = api.call(
        "POST",
        "/agents/register",
        token=ENROLMENT,
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert (response.status_code, error_of(response)) == (400, code)


def test_unknown_fields_and_missing_fields_elsewhere_are_400(api: Api) -> None:
    """Heartbeats and status updates refuse unknown or missing fields too."""
    token = api.register("a1")
    task = api.registry.give_task("a1")
    cases = [
        ("/agents/heartbeat", {"lod": 1}, "load"),
        ("/agents/heartbeat", {"tasks": [{"task_id": task.id}]}, "lease_generation"),
        (f"/tasks/{task.id}/status", {"state": "running"}, "lease_generation"),
        (f"/tasks/{task.id}/status", {"lease_generation": 1, "state": "completed"}, "state"),
        (f"/tasks/{task.id}/status", {"lease_generation": 1}, "state"),
    ]
    for path, body, mentioned in cases:
        response = api.call("POST", path, token=token, json=body)
        assert (response.status_code, error_of(response)) == (400, "invalid_body"), body
        assert (
            mentioned in response.json()["message"] or "unknown field" in response.json()["message"]
        )


def test_a_body_over_the_limit_is_413(api: Api) -> None:
    """The API reads no more than its limit."""
    response = api.call(
        "POST", "/agents/register", token=ENROLMENT, content=b"{" + b" " * 70_000 + b"}"
    )
    assert (response.status_code, error_of(response)) == (413, "body_too_large")


# --- the OpenAPI document ----------------------------------------------------------------


def api_routes(app: bottle.Bottle) -> set[tuple[str, str]]:
    """(method, OpenAPI-style path) of every /api/v1 route of a Bottle app."""
    return {
        (route.method.lower(), re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", route.rule))
        for route in app.routes
        if route.rule.startswith("/api/v1")
    }


def test_the_openapi_document_matches_the_daemons_routes(tmp_path: Path) -> None:
    """Valid OpenAPI; every /api/v1 route of the daemon's app was installed from an operation
    of the wire contract, every operation of the contract is a route, and the document
    generated from the routes documents exactly them; the daemon serves it."""
    settings = make_settings().model_copy(update={"store": StoreSettings(path=tmp_path / "s")})
    with Store.open(tmp_path / "s") as store:
        assembly = build(settings, store=store)
        try:
            app = http_app(assembly, readiness=dict)
            operations = route_operations(app)
            undocumented = {
                (route.method, route.rule)
                for route in app.routes
                if route.rule.startswith("/api/v1") and route.config.get("operation") is None
            }
            assert not undocumented
            assert sorted(op.operation_id for op in operations) == sorted(
                op.operation_id for op in OPERATIONS
            )
            document = openapi_document(operations)
            validate(document)
            documented = {
                (method, path) for path, item in document["paths"].items() for method in item
            }
            assert documented == api_routes(app)
            with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://d") as http:
                served = http.get(OPENAPI_PATH)
                assert served.status_code == 200 and served.json() == document
                metrics = http.get("/metrics").text
                assert 'agent_fleet_agents{status="online"} 0.0' in metrics
        finally:
            assembly.gateway.close()


def test_the_openapi_document_takes_its_query_parameters_from_the_query_models() -> None:
    """listAgents documents the fields of AgentQuery as query parameters (capability
    repeatable, status one of the agent statuses), not as a body."""
    document = openapi_document(OPERATIONS)
    listing = document["paths"]["/api/v1/agents"]["get"]
    parameters = {p["name"]: p for p in listing["parameters"]}
    assert set(parameters) == set(AgentQuery.model_fields)
    assert parameters["capability"]["explode"] is True
    assert parameters["capability"]["schema"]["type"] == "array"
    status_ref = parameters["status"]["schema"]["$ref"]
    status_schema = document["components"]["schemas"][status_ref.rsplit("/", 1)[1]]
    assert set(status_schema["enum"]) == {s.value for s in AgentStatus}
    assert "requestBody" not in listing
    assert "AgentQuery" not in document["components"]["schemas"]


def test_the_documented_errors_are_json_for_unknown_routes_and_methods(api: Api) -> None:
    """404 and 405 under /api/v1 are JSON too."""
    missing = api.call("GET", "/agents/a1/nothing")
    assert (missing.status_code, error_of(missing)) == (404, "not_found")
    wrong = api.call("PUT", "/agents/register")
    assert (wrong.status_code, error_of(wrong)) == (405, "method_not_allowed")


def test_the_daemon_wires_the_api_the_registry_and_the_metric(tmp_path: Path) -> None:
    """Through build() and http_app(): a registration reaches the registry controller by the
    work queue; silence turns the agent offline on the next pass; /metrics counts it."""
    clock = ManualClock(NOW)
    settings = make_settings().model_copy(
        update={
            "store": StoreSettings(path=tmp_path / "s"),
            "forgejo": make_settings().forgejo.model_copy(update={"repos": ()}),
        }
    )
    with Store.open(tmp_path / "s") as store:
        assembly = build(settings, store=store, clock=clock)
        try:
            app = http_app(assembly, readiness=dict)
            with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://d") as http:
                registered = http.post(
                    "/api/v1/agents/register",
                    headers={"Authorization": f"Bearer {ENROLMENT}"},
                    json={"agent_id": "a1", "type": "claude-code"},
                )
                assert registered.status_code == 201
                outcomes = assembly.loop.drain()
                assert [(o.key, o.outcome) for o in outcomes] == [(agent_key("a1"), "requeued")]
                clock.advance(181)
                assembly.resync.full()  # what the periodic full resync does
                assert [o.actions for o in assembly.loop.drain()] == [
                    (
                        "agent a1: online → offline (no heartbeat for 3 min 1 s (3 missed intervals))",
                    )
                ]
                metrics = http.get("/metrics").text
                assert 'agent_fleet_agents{status="offline"} 1.0' in metrics
        finally:
            assembly.gateway.close()


def test_the_cli_reads_the_agents_from_a_served_daemon(api: Api) -> None:
    """fetch_agents over real HTTP: the table and the JSON the CLI prints; a wrong token and an
    unreachable daemon are clear errors."""
    api.register("a1", roles=["developer"])
    app = make_app()
    install_agent_api(
        app, fleet=api.registry.fleet, settings=api.registry.settings, max_body_bytes=1024
    )
    server = HttpServer(app, host="127.0.0.1", port=0)
    server.start()
    try:
        found = fetch_agents(server.url, token=OPERATOR, role="developer")
        assert [a.id for a in found] == ["a1"]
        assert agents_table(found, now=api.registry.clock()).splitlines()[1].startswith("a1 ")
        assert '"id": "a1"' in agents_json(found)
        assert fetch_agents(server.url, token=OPERATOR, status=AgentStatus.OFFLINE) == []
        with pytest.raises(UnauthenticatedError, match="unknown_token|not issued"):
            fetch_agents(server.url, token="wrong")
        port = server.port
    finally:
        server.stop()
    with pytest.raises(TransientError, match="cannot reach"):
        fetch_agents(f"http://127.0.0.1:{port}", token=OPERATOR, timeout=2)


@pytest.mark.parametrize(
    ("bind", "port", "url"),
    [("127.0.0.1", 8080, "http://127.0.0.1:8080"), ("0.0.0.0", 9000, "http://127.0.0.1:9000"),
     ("::", 8080, "http://[::1]:8080"), ("fleet.internal", 80, "http://fleet.internal:80")],
)  # fmt: skip
def test_the_cli_finds_the_daemon_from_the_config(bind: str, port: int, url: str) -> None:
    """The default --server comes from webhook.bind and webhook.port."""
    assert daemon_url(WebhookSettings(bind=bind, port=port)) == url
    with pytest.raises(ValueError, match="picked its port"):
        daemon_url(WebhookSettings(port=0))


def test_status_lists_live_tasks_with_why_they_wait_from_a_served_daemon(
    api: Api, tmp_path: Path
) -> None:
    """GET /api/v1/tasks (operator only) and `agent-fleet status` over real HTTP: counts by
    state, queue order, and each task's reason to wait or to have failed."""
    from datetime import timedelta

    from click.testing import CliRunner

    from reconciler.console.client import fetch_tasks
    from reconciler.console.views import status_report
    from reconciler.models import Priority, RepoName, Task, task_id_for
    from webhook.cli import main

    now = api.registry.clock()
    store = api.registry.store
    base = {"repo": RepoName("acme/web"), "title": "t", "created_at": now, "updated_at": now}
    store.put_task(
        Task(
            id=task_id_for("acme/web", 1),
            issue_number=1,
            wait_reason="no agent has role developer and code:rust",
            **base,
        )
    )
    store.put_task(
        Task(
            id=task_id_for("acme/web", 2),
            issue_number=2,
            priority=Priority.HIGH,
            **{**base, "created_at": now - timedelta(minutes=5)},
        )
    )
    store.put_task(
        Task(
            id=task_id_for("acme/web", 3),
            issue_number=3,
            state=TaskState.FAILED,
            failure_reason="timed out",
            **base,
        )
    )
    assert api.call("get", "/tasks", token="nope").status_code == 401
    app = make_app()
    install_agent_api(
        app, fleet=api.registry.fleet, settings=api.registry.settings, max_body_bytes=1024
    )
    server = HttpServer(app, host="127.0.0.1", port=0)
    server.start()
    try:
        tasks = fetch_tasks(server.url, token=OPERATOR)
        assert [t.issue_number for t in tasks] == [2, 1, 3]  # high priority first, then age
        report = status_report(tasks, now=now)
        assert report.splitlines()[0] == "created: 2  failed: 1"
        assert "no agent has role developer and code:rust" in report and "timed out" in report
        assert [
            t.issue_number
            for t in fetch_tasks(server.url, token=OPERATOR, states=[TaskState.FAILED])
        ] == [3]
        config = tmp_path / "fleet.toml"
        config.write_text(
            '[forgejo]\nurl = "http://forgejo.invalid"\ntoken = "t"\nbot_login = "bot"\n'
        )
        result = CliRunner().invoke(
            main, ["status", "--config", str(config), "--server", server.url, "--token", OPERATOR]
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert "created: 2  failed: 1" in result.output
    assert "no agent has role developer and code:rust" in result.output
