"""End to end through review: real Forgejo webhook payloads → the daemon's receiver → the queue
→ the review, receipts and assignment controllers → Forgejo and the store.

The payloads are the recorded ones in ``tests/data/forgejo/examples/``, changed only in
repository, branch and numbers, signed and posted to the daemon's real HTTP server; the
sandbox's own webhooks are off, so nothing else drives the loop. Tasks run through the real
``HostExecutor`` on localhost with the deterministic demo agent, its prompt recorded on the
way in. The loop is drained in the test's thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from controllers.assignment import STATUS_SETTLE
from controllers.receipts import RESULT_MARKER
from reconciler.console.client import fetch_task
from reconciler.forgejo.gateway import marker_tag
from reconciler.forgejo.types import PullRequest
from reconciler.keys import pull_key
from reconciler.models import (
    AgentId,
    AgentStatus,
    ExecutionMode,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ApiSettings,
    ForgejoSettings,
    HostSettings,
    LoopSettings,
    RetriesSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from tests.forgejo_data import EXAMPLES
from tests.sandbox_fixtures import DEMO_REPO, ManualClock
from webhook.cli import main
from webhook.daemon import Assembly, build, http_app, prepare_repos
from webhook.server import HttpServer

SECRET = "review-flow-secret"
OPERATOR = "review-flow-operator-token"
HOST = "local"
RUN_TIMEOUT = 60.0

# (X-Forgejo-Event, X-Forgejo-Event-Type) per recorded payload, from examples/SOURCES.md.
EVENTS = {
    "issues-opened": ("issues", "issues"),
    "push": ("push", "push"),
    "pull_request-opened": ("pull_request", "pull_request"),
    "pull_request-synchronized": ("pull_request", "pull_request_sync"),
    "pull_request-merged-legacy": ("pull_request", "pull_request"),
    "pull_request_review-rejected": ("pull_request_rejected", "pull_request_review_rejected"),
}


def recorded(name: str, *, number: int | None = None, branch: str | None = None) -> bytes:
    """A recorded payload with the repository, branch and number made ours; nothing else."""
    payload: dict[str, Any] = json.loads((EXAMPLES / f"webhook-{name}.json").read_text())
    owner, repo = DEMO_REPO.split("/")

    def ours(repository: dict[str, Any]) -> None:
        repository["full_name"], repository["name"] = DEMO_REPO, repo
        if isinstance(repository.get("owner"), dict):
            repository["owner"]["login"] = repository["owner"]["username"] = owner

    ours(payload["repository"])
    if number is not None:
        payload["number"] = number
        for field in ("pull_request", "issue"):
            if isinstance(payload.get(field), dict):
                payload[field]["number"] = number
    pull = payload.get("pull_request")
    if isinstance(pull, dict):
        for side in ("head", "base"):
            if isinstance(pull[side].get("repo"), dict):
                ours(pull[side]["repo"])
        if branch is not None:
            pull["head"]["ref"] = pull["head"]["label"] = branch
    if "ref" in payload and branch is not None:
        payload["ref"] = f"refs/heads/{branch}"
    return json.dumps(payload, indent=2).encode()


@dataclass
class Flow:
    forge: ForgejoSandbox
    assembly: Assembly
    server: HttpServer
    clock: ManualClock
    prompts: Path

    @property
    def store(self) -> Store:
        return self.assembly.store

    def deliver(self, name: str, *, number: int | None = None, branch: str | None = None) -> None:
        """POST a recorded payload, signed, as Forgejo would; then run the loop dry."""
        body = recorded(name, number=number, branch=branch)
        event, event_type = EVENTS[name]
        response = httpx.post(
            f"{self.server.url}/webhooks/forgejo",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Forgejo-Event": event,
                "X-Forgejo-Event-Type": event_type,
                "X-Forgejo-Delivery": str(uuid.uuid4()),
                "X-Forgejo-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            },
        )
        assert response.status_code == 202, response.text
        self.settle()

    def settle(self) -> None:
        """Drain the loop, wait for every run it started, and drain again until quiet."""
        executor = self.assembly.executor
        assert executor is not None
        for _ in range(20):
            self.assembly.loop.drain()
            running = executor.running()
            if not running:
                self.assembly.loop.drain()
                return
            for task_id in running:
                assert executor.wait(task_id, timeout=RUN_TIMEOUT), f"run of {task_id} hangs"
        raise AssertionError("the loop kept starting runs")

    def past_label_hold(self) -> None:
        """Let STATUS_SETTLE pass (the test's clock, and the queue's real one for the look the
        held status label asked for), then run the loop dry: held labels are written."""
        self.clock.advance(STATUS_SETTLE)
        time.sleep(STATUS_SETTLE + 0.3)
        self.settle()

    def task(self, number: int) -> Task:
        return self.store.get_task(task_id_for(DEMO_REPO, number))

    def labels(self, number: int) -> set[str]:
        return set(self.assembly.gateway.get_issue(DEMO_REPO, number).labels)

    def result_comments(self, number: int) -> list[str]:
        tag = marker_tag(RESULT_MARKER)
        return [
            c.body for c in self.assembly.gateway.list_comments(DEMO_REPO, number) if tag in c.body
        ]

    def prompts_seen(self) -> list[str]:
        text = self.prompts.read_text() if self.prompts.exists() else ""
        return [p for p in text.split("\n=====PROMPT-END=====\n") if p]

    def stored_task(
        self, title: str, *, state: TaskState, agent: str = "puller", **changes: object
    ) -> tuple[Task, int]:
        """An issue and a task the store holds already, as if an agent had it (no run here)."""
        number = self.forge.create_issue(DEMO_REPO, title, labels=["fleet/task"])
        tid = task_id_for(DEMO_REPO, number)
        now = self.clock()
        task = Task(
            id=tid, repo=RepoName(DEMO_REPO), issue_number=number, title=title, state=state,
            agent_id=AgentId(agent), lease_generation=1, attempt=1, branch=branch_for(tid, title),
            created_at=now, updated_at=now, last_activity_at=now,
        )  # fmt: skip
        task = Task.model_validate({**task.model_dump(), **changes})
        self.store.put_task(task)
        return task, number


def recording_agent(prompts: Path) -> AdapterSettings:
    """The demo agent CLI, with each prompt it gets appended to ``prompts`` first."""
    script = (
        f'printf "%s\\n=====PROMPT-END=====\\n" "$1" >> {shlex.quote(str(prompts))}; '
        f'exec {shlex.quote(sys.executable)} -m reconciler.agent.demo_agent "$1"'
    )
    return AdapterSettings(command=("sh", "-c", script, "agent", "{prompt}"), parser="claude-json")


def flow_settings(forge: ForgejoSandbox, tmp_path: Path, **sections: object) -> Settings:
    prompts = tmp_path / "prompts.txt"
    return Settings(
        forgejo=ForgejoSettings(
            url=forge.url, token=SecretStr(forge.admin_token), repos=(DEMO_REPO,),
            bot_login=forge.admin_login,
        ),
        webhook=WebhookSettings(secret=SecretStr(SECRET), port=1),
        api=ApiSettings(operator_token=SecretStr(OPERATOR)),
        loop=LoopSettings(resync_interval=3600),
        store=StoreSettings(path=tmp_path / "state"),
        hosts=(
            HostSettings(name=HOST, address="localhost", agent_type="demo-agent", adapter="demo-agent",
                         roles=("developer",), workdir=str(tmp_path / "work"), min_free_disk_mb=1),
        ),
        adapters={"demo-agent": recording_agent(prompts)},
        **sections,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def make_flow(served_forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path,
              isolated_git: None) -> Iterator[Any]:  # fmt: skip
    started: list[Flow] = []

    def start(**sections: object) -> Flow:
        settings = flow_settings(served_forge, tmp_path, **sections)
        store = Store.open(tmp_path / "state")
        assembly = build(settings, store=store, clock=forge_clock)
        server = HttpServer(http_app(assembly, readiness=dict), host="127.0.0.1", port=0)
        server.start()
        served_forge.webhooks_enabled = False  # only the recorded payloads drive the loop
        served_forge.create_user("alice")
        served_forge.create_user("pull-agent")
        with httpx.Client(base_url=f"{served_forge.url}/api/v1",
                          headers={"Authorization": f"token {served_forge.admin_token}"}) as admin:  # fmt: skip
            for login in ("alice", "pull-agent"):
                admin.put(
                    f"/repos/{DEMO_REPO}/collaborators/{login}", json={"permission": "write"}
                ).raise_for_status()
        prepare_repos(assembly)
        assembly.resync.full()
        assembly.probes.run_due()  # the local host is health-checked and comes online
        flow = Flow(served_forge, assembly, server, forge_clock, tmp_path / "prompts.txt")
        flow.settle()
        host = assembly.store.get_agent(HOST)
        assert host.status is AgentStatus.ONLINE and host.mode is ExecutionMode.SSH, (
            host.status_reason
        )
        started.append(flow)
        return flow

    yield start
    for flow in started:
        executor = flow.assembly.executor
        if executor is not None:
            executor.shutdown(timeout=10)
        flow.server.stop()
        flow.assembly.gateway.close()
        flow.store.close()


def test_a_task_goes_through_a_rejected_review_to_a_verified_merge(make_flow: Any) -> None:
    """Issue → run → PR in review → REQUEST_CHANGES → rerun on the same agent with the review
    in its prompt → back in review → merged → receipt verified → completed, status/done, one
    result comment; every step in the task's history; redeliveries and a resync change nothing."""
    flow: Flow = make_flow()
    number = flow.forge.create_issue(
        DEMO_REPO, "Add a --version flag", body="## Goal\nPrint the version.", labels=["fleet/task"]
    )
    flow.deliver("issues-opened", number=number)
    first = flow.task(number)
    assert first.state is TaskState.REVIEW_PENDING, flow.store.events_for(first.id)[-1].reason
    assert first.pr_number is not None and first.agent_id == HOST
    assert "status/review" not in flow.labels(number), "held until it has lasted STATUS_SETTLE"
    flow.past_label_hold()
    assert "status/review" in flow.labels(number)
    pr = first.pr_number
    verified = [e for e in flow.store.events_for(first.id) if e.kind == "verification"]
    assert len(verified) == 5 and all(e.data["outcome"] == "passed" for e in verified)

    flow.forge.review(
        DEMO_REPO, pr, "REQUEST_CHANGES", body="Also print it with -V, please.", author="alice"
    )
    flow.deliver("pull_request_review-rejected", number=pr, branch=first.branch)
    second = flow.task(number)
    assert second.state is TaskState.REVIEW_PENDING, flow.store.events_for(second.id)[-1].reason
    assert (second.review_count, second.attempt, second.lease_generation) == (1, 2, 2)
    assert second.agent_id == HOST and second.previous_agent == HOST
    prompts = flow.prompts_seen()
    assert len(prompts) == 2
    assert "Also print it with -V, please." not in prompts[0]
    assert "Also print it with -V, please." in prompts[1] and "attempt 2" in prompts[1]
    commits = flow.assembly.gateway.list_pull_commits(DEMO_REPO, pr)
    assert len(commits) == 2, "the rerun pushed onto the same pull request"

    flow.forge.review(DEMO_REPO, pr, "APPROVED", author="alice")
    flow.forge.merge(DEMO_REPO, pr)
    flow.deliver("pull_request-merged-legacy", number=pr, branch=first.branch)
    done = flow.task(number)
    assert done.state is TaskState.COMPLETED
    assert "status/done" in flow.labels(number)
    [comment] = flow.result_comments(number)
    assert "✅ **Done**" in comment and f"/pulls/{pr}" in comment and "fleet-notes/" in comment
    assert "| Attempts | 2 (1 review round(s) asking for changes) |" in comment
    host = flow.store.get_agent(HOST)
    assert host.stats.tasks_completed == 1

    history = flow.store.events_for(done.id)
    moves = [(e.from_state, e.to_state) for e in history if e.kind == "transition"]
    assert moves == [
        (None, TaskState.CREATED),
        (TaskState.CREATED, TaskState.ASSIGNED),
        (TaskState.ASSIGNED, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.REVIEW_PENDING),
        (TaskState.REVIEW_PENDING, TaskState.CREATED),
        (TaskState.CREATED, TaskState.ASSIGNED),
        (TaskState.ASSIGNED, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.REVIEW_PENDING),
        (TaskState.REVIEW_PENDING, TaskState.COMPLETED),
    ]
    kinds = {e.kind for e in history}
    assert {"receipt", "verification", "review"} <= kinds
    assert [e.data["state"] for e in history if e.kind == "review"] == [
        "REQUEST_CHANGES",
        "APPROVED",
    ]

    writes, events = flow.assembly.gateway.writes, len(history)
    flow.deliver("pull_request-merged-legacy", number=pr, branch=first.branch)
    flow.deliver("pull_request_review-rejected", number=pr, branch=first.branch)
    flow.assembly.resync.full()
    flow.settle()
    assert flow.assembly.gateway.writes == writes
    assert len(flow.store.events_for(done.id)) == events
    assert len(flow.result_comments(number)) == 1


