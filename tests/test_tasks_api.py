"""The pull agents' task endpoints over HTTP: dequeue (match, nothing, twenty agents at once,
agents that may not take work), status and completion under leases, and receipts —
idempotent by id, refused with nothing stored."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.fleet.queue import PullQueue, labels_implied
from reconciler.keys import agent_key, issue_key, pull_key
from reconciler.models import (
    AgentId,
    Priority,
    Receipt,
    ReceiptId,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
    transition,
)
from reconciler.settings import TimeoutsSettings
from tests.test_fleet import ENROLMENT, OPERATOR, REPO, Harness, make_settings
from webhook.agents_api import install_agent_api
from webhook.app import make_app
from webhook.server import HttpServer
from webhook.tasks_api import install_tasks_api

SHA_1 = "a" * 40
SHA_2 = "b" * 40


class Api:
    """The agent API and the task endpoints in process, over the registry's harness."""

    def __init__(self, harness: Harness) -> None:
        self.registry = harness
        self.queue = PullQueue(
            harness.store,
            fleet=harness.fleet,
            settings=harness.settings,
            clock=harness.clock,
            enqueue=harness.enqueued.append,
        )
        self.app = make_app()
        install_agent_api(
            self.app, fleet=harness.fleet, settings=harness.settings, max_body_bytes=64 * 1024
        )
        install_tasks_api(self.app, queue=self.queue, max_body_bytes=64 * 1024)
        self.http = httpx.Client(
            transport=httpx.WSGITransport(app=self.app), base_url="http://fleet"
        )

    def call(self, method: str, path: str, *, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"/api/v1{path}", headers=headers, **kwargs)

    def register(self, agent_id: str, **fields: Any) -> str:
        body = {"type": "claude-code", "agent_id": agent_id, **fields}
        response = self.call("POST", "/agents/register", token=ENROLMENT, json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def waiting(self, number: int, **fields: Any) -> Task:
        """A task of issue ``number`` waiting in the queue, as the assignment controller
        leaves it."""
        tid = task_id_for(REPO, number)
        title = fields.pop("title", f"Issue {number}")
        task = Task(
            id=tid,
            repo=RepoName(REPO),
            issue_number=number,
            title=title,
            branch=branch_for(tid, title),
            created_at=self.registry.clock(),
            updated_at=self.registry.clock(),
            **fields,
        )
        self.registry.store.put_task(task)
        return task

    def dequeue(self, token: str) -> httpx.Response:
        return self.call("POST", "/tasks/dequeue", token=token)

    def start(self, token: str, task_id: str, lease: int = 1) -> httpx.Response:
        return self.call(
            "POST",
            f"/tasks/{task_id}/status",
            token=token,
            json={"lease_generation": lease, "state": "running"},
        )

    def task(self, task_id: str) -> Task:
        return self.registry.store.get_task(task_id)


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


def receipt_body(task: Task, **fields: Any) -> dict[str, Any]:
    return {
        "receipt_id": f"{task.id}-r1",
        "task_id": task.id,
        "lease_generation": 1,
        "pr_number": 7,
        "branch": task.branch,
        "commits": [SHA_1, SHA_2],
        "summary": "Added the flag and its test.",
        "artifacts": [{"name": "log", "url": "https://ci.example.org/1"}],
        "cost_usd": 0.42,
        "tokens": 12_000,
        "duration_s": 95.5,
        "session_id": "sess-1",
        **fields,
    }


def running_task(api: Api, token: str, number: int = 12) -> Task:
    """A task dequeued by the token's agent and reported running."""
    api.waiting(number)
    handout = api.dequeue(token)
    assert handout.status_code == 200, handout.text
    task_id = handout.json()["task"]["id"]
    assert api.start(token, task_id).status_code == 200
    return api.task(task_id)


# --- dequeue -----------------------------------------------------------------------------


def test_dequeue_hands_the_matching_task_with_its_lease_branch_and_where_to_push(
    api: Api,
) -> None:
    """200: the first fitting task in queue order, assigned under lease 1 with a deadline;
    the issue and agent keys are enqueued."""
    token = api.register("a1", roles=["developer"], capabilities=["code:python"])
    api.waiting(3, required_capabilities=("code:rust",), priority=Priority.HIGH)
    low = api.waiting(4, priority=Priority.LOW, title="Low one")
    high = api.waiting(5, required_capabilities=("code:python",), title="Add a flag")
    response = api.dequeue(token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"]["id"] == high.id and body["task"]["state"] == "assigned"
    assert (body["lease_generation"], body["attempt"]) == (1, 1)
    assert body["branch"] == high.branch == f"task/{high.id}-add-a-flag"
    assert body["clone_url"] == f"https://forgejo.example.org/{REPO}.git"
    assert body["forgejo_url"] == "https://forgejo.example.org"
    assert body["issue_url"] == f"https://forgejo.example.org/{REPO}/issues/5"
    assert body["base_branch"] is None and body["repo"] == REPO and body["issue_number"] == 5
    now = api.registry.clock()
    stored = api.task(high.id)
    assert stored.agent_id == "a1" and stored.deadline_at == now + timedelta(hours=1)
    [event] = api.registry.store.events_for(high.id)
    assert (event.actor, event.to_state, event.data["lease_generation"]) == (
        "agent:a1",
        TaskState.ASSIGNED,
        1,
    )
    assert issue_key(REPO, 5) in api.registry.enqueued and agent_key("a1") in api.registry.enqueued
    assert api.task(low.id).state is TaskState.CREATED


def test_dequeue_with_nothing_matching_is_204_without_a_body(api: Api) -> None:
    """No task the agent can do: 204, nothing written."""
    token = api.register("a1", capabilities=["code:python"])
    rust = api.waiting(3, required_capabilities=("code:rust",))
    response = api.dequeue(token)
    assert (response.status_code, response.content) == (204, b"")
    assert api.task(rust.id) == rust and api.registry.store.events_for(rust.id) == []


def test_dequeue_stops_at_the_agents_capacity(api: Api) -> None:
    """An agent with one slot gets one task, then 204 until it is done with it."""
    token = api.register("a1", max_concurrency=1)
    api.waiting(3)
    api.waiting(4)
    assert api.dequeue(token).status_code == 200
    assert api.dequeue(token).status_code == 204


def test_the_timeout_follows_the_labels_the_task_implies(api: Api) -> None:
    """timeouts.per_label applies to the role, needs and priority labels a task stands for."""
    api.registry.current = make_settings().model_copy(
        update={"timeouts": TimeoutsSettings(per_label={"needs/gpu": 7200, "priority/low": 60})}
    )
    task = api.waiting(3, required_capabilities=("gpu",), priority=Priority.LOW)
    assert labels_implied(task, api.registry.current.labels) == (
        "fleet/task",
        "needs/gpu",
        "priority/low",
    )
    token = api.register("a1", capabilities=["gpu"])
    assert api.dequeue(token).json()["deadline_at"] == (
        api.registry.clock() + timedelta(seconds=7200)
    ).isoformat().replace("+00:00", "Z")


def test_draining_offline_and_departed_agents_get_no_task(api: Api) -> None:
    """Draining: 204. Silent past its grace (offline): 204. Deregistered: 409."""
    task = api.waiting(3)
    drained = api.register("d1")
    assert api.call("POST", "/agents/d1/drain", token=drained).status_code == 200
    assert api.dequeue(drained).status_code == 204
    silent = api.register("s1")
    api.registry.clock.advance(181)
    assert api.dequeue(silent).status_code == 204  # silent past its grace, before the registry
    api.registry.reconcile("s1")
    assert api.registry.agent("s1").status.value == "offline"
    assert api.dequeue(silent).status_code == 204
    gone = api.register("g1")
    assert api.call("POST", "/agents/deregister", token=gone).status_code == 200
    refused = api.dequeue(gone)
    assert (refused.status_code, error_of(refused)) == (409, "agent_deregistered")
    assert api.task(task.id).state is TaskState.CREATED


def test_twenty_agents_dequeuing_at_once_never_get_the_same_task(api: Api) -> None:
    """Twenty threads against the served app, each agent taking tasks until 204: every task is
    handed out exactly once, under lease 1, and the store agrees."""
    agents = {f"a{n:02d}": api.register(f"a{n:02d}", max_concurrency=2) for n in range(20)}
    waiting = {api.waiting(100 + n).id for n in range(30)}
    server = HttpServer(api.app, host="127.0.0.1", port=0, threads=4)
    server.start()
    handed: list[tuple[str, str, int]] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(agents))

    def take(agent_id: str, token: str) -> None:
        start.wait(timeout=10)
        while True:
            request = urllib.request.Request(
                f"{server.url}/api/v1/tasks/dequeue",
                data=b"{}",
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    if response.status == 204:
                        return
                    body = json.loads(response.read())
            except (urllib.error.URLError, OSError) as exc:
                with lock:
                    failures.append(f"{agent_id}: {exc}")
                return
            with lock:
                handed.append((body["task"]["id"], agent_id, body["lease_generation"]))

    threads = [threading.Thread(target=take, args=item) for item in agents.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        server.stop()
    assert failures == []
    ids = [task_id for task_id, _, _ in handed]
    assert len(ids) == len(set(ids)) == 30 and set(ids) == waiting
    assert {lease for _, _, lease in handed} == {1}
    for task_id, agent_id, _ in handed:
        stored = api.task(task_id)
        assert (stored.state, stored.agent_id) == (TaskState.ASSIGNED, agent_id)
        assert [e.to_state for e in api.registry.store.events_for(task_id)] == [TaskState.ASSIGNED]
    per_agent = [sum(agent == a for _, agent, _ in handed) for a in agents]
    assert max(per_agent) <= 2


# --- status under the lease ----------------------------------------------------------------


def test_status_of_a_dequeued_task_owner_ok_other_agent_403_stale_lease_409(api: Api) -> None:
    """The owner reports running; another agent is refused; a lease superseded by a requeue
    and a new dequeue gets 409."""
    owner = api.register("a1")
    other = api.register("b1")
    api.waiting(3)
    task_id = api.dequeue(owner).json()["task"]["id"]
    started = api.start(owner, task_id)
    assert started.status_code == 200 and started.json()["task"]["state"] == "running"
    theirs = api.start(other, task_id)
    assert (theirs.status_code, error_of(theirs)) == (403, "not_your_task")
    # The agent is lost; the task goes back to the queue and to the other agent, lease 2.
    api.registry.clock.advance(181)
    assert api.call("POST", "/agents/heartbeat", token=other, json={}).status_code == 200
    api.registry.reconcile("a1")
    again = api.dequeue(other)
    assert again.json()["lease_generation"] == 2
    stale = api.call(
        "POST", f"/tasks/{task_id}/status", token=owner, json={"lease_generation": 1, "note": "x"}
    )
    assert (stale.status_code, error_of(stale)) == (409, "stale_lease")


# --- completion ----------------------------------------------------------------------------


def test_the_owner_completes_a_task_without_a_pull_request(api: Api) -> None:
    """201: receipt stored; the task stays running until the receipts controller has checked
    the claimed commits against Forgejo, and its key is queued for that."""
    token = api.register("a1")
    task = running_task(api, token)
    body = receipt_body(task)
    del body["task_id"], body["pr_number"]
    response = api.call("POST", f"/tasks/{task.id}/complete", token=token, json=body)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert (answer["task_state"], answer["verified"], answer["pr_number"]) == (
        "running",
        False,
        None,
    )
    assert api.task(task.id).state is TaskState.RUNNING
    [receipt] = api.registry.store.receipts_for(task.id)
    assert receipt.summary == "Added the flag and its test." and receipt.pr_number is None
    last = api.registry.store.events_for(task.id)[-1]
    assert (last.kind, last.to_state) == ("receipt", None)
    assert "not verified" in last.reason


def test_another_agent_cannot_complete_a_task_and_nothing_is_stored(api: Api) -> None:
    """403 not_your_task; the task keeps running, no receipt, no event."""
    owner = api.register("a1")
    other = api.register("b1")
    task = running_task(api, owner)
    events = api.registry.store.events_for(task.id)
    body = receipt_body(task)
    del body["task_id"], body["pr_number"]
    response = api.call("POST", f"/tasks/{task.id}/complete", token=other, json=body)
    assert (response.status_code, error_of(response)) == (403, "not_your_task")
    assert api.task(task.id).state is TaskState.RUNNING
    assert api.registry.store.receipts_for(task.id) == []
    assert api.registry.store.events_for(task.id) == events


def test_completing_a_task_not_yet_running_is_a_409(api: Api) -> None:
    """The state machine decides: assigned cannot complete; report running first."""
    token = api.register("a1")
    api.waiting(3)
    task_id = api.dequeue(token).json()["task"]["id"]
    body = receipt_body(api.task(task_id))
    del body["task_id"], body["pr_number"]
    response = api.call("POST", f"/tasks/{task_id}/complete", token=token, json=body)
    assert (response.status_code, error_of(response)) == (409, "illegal_transition")
    assert api.registry.store.receipts_for(task_id) == []


# --- receipts ------------------------------------------------------------------------------


def test_a_receipt_with_a_pull_request_moves_the_task_to_review(api: Api) -> None:
    """201: review_pending with the PR number and session; PR and issue keys enqueued."""
    token = api.register("a1")
    task = running_task(api, token)
    response = api.call("POST", "/receipts", token=token, json=receipt_body(task))
    assert response.status_code == 201, response.text
    assert response.json()["task_state"] == "review_pending"
    stored = api.task(task.id)
    assert (stored.state, stored.pr_number, stored.session_id) == (
        TaskState.REVIEW_PENDING,
        7,
        "sess-1",
    )
    [receipt] = api.registry.store.receipts_for(task.id)
    assert receipt.commits == (SHA_1, SHA_2) and receipt.agent_id == "a1"
    assert receipt.artifacts[0].url == "https://ci.example.org/1"
    assert pull_key(REPO, 7) in api.registry.enqueued
    # Dequeued and handed in: the issue's labels follow each move it shows (running after
    # assigned shows nothing new there, so it asks nothing of the issue).
    assert api.registry.enqueued.count(issue_key(REPO, task.issue_number)) == 2


def test_a_retried_receipt_gets_the_first_answer_and_is_stored_once(api: Api) -> None:
    """Same receipt id and content: same status and body, even after the task moved on; no
    second receipt or event. Another receipt under that id: 409 receipt_conflict."""
    token = api.register("a1")
    task = running_task(api, token)
    first = api.call("POST", "/receipts", token=token, json=receipt_body(task))
    api.registry.clock.advance(30)
    events = api.registry.store.events_for(task.id)
    again = api.call("POST", "/receipts", token=token, json=receipt_body(task))
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    # The task moves on (reviewed and completed); the retry still gets the first answer.
    done, event = transition(
        api.task(task.id), TaskState.COMPLETED, now=api.registry.clock(), actor="reconciler"
    )
    api.registry.store.record(done, event)
    late = api.call("POST", "/receipts", token=token, json=receipt_body(task))
    assert (late.status_code, late.json()) == (first.status_code, first.json())
    assert len(api.registry.store.receipts_for(task.id)) == 1
    assert api.registry.store.events_for(task.id) == [*events, event]
    changed = api.call("POST", "/receipts", token=token, json=receipt_body(task, summary="other"))
    assert (changed.status_code, error_of(changed)) == (409, "receipt_conflict")
    assert len(api.registry.store.receipts_for(task.id)) == 1


def test_a_receipt_stored_before_a_crash_moves_its_task_when_sent_again(api: Api) -> None:
    """The receipt reached the store but the task write did not: the retry finishes the move."""
    token = api.register("a1")
    task = running_task(api, token)
    body = receipt_body(task)
    api.registry.store.put_receipt(
        Receipt(
            id=ReceiptId(body["receipt_id"]),
            task_id=task.id,
            agent_id=AgentId("a1"),
            lease_generation=1,
            pr_number=7,
            branch=task.branch,
            commits=(SHA_1, SHA_2),
            summary=body["summary"],
            artifacts=({"name": "log", "url": "https://ci.example.org/1"},),  # type: ignore[arg-type]
            cost_usd=0.42,
            tokens=12_000,
            duration_s=95.5,
            session_id="sess-1",
            submitted_at=api.registry.clock(),
        )
    )
    response = api.call("POST", "/receipts", token=token, json=body)
    assert response.status_code == 201 and response.json()["task_state"] == "review_pending"
    assert api.task(task.id).state is TaskState.REVIEW_PENDING
    assert len(api.registry.store.receipts_for(task.id)) == 1


def test_a_receipt_from_another_agent_or_a_stale_lease_is_refused_with_nothing_stored(
    api: Api,
) -> None:
    """403 not_your_task, 409 stale_lease, 404 for an unknown task; no receipt, no event."""
    owner = api.register("a1")
    other = api.register("b1")
    task = running_task(api, owner)
    events = api.registry.store.events_for(task.id)
    cases = [
        (other, receipt_body(task), 403, "not_your_task"),
        (owner, receipt_body(task, lease_generation=2), 409, "stale_lease"),
        (owner, receipt_body(task, task_id="999-00000000"), 404, "task_not_found"),
    ]
    for token, body, status, code in cases:
        response = api.call("POST", "/receipts", token=token, json=body)
        assert (response.status_code, error_of(response)) == (status, code), body
    # The owner's lease superseded: requeued and taken by the other agent.
    api.registry.clock.advance(181)
    assert api.call("POST", "/agents/heartbeat", token=other, json={}).status_code == 200
    api.registry.reconcile("a1")
    assert api.dequeue(other).json()["lease_generation"] == 2
    late = api.call("POST", "/receipts", token=owner, json=receipt_body(task))
    assert (late.status_code, error_of(late)) == (409, "stale_lease")
    assert api.registry.store.receipts_for(task.id) == []
    assert [e for e in api.registry.store.events_for(task.id) if e.kind == "receipt"] == []
    assert len(api.registry.store.events_for(task.id)) == len(events) + 3  # lost, requeued, taken


@pytest.mark.parametrize(
    ("content", "mentioned"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"task_id": "x", "lease_generation": 1}).encode(), "receipt_id"),
        (None, "commits"),  # a commit that is not a SHA
        (None, "cost_usd"),  # a negative cost
        (None, "unknown field"),
        (None, "url"),  # an artifact that is not a link
    ],
)
def test_a_malformed_receipt_is_400_with_a_json_error_and_nothing_stored(
    api: Api, content: bytes | None, mentioned: str
) -> None:
    """Never a 500; the message names the problem; the task is untouched."""
    token = api.register("a1")
    task = running_task(api, token)
    if content is None:
        broken = {
            "commits": receipt_body(task, commits=["not-a-sha"]),
            "cost_usd": receipt_body(task, cost_usd=-1),
            "unknown field": receipt_body(task, pr_url="https://x"),
            "url": receipt_body(task, artifacts=[{"name": "x", "url": "file:///etc/passwd"}]),
        }[mentioned]
        content = json.dumps(broken).encode()
    response = api.call(
        "POST",
        "/receipts",
        token=token,
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert error_of(response) in ("malformed_json", "invalid_body")
    assert mentioned in response.json()["message"]
    assert api.registry.store.receipts_for(task.id) == []
    assert api.task(task.id).state is TaskState.RUNNING


def test_receipts_need_an_agent_token(api: Api) -> None:
    """401 without a token or with the operator token (operators hand in no receipts)."""
    api.register("a1")
    anonymous = api.http.post("/api/v1/receipts", json={})
    assert (anonymous.status_code, error_of(anonymous)) == (401, "missing_token")
    operator = api.call("POST", "/receipts", token=OPERATOR, json={})
    assert (operator.status_code, error_of(operator)) == (401, "unknown_token")
