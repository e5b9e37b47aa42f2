"""The pull agents' task endpoints: take a task, finish it, hand in receipts — over JSON.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_tasks_api` once,
beside the agent API (``webhook/agents_api.py``), whose plumbing it shares: bearer tokens,
body validation, JSON errors. Handlers parse, authenticate and call the
:class:`~reconciler.fleet.queue.PullQueue`; they never call Forgejo. ``docs/agents-api.md`` is the
reference, ``webhook/openapi.py`` documents the same models.

| method | path                              | who                         |
|--------|-----------------------------------|-----------------------------|
| POST   | ``/api/v1/tasks/dequeue``         | a pull agent                |
| POST   | ``/api/v1/tasks/{id}/complete``   | the agent holding the task  |
| POST   | ``/api/v1/receipts``              | the agent holding the task  |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
from pydantic import BaseModel, ConfigDict, Field

from reconciler.errors import NotFoundError
from reconciler.fleet.queue import Acceptance, PullQueue, ReceiptClaim
from reconciler.models import Artifact, ReceiptId, Task, TaskId, TaskState
from webhook.agents_api import API, AgentIdText, ApiError, agent_caller, endpoint, read_body

RECEIPT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
ReceiptIdText = Annotated[
    str,
    Field(
        pattern=RECEIPT_ID_PATTERN,
        max_length=128,
        description="Chosen by the agent, unique per receipt; a retry sends the same id.",
    ),
]
CommitSha = Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")]


# --- request and answer shapes ---------------------------------------------------------------


class _Request(BaseModel):
    # A misspelt field is an error, never silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class DequeueRequest(_Request):
    """``POST /api/v1/tasks/dequeue`` (an empty body will do)."""

    agent_id: AgentIdText | None = Field(
        default=None, description="Optional; must be the token's agent when given."
    )


class TaskHandout(_Answer):
    """A task given to the calling agent, with what it needs to work on it.

    There is no prompt in it: the worker builds it from the issue with its own Forgejo token
    (the daemon's HTTP layer never calls Forgejo, and the issue is read fresh at run time).
    """

    task: Task
    lease_generation: int = Field(description="Present it with every status update and receipt.")
    attempt: int
    repo: str = Field(description="owner/name")
    issue_number: int
    issue_url: str
    branch: str = Field(description="The branch to work on and push: task/<id>-<slug>.")
    base_branch: str | None = Field(
        description="The branch to start from and open the pull request against; null: the "
        "repository's default branch (read it from Forgejo)."
    )
    clone_url: str = Field(description="git over HTTP: {forgejo.url}/{owner}/{name}.git")
    forgejo_url: str = Field(description="The Forgejo instance, for its API (…/api/v1).")
    deadline_at: datetime | None = Field(description="When the task fails if still running.")
    session_id: str | None = Field(description="The agent CLI session of an earlier attempt.")


class ArtifactItem(_Request):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://", max_length=2000)
    kind: str = Field(default="link", min_length=1, max_length=50)


class _ReceiptFields(_Request):
    receipt_id: ReceiptIdText
    lease_generation: int = Field(ge=1, description="The lease the task was assigned under.")
    branch: str = Field(default="", max_length=255)
    commits: tuple[CommitSha, ...] = Field(default=(), max_length=1000)
    summary: str = Field(default="", max_length=20_000)
    artifacts: tuple[ArtifactItem, ...] = Field(default=(), max_length=100)
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    tokens: int = Field(default=0, ge=0)
    duration_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    session_id: str | None = Field(default=None, max_length=200)

    def claim(self, task_id: str, *, pr_number: int | None) -> ReceiptClaim:
        return ReceiptClaim(
            receipt_id=ReceiptId(self.receipt_id),
            task_id=TaskId(task_id),
            lease_generation=self.lease_generation,
            pr_number=pr_number,
            branch=self.branch,
            commits=self.commits,
            summary=self.summary,
            artifacts=tuple(Artifact(name=a.name, url=a.url, kind=a.kind) for a in self.artifacts),
            cost_usd=self.cost_usd,
            tokens=self.tokens,
            duration_s=self.duration_s,
            session_id=self.session_id,
        )


class ReceiptRequest(_ReceiptFields):
    """``POST /api/v1/receipts``: what the agent did for one task, under its lease."""

    task_id: str = Field(min_length=1, max_length=100)
    pr_number: int | None = Field(
        default=None,
        ge=1,
        description="The pull request opened for the task (the task goes to review); null: "
        "a task without one (it completes, as with /tasks/{id}/complete).",
    )


class CompleteRequest(_ReceiptFields):
    """``POST /api/v1/tasks/{id}/complete``: finish a task that produces no pull request."""


class ReceiptAnswer(_Answer):
    """A receipt's answer; the same for every retry of the same receipt."""

    receipt_id: str
    task_id: str
    pr_number: int | None
    task_state: TaskState = Field(description="Where the receipt took the task.")
    verified: bool = Field(
        description=(
            "Whether the claims were checked against Forgejo: never at hand-in (the receipts "
            "controller checks them before the task is completed), so false."
        )
    )
    submitted_at: datetime = Field(description="When the receipt was first accepted.")


# --- the routes ------------------------------------------------------------------------------


def _no_content(handler: Callable[..., bottle.HTTPResponse]) -> Callable[..., bottle.HTTPResponse]:
    """Answer 204 with no body (a 204 carries none) where the handler said 204."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> bottle.HTTPResponse:
        response = handler(*args, **kwargs)
        if response.status_code == 204:
            return bottle.HTTPResponse(status=204)
        return response

    return wrapped


class _Nothing(_Answer):
    """No task for the agent now (sent as 204 without a body)."""


def install_tasks_api(app: bottle.Bottle, *, queue: PullQueue, max_body_bytes: int) -> None:
    """Add the pull agents' task routes to ``app``."""
    fleet = queue.fleet

    def answer(acceptance: Acceptance) -> tuple[int, BaseModel]:
        receipt = acceptance.receipt
        return 201, ReceiptAnswer(
            receipt_id=receipt.id,
            task_id=receipt.task_id,
            pr_number=receipt.pr_number,
            task_state=acceptance.task_state,
            verified=acceptance.verified,
            submitted_at=receipt.submitted_at,
        )

    @app.post(f"{API}/tasks/dequeue")  # type: ignore[untyped-decorator]
    @_no_content
    @endpoint
    def dequeue() -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = read_body(DequeueRequest, max_bytes=max_body_bytes)
        if request.agent_id is not None and request.agent_id != agent_id:
            raise ApiError(403, "not_your_agent", f"the token belongs to {agent_id}")
        try:
            handout = queue.dequeue(agent_id)
        except NotFoundError as exc:
            raise ApiError(404, "agent_not_found", str(exc)) from None
        if handout is None:
            return 204, _Nothing()
        task = handout.task
        return 200, TaskHandout(
            task=task,
            lease_generation=task.lease_generation,
            attempt=task.attempt,
            repo=task.repo,
            issue_number=task.issue_number,
            issue_url=handout.issue_url,
            branch=task.branch,
            base_branch=handout.base_branch,
            clone_url=handout.clone_url,
            forgejo_url=handout.forgejo_url,
            deadline_at=task.deadline_at,
            session_id=task.session_id,
        )

    @app.post(f"{API}/receipts")  # type: ignore[untyped-decorator]
    @endpoint
    def receipts() -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = read_body(ReceiptRequest, max_bytes=max_body_bytes)
        try:
            acceptance = queue.accept_receipt(
                agent_id, request.claim(request.task_id, pr_number=request.pr_number)
            )
        except NotFoundError as exc:
            raise ApiError(404, "task_not_found", str(exc)) from None
        return answer(acceptance)

    @app.post(f"{API}/tasks/<task_id>/complete")  # type: ignore[untyped-decorator]
    @endpoint
    def complete(task_id: str) -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = read_body(CompleteRequest, max_bytes=max_body_bytes)
        try:
            acceptance = queue.accept_receipt(agent_id, request.claim(task_id, pr_number=None))
        except NotFoundError as exc:
            raise ApiError(404, "task_not_found", str(exc)) from None
        return answer(acceptance)


__all__ = [
    "ArtifactItem",
    "CompleteRequest",
    "DequeueRequest",
    "ReceiptAnswer",
    "ReceiptRequest",
    "TaskHandout",
    "install_tasks_api",
]