def test_tasks_show_prints_the_whole_history_through_the_daemon(
    make_flow: Any, tmp_path: Path
) -> None:
    """agent-fleet tasks show ID asks the daemon's API and prints the task with every event:
    created, assigned with its lease, running, the PR, the receipt, each verification, review."""
    flow: Flow = make_flow()
    number = flow.forge.create_issue(
        DEMO_REPO, "Add a --quiet flag", body="## Goal\nBe quiet.", labels=["fleet/task"]
    )
    flow.deliver("issues-opened", number=number)
    task = flow.task(number)
    assert task.pr_number is not None
    flow.forge.review(
        DEMO_REPO, task.pr_number, "REQUEST_CHANGES", body="Shorter, please.", author="alice"
    )
    flow.store.put_task(
        task.model_copy(update={"review_count": flow.assembly.settings().retries.max_review_rounds})
    )
    flow.deliver("pull_request_review-rejected", number=task.pr_number, branch=task.branch)

    history = fetch_task(flow.server.url, task.id, token=OPERATOR)
    assert history.task.state is TaskState.FAILED and len(history.events) == len(
        flow.store.events_for(task.id)
    )
    config = tmp_path / "cli.toml"
    config.write_text(f'[forgejo]\nurl = "{flow.forge.url}"\ntoken = "t"\nbot_login = "b"\n')
    result = CliRunner().invoke(
        main,
        [
            "tasks",
            "show",
            task.id,
            "--config",
            str(config),
            "--server",
            flow.server.url,
            "--token",
            OPERATOR,
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"task {task.id}  {DEMO_REPO}#{number}  Add a --quiet flag")
    assert "failed (not retried): changes were requested in 4 review rounds" in text
    for line in ("new → created", "created → assigned", "assigned to local (lease 1)", "assigned → running",
                 "running → review_pending", f"pull request #{task.pr_number} opened", "receipt",
                 "verification ✓", "pull_request passed", "alice requested changes: Shorter, please.",
                 "review_pending → failed"):  # fmt: skip
        assert line in text, line
    missing = CliRunner().invoke(
        main,
        [
            "tasks",
            "show",
            "9-00000000",
            "--config",
            str(config),
            "--server",
            flow.server.url,
            "--token",
            OPERATOR,
        ],
    )
    assert missing.exit_code == 1 and "no task '9-00000000'" in missing.output, missing.output


def test_push_and_opened_payloads_move_a_pull_agents_task_to_review(make_flow: Any) -> None:
    """A pull agent pushes (last_activity_at moves) and opens a PR but sends no receipt: once
    the receipt grace is over, the opened PR puts the task in review; the same delivery again
    writes nothing."""
    flow: Flow = make_flow()
    task, number = flow.stored_task("Tidy the docs", state=TaskState.RUNNING)
    flow.clock.advance(30)
    flow.forge.push(
        DEMO_REPO,
        task.branch,
        files={"docs/tidy.md": "tidy\n"},
        message="Tidy",
        author="pull-agent",
    )
    flow.deliver("push", branch=task.branch)
    pushed = flow.task(number)
    assert pushed.last_activity_at == flow.clock() and pushed.state is TaskState.RUNNING

    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title="Tidy the docs", author="pull-agent")
    flow.deliver("pull_request-opened", number=pr, branch=task.branch)
    assert flow.task(number).state is TaskState.RUNNING, "the agent still has time for its receipt"
    flow.clock.advance(flow.assembly.settings().review.receipt_grace)
    flow.deliver("pull_request-synchronized", number=pr, branch=task.branch)
    in_review = flow.task(number)
    assert in_review.state is TaskState.REVIEW_PENDING and in_review.pr_number == pr
    assert "status/review" in flow.labels(number)
    writes, events = flow.assembly.gateway.writes, len(flow.store.events_for(task.id))
    flow.deliver("pull_request-opened", number=pr, branch=task.branch)
    assert flow.assembly.gateway.writes == writes
    assert len(flow.store.events_for(task.id)) == events


