"""Questions and decisions end to end: the real `claude` and `codex` CLIs, run by a pull worker
against the daemon and the in-memory Forgejo, with the model-API stand-in scripted to call the
fleet's `ask`/`decide` tools. The question becomes an issue the task depends on, the task waits,
a maintainer's answer (closing the issue) requeues it, and the answer is in the next prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.agent.config import WorkerConfig
from reconciler.agent.worker import Worker
from reconciler.console.history import task_report
from reconciler.fleet.api import TaskDetail
from reconciler.models import QuestionKind, Task, TaskState
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import AdapterSettings, McpSettings
from tests.modelapi import ModelApiStandIn, Script
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_agent_clis import (  # noqa: F401  (fixtures: agent_clis, home)
    CLAUDE_ADAPTER,
    CODEX_ADAPTER,
    _with_binary,
    agent_clis,
    home,
)
from tests.test_worker import daemon_settings, queue_issues, wait_until, worker_config
from webhook.daemon import Daemon

MAINTAINER = "alice"


@pytest.fixture
def fleet(served_forge: ForgejoSandbox, tmp_path: Path) -> Iterator[Daemon]:
    """The daemon against the served Forgejo, with a maintainer (write access) to answer."""
    settings = daemon_settings(served_forge.url, served_forge.admin_token, tmp_path / "daemon")
    settings = settings.model_copy(update={"mcp": McpSettings(max_questions_per_task=2)})
    served_forge.create_user(MAINTAINER)
    with httpx.Client(base_url=f"{served_forge.url}/api/v1",
                      headers={"Authorization": f"token {served_forge.admin_token}"}) as admin:  # fmt: skip
        admin.put(
            f"/repos/{DEMO_REPO}/collaborators/{MAINTAINER}", json={"permission": "write"}
        ).raise_for_status()
    running = Daemon(settings)
    running.start()
    yield running
    running.stop()


def cli_setup(
    name: str, binary: str, model_api: ModelApiStandIn, cli_home: Path
) -> tuple[AdapterSettings, Any]:
    """The adapter of CLI ``name`` and a function giving its environment for a script."""
    if name == "claude":
        return _with_binary(CLAUDE_ADAPTER, binary), lambda base: model_api.claude_env(
            base, home=cli_home
        )
    return _with_binary(CODEX_ADAPTER, binary), lambda base: model_api.codex_env(
        base, home=cli_home
    )


def run_once(config: WorkerConfig, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One task through a pull worker whose CLI sees ``env`` (the worker passes its own)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Worker(config).run(once=True)


def text_of(body: Any) -> str:
    """Every string in a model request's body, joined: where the prompt is, whatever the API."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        return "\n".join(text_of(v) for v in body.values())
    if isinstance(body, list):
        return "\n".join(text_of(v) for v in body)
    return ""


def forge_json(forge: ForgejoSandbox, path: str) -> Any:
    with httpx.Client(base_url=f"{forge.url}/api/v1",
                      headers={"Authorization": f"token {forge.admin_token}"}) as client:  # fmt: skip
        answer = client.get(path)
        answer.raise_for_status()
        return answer.json()


def asked_and_waiting(fleet: Daemon, forge: ForgejoSandbox, task: Task) -> tuple[Task, int]:
    """Wait until the task waits on its question's issue; the task and that issue's number."""
    store = fleet.assembly.store

    def waiting() -> bool:
        now = store.get_task(task.id)
        return (
            now.state is TaskState.CREATED
            and now.on_hold
            and bool(now.questions)
            and now.questions[-1].issue_number is not None
        )

    wait_until("the task to wait on its question's issue", waiting, timeout=60)
    held = store.get_task(task.id)
    number = held.questions[-1].issue_number
    assert number is not None
    deps = forge_json(forge, f"/repos/{DEMO_REPO}/issues/{task.issue_number}/dependencies")
    assert [d["number"] for d in deps] == [number]
    return held, number


