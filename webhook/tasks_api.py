"""The pull agents' task endpoints: take a task, finish it, hand in receipts — over JSON.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_tasks_api` once,
beside the agent API (``webhook/agents_api.py``), whose plumbing it shares: bearer tokens,
body validation, JSON errors. Handlers parse, authenticate and call the
:class:`~reconciler.fleet.queue.PullQueue`; they never call Forgejo. ``docs/agents-api.md`` is the
reference; the requests and answers are the wire contract's (``reconciler/fleet/api.py``), from
which ``webhook/openapi.py`` documents the routes installed here.

| method | path                              | who                         |
|--------|-----------------------------------|-----------------------------|
| POST   | ``/api/v1/tasks/dequeue``         | a pull agent                |
| POST   | ``/api/v1/tasks/{id}/complete``   | the agent holding the task  |
| POST   | ``/api/v1/receipts``              | the agent holding the task  |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
from pydantic import BaseModel

from reconciler.errors import NotFoundError
from reconciler.fleet import operations
from reconciler.fleet.api import (
    Answer,
    CompleteRequest,
    DequeueRequest,
    ReceiptAnswer,
    ReceiptFields,
    ReceiptRequest,
    TaskHandout,
)
from reconciler.fleet.queue import Acceptance, PullQueue, ReceiptClaim
from reconciler.fleet.tasktokens import TaskTokens
from reconciler.models import Artifact, ReceiptId, TaskId
from webhook.agents_api import ApiError, agent_caller, endpoint, read_body, serves


def _claim(receipt: ReceiptFields, task_id: str, *, pr_number: int | None) -> ReceiptClaim:
    """What the pull queue takes from a receipt's request."""
    return ReceiptClaim(
        receipt_id=ReceiptId(receipt.receipt_id),
        task_id=TaskId(task_id),
        lease_generation=receipt.lease_generation,
        pr_number=pr_number,
        branch=receipt.branch,
        commits=receipt.commits,
        summary=receipt.summary,
        artifacts=tuple(Artifact(name=a.name, url=a.url, kind=a.kind) for a in receipt.artifacts),
        cost_usd=receipt.cost_usd,
        tokens=receipt.tokens,
        duration_s=receipt.duration_s,
        session_id=receipt.session_id,
    )


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


class _Nothing(Answer):
    """No task for the agent now (sent as 204 without a body)."""


def install_tasks_api(
    app: bottle.Bottle, *, queue: PullQueue, max_body_bytes: int, tokens: TaskTokens | None = None
) -> None:
    """Add the pull agents' task routes to ``app``; with ``tokens``, each handout carries the
    run's task token for its MCP server (docs/mcp.md)."""
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

    @serves(app, operations.DEQUEUE)
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
            task_token=tokens.issue(task.id, task.lease_generation) if tokens else None,
        )

    @serves(app, operations.SUBMIT_RECEIPT)
    @endpoint
    def receipts() -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = read_body(ReceiptRequest, max_bytes=max_body_bytes)
        try:
            acceptance = queue.accept_receipt(
                agent_id, _claim(request, request.task_id, pr_number=request.pr_number)
            )
        except NotFoundError as exc:
            raise ApiError(404, "task_not_found", str(exc)) from None
        return answer(acceptance)

    @serves(app, operations.COMPLETE)
    @endpoint
    def complete(task_id: str) -> tuple[int, BaseModel]:
        agent_id = agent_caller(fleet)
        request = read_body(CompleteRequest, max_bytes=max_body_bytes)
        try:
            acceptance = queue.accept_receipt(agent_id, _claim(request, task_id, pr_number=None))
        except NotFoundError as exc:
            raise ApiError(404, "task_not_found", str(exc)) from None
        return answer(acceptance)


__all__ = ["install_tasks_api"]