def test_a_pull_request_delivery_reads_the_pull_request_and_not_its_branch(
    make_flow: Any,
) -> None:
    """A task PR's `pull_request` deliveries enqueue its review key alone: their reconciles read
    the PR (`get_pull`) and take the branch's tip from its head, a push whose own delivery was
    lost included — no `get_branch`, no `find_pull_by_head`."""
    flow: Flow = make_flow()
    task, number = flow.stored_task("Tidy the tests", state=TaskState.RUNNING)
    operations: list[str] = []
    counted = flow.assembly.gateway._on_call

    def on_call(operation: str, status: int) -> None:
        operations.append(operation)
        if counted is not None:
            counted(operation, status)

    flow.assembly.gateway._on_call = on_call
    for round_ in range(2):
        flow.clock.advance(30)
        tip = flow.forge.push(
            DEMO_REPO,
            task.branch,
            files={"tests/tidy.py": f"{round_}\n"},
            message=f"Tidy {round_}",
            author="pull-agent",
        )
        if round_ == 0:
            pr = flow.forge.open_pull(
                DEMO_REPO, task.branch, title="Tidy the tests", author="pull-agent"
            )
            flow.deliver("pull_request-opened", number=pr, branch=task.branch)
        else:
            flow.deliver("pull_request-synchronized", number=pr, branch=task.branch)
        seen = flow.task(number)
        assert seen.branch_head == tip and seen.last_activity_at == flow.clock()
        assert seen.pr_number == pr and seen.state is TaskState.RUNNING
    assert operations.count("get_pull") == 2, operations
    assert "get_branch" not in operations and "find_pull_by_head" not in operations, operations