def answer_and_close(fleet: Daemon, forge: ForgejoSandbox, number: int, text: str) -> None:
    forge.comment(DEMO_REPO, number, text, author=MAINTAINER)
    forge.set_issue_state(DEMO_REPO, number, "closed", author=MAINTAINER)
    fleet.assembly.resync.full()  # as on its timer, should the webhook be slow


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_question_opens_a_dependency_the_task_waits_on_and_the_answer_reaches_the_prompt(
    cli: str,
    fleet: Daemon,
    served_forge: ForgejoSandbox,
    agent_clis: dict[str, str],  # noqa: F811
    model_api: ModelApiStandIn,
    home: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter, env_for = cli_setup(cli, agent_clis[cli], model_api, home)
    [task] = queue_issues(fleet, served_forge, ["Serve the API"])
    config = worker_config(tmp_path, "w1", fleet.url, adapter=adapter,
                           forgejo_token=served_forge.admin_token)  # fmt: skip
    question = "Which port should the API listen on?"
    asking = model_api.base_url(Script.mcp_call("ask", {"question": question},
                                                then="Waiting for the answer."))  # fmt: skip
    run_once(config, env_for(asking), monkeypatch)

    held, number = asked_and_waiting(fleet, served_forge, task)
    issue = forge_json(served_forge, f"/repos/{DEMO_REPO}/issues/{number}")
    assert question in issue["body"] and issue["state"] == "open"
    assert [label["name"] for label in issue["labels"]] == ["fleet/question"]
    assert held.wait_reason == f"waiting for the answer to #{number}"
    assert held.questions[0].kind is QuestionKind.QUESTION and held.questions[0].answer is None
    wait_until(
        "the status comment to say the task waits for the answer",
        lambda: any(
            f"question is answered: waiting for the answer to #{number}" in c["body"]
            for c in forge_json(
                served_forge, f"/repos/{DEMO_REPO}/issues/{task.issue_number}/comments"
            )
        ),
    )

    answer_and_close(fleet, served_forge, number, "Port 8080, as the docs say.")
    store = fleet.assembly.store
    wait_until(
        "the task to be requeued with the answer",
        lambda: (t := store.get_task(task.id)).state is TaskState.CREATED and not t.on_hold,
        timeout=60,
    )
    answered = store.get_task(task.id).questions[0]
    assert (answered.answer, answered.answered_by) == ("Port 8080, as the docs say.", MAINTAINER)
    report = task_report(TaskDetail(task=store.get_task(task.id),
                                    events=tuple(store.events_for(task.id))))  # fmt: skip
    assert f"1. question #{number}: {question}" in report
    assert f"answered ({MAINTAINER}): Port 8080, as the docs say." in report

    resumed = model_api.base_url(Script.tool_call("echo 8080 > port.txt",
                                                  then="Set the port to 8080."))  # fmt: skip
    run_once(config, env_for(resumed), monkeypatch)
    prompt = text_of(model_api.requests(resumed)[0].body)
    assert "## Answers to your questions" in prompt
    assert question in prompt and "Port 8080, as the docs say." in prompt
    # The CLI's session of the asking run is resumed: its history (the tool's answer) is sent.
    assert store.get_task(task.id).session_id
    assert "Recorded as question 1" in prompt
    wait_until(
        "the resumed task to hand in its work",
        lambda: store.get_task(task.id).state is TaskState.REVIEW_PENDING,
        timeout=60,
    )


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_decision_round_trips_with_the_option_the_maintainer_states(
    cli: str,
    fleet: Daemon,
    served_forge: ForgejoSandbox,
    agent_clis: dict[str, str],  # noqa: F811
    model_api: ModelApiStandIn,
    home: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter, env_for = cli_setup(cli, agent_clis[cli], model_api, home)
    [task] = queue_issues(fleet, served_forge, ["Store the sessions"])
    config = worker_config(tmp_path, "w1", fleet.url, adapter=adapter,
                           forgejo_token=served_forge.admin_token)  # fmt: skip
    options = ["SQLite", "PostgreSQL", "Redis"]
    deciding = model_api.base_url(Script.mcp_call(
        "decide", {"question": "Where should sessions be stored?", "options": options},
        then="Waiting for the decision."))  # fmt: skip
    run_once(config, env_for(deciding), monkeypatch)

    _, number = asked_and_waiting(fleet, served_forge, task)
    issue = forge_json(served_forge, f"/repos/{DEMO_REPO}/issues/{number}")
    assert [label["name"] for label in issue["labels"]] == ["fleet/decision"]
    assert "1. SQLite" in issue["body"] and "2. PostgreSQL" in issue["body"]

    answer_and_close(fleet, served_forge, number, "2 — we run it already.")
    store = fleet.assembly.store
    wait_until(
        "the decision to be recorded",
        lambda: store.get_task(task.id).questions[0].answer is not None,
        timeout=60,
    )
    assert store.get_task(task.id).questions[0].chosen == 2
    resumed = model_api.base_url(Script.tool_call("echo postgres > store.txt",
                                                  then="Used PostgreSQL."))  # fmt: skip
    run_once(config, env_for(resumed), monkeypatch)
    prompt = text_of(model_api.requests(resumed)[0].body)
    assert "Chosen: option 2, PostgreSQL" in prompt