def test_a_fresh_look_at_a_pull_request_drops_its_kept_copy(make_flow: Any) -> None:
    """A pull request key added for a fresh look (a delivery, the resync) drops the copy kept
    from the PR's last read, so a receipt is not checked against a PR that may have moved; a
    follow-up of work under way (an urgent key) keeps it."""
    flow: Flow = make_flow()
    task, _ = flow.stored_task("Tidy the docs", state=TaskState.RUNNING)
    flow.forge.push(DEMO_REPO, task.branch, files={"docs/tidy.md": "x\n"}, message="Tidy",
                    author="pull-agent")  # fmt: skip
    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title="Tidy the docs", author="pull-agent")
    gateway, queue = flow.assembly.gateway, flow.assembly.queue
    gateway.get_pull(DEMO_REPO, pr)
    queue.add_urgent(pull_key(DEMO_REPO, pr))
    assert gateway.seen.kept(DEMO_REPO, pr, PullRequest) is not None
    queue.add(pull_key(DEMO_REPO, pr))
    assert gateway.seen.kept(DEMO_REPO, pr, PullRequest) is None
    flow.settle()


def test_past_the_review_limit_the_task_fails(make_flow: Any) -> None:
    """max_review_rounds = 1 and one round used: the next change request fails the task."""
    flow: Flow = make_flow(retries=RetriesSettings(max_review_rounds=1))
    task, number = flow.stored_task(
        "Rename the flag", state=TaskState.REVIEW_PENDING, review_count=1
    )
    flow.forge.push(
        DEMO_REPO, task.branch, files={"flag.py": "x\n"}, message="Rename", author="pull-agent"
    )
    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title=task.title, author="pull-agent")
    flow.store.put_task(flow.task(number).model_copy(update={"pr_number": pr}))
    flow.forge.review(DEMO_REPO, pr, "REQUEST_CHANGES", body="Still wrong.", author="alice")
    flow.deliver("pull_request_review-rejected", number=pr, branch=task.branch)
    failed = flow.task(number)
    assert failed.state is TaskState.FAILED and not failed.failure_retryable
    assert failed.review_count == 2 and "the limit is 1" in failed.failure_reason
    assert "status/failed" in flow.labels(number)


def test_a_pull_request_closed_unmerged_fails_the_task(make_flow: Any) -> None:
    """Closed without merge: failed with that reason, status/failed, not retried."""
    flow: Flow = make_flow()
    task, number = flow.stored_task("Drop the cache", state=TaskState.REVIEW_PENDING)
    flow.forge.push(
        DEMO_REPO,
        task.branch,
        files={"cache.py": None, "x.py": "x\n"},
        message="Drop",
        author="pull-agent",
    )
    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title=task.title, author="pull-agent")
    flow.assembly.gateway.edit_issue(DEMO_REPO, pr, state="closed")
    flow.deliver("pull_request-merged-legacy", number=pr, branch=task.branch)  # action: closed
    failed = flow.task(number)
    assert failed.state is TaskState.FAILED and not failed.failure_retryable
    assert failed.failure_reason == f"pull request #{pr} was closed without being merged"
    assert "status/failed" in flow.labels(number)


def test_a_merge_whose_webhook_was_lost_is_found_by_the_resync(make_flow: Any) -> None:
    """No webhook for the merge: the next incremental resync lists the changed PR and the task
    completes from the receipt made from it."""
    flow: Flow = make_flow()
    task, number = flow.stored_task("Fix typo", state=TaskState.REVIEW_PENDING)
    flow.forge.push(
        DEMO_REPO, task.branch, files={"typo.md": "fixed\n"}, message="Typo", author="pull-agent"
    )
    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title=task.title, author="pull-agent")
    flow.store.put_task(flow.task(number).model_copy(update={"pr_number": pr}))
    flow.clock.advance(60)
    flow.forge.merge(DEMO_REPO, pr)
    flow.clock.advance(60)
    assert flow.assembly.resync.incremental() >= 1
    flow.settle()
    done = flow.task(number)
    assert done.state is TaskState.COMPLETED
    assert [r.id for r in flow.store.receipts_for(done.id)] == [f"{done.id}-pr{pr}"]
    assert len(flow.result_comments(number)) == 1


def test_a_task_rebuilt_in_review_finds_its_merged_pull_request_through_the_resync(
    make_flow: Any,
) -> None:
    """In review with no pull request recorded (as a task rebuilt from its status label is) and
    its PR merged unseen: the full resync names it by its branch, whose key looks the PR up —
    the one branch key that does — and the task completes from it."""
    flow: Flow = make_flow()
    task, number = flow.stored_task("Fix the link", state=TaskState.REVIEW_PENDING)
    assert task.pr_number is None
    flow.forge.push(
        DEMO_REPO, task.branch, files={"link.md": "fixed\n"}, message="Link", author="pull-agent"
    )
    pr = flow.forge.open_pull(DEMO_REPO, task.branch, title=task.title, author="pull-agent")
    flow.forge.merge(DEMO_REPO, pr)
    flow.assembly.resync.full()
    flow.settle()
    done = flow.task(number)
    assert done.state is TaskState.COMPLETED and done.pr_number == pr
    assert [r.id for r in flow.store.receipts_for(done.id)] == [f"{done.id}-pr{pr}"]
