"""The task endpoints the run's MCP server calls (``agent-fleet mcp``), under a task token.

The daemon's HTTP assembly (``webhook.daemon.http_app``) calls :func:`install_mcp_api` once,
beside the agent API whose plumbing it shares. A task token
(``reconciler/fleet/tasktokens.py``) names one task and one lease: a request for another
task's id is refused (403 ``not_your_task``), and so is a token whose lease is no longer the
task's current one, or whose task is no longer in progress (409 ``stale_lease``). Handlers
never call Forgejo; ``docs/mcp.md`` describes the tools built on these endpoints.

| method | path                             | who                          |
|--------|----------------------------------|------------------------------|
| GET    | ``/api/v1/tasks/{id}/brief``     | the task's token             |
| POST   | ``/api/v1/tasks/{id}/progress``  | the task's token             |
| POST   | ``/api/v1/tasks/{id}/questions`` | the task's token             |
| POST   | ``/api/v1/tasks/{id}/notes``     | the task's token (share)     |
| GET    | ``/api/v1/tasks/{id}/notes``     | the task's token (context)   |

The notes routes (:func:`install_notes_api`) queue a shared note in the store and answer
``context`` from what the daemon last read of the wiki (``reconciler/fleet/knowledge.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
from pydantic import BaseModel

from reconciler.errors import ConflictError, ForbiddenError, NotFoundError, UnauthenticatedError
from reconciler.fleet import operations
from reconciler.fleet.agents import Fleet
from reconciler.fleet.api import (
    AskAnswer,
    AskRequest,
    ProgressRequest,
    TaskBrief,
    TaskStatusAnswer,
)
from reconciler.fleet.knowledge import ContextQuery, KnowledgeBook, ShareRequest
from reconciler.fleet.tasktokens import TaskGrant, TaskTokens
from reconciler.models import AgentId, Task, TaskState
from webhook.agents_api import ApiError, bearer_token, endpoint, read_body, read_query, serves

_IN_PROGRESS = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})

ASKED = (
    "Recorded as question {number}. agent-fleet opens it as an issue your task depends on. "
    "Now end this run: commit the work you have so far, and finish with a one-line summary "
    "saying you are waiting for the answer. The task resumes with the answer in its prompt."
)


def progress_note(percent: int, step: str) -> str:
    """The progress event's text: ``40% · running the tests``."""
    return f"{percent}% · {step}"


def install_mcp_api(
    app: bottle.Bottle,
    *,
    fleet: Fleet,
    tokens: TaskTokens,
    max_body_bytes: int,
    knowledge: KnowledgeBook | None = None,
) -> None:
    """Add the task-token routes to ``app`` (the notes routes too, given ``knowledge``)."""

    def granted(task_id: str) -> TaskGrant:
        """The request's task token, if it is one and acts for ``task_id``."""
        token = bearer_token()
        if token is None:
            raise UnauthenticatedError(
                "missing_token", "this endpoint needs an Authorization: Bearer <task token>"
            )
        grant = tokens.check(token)
        if grant is None:
            raise UnauthenticatedError("unknown_token", "the bearer token is not a task token")
        if grant.task_id != task_id:
            raise ForbiddenError(
                "not_your_task", f"the token acts for task {grant.task_id}, not {task_id}"
            )
        return grant

    def held_task(grant: TaskGrant) -> tuple[Task, AgentId]:
        """The granted task and the agent holding it, while the grant's lease is current
        (the task alone is read: its history only where an answer shows it)."""
        task_id = grant.task_id
        try:
            task = fleet.find_task(task_id)
        except NotFoundError as exc:
            raise ApiError(404, "task_not_found", str(exc)) from None
        stale = task.lease_generation != grant.lease_generation or task.state not in _IN_PROGRESS
        if stale or task.agent_id is None:
            raise ConflictError(
                "stale_lease",
                f"lease {grant.lease_generation} on task {task.id} is no longer valid (the task "
                f"is {task.state} under lease {task.lease_generation}); stop working on it",
            )
        return task, task.agent_id

    @serves(app, operations.TASK_BRIEF)
    @endpoint
    def brief(task_id: str) -> tuple[int, BaseModel]:
        task, _ = held_task(granted(task_id))
        progress = tuple(e.reason for e in fleet.history(task.id) if e.kind == "progress")
        return 200, TaskBrief(
            task_id=task.id,
            repo=task.repo,
            issue_number=task.issue_number,
            title=task.title,
            state=task.state,
            branch=task.branch,
            lease_generation=task.lease_generation,
            attempt=task.attempt,
            review_count=task.review_count,
            review_feedback=task.review_feedback,
            deadline_at=task.deadline_at,
            progress=progress,
            questions=task.questions,
        )

    @serves(app, operations.TASK_PROGRESS)
    @endpoint
    def progress(task_id: str) -> tuple[int, BaseModel]:
        grant = granted(task_id)
        request = read_body(ProgressRequest, max_bytes=max_body_bytes)  # bad input: 400 first
        task, agent_id = held_task(grant)
        update = fleet.update_task_status(
            agent_id,
            task_id,
            lease_generation=task.lease_generation,
            note=progress_note(request.percent, request.step),
        )
        return 200, TaskStatusAnswer(task=update.task, changed=update.changed)

    @serves(app, operations.TASK_ASK)
    @endpoint
    def ask(task_id: str) -> tuple[int, BaseModel]:
        grant = granted(task_id)
        request = read_body(AskRequest, max_bytes=max_body_bytes)  # bad input: 400 first
        task, agent_id = held_task(grant)
        try:
            question = fleet.ask(
                agent_id,
                task_id,
                lease_generation=task.lease_generation,
                kind=request.kind,
                text=request.text,
                options=request.options,
                role=request.role,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_body", str(exc)) from None
        return 201, AskAnswer(question=question, instruction=ASKED.format(number=question.number))

    if knowledge is not None:
        install_notes_api(
            app,
            knowledge=knowledge,
            granted=granted,
            held_task=held_task,
            max_body_bytes=max_body_bytes,
        )


def install_notes_api(
    app: bottle.Bottle,
    *,
    knowledge: KnowledgeBook,
    granted: Callable[[str], TaskGrant],
    held_task: Callable[[TaskGrant], tuple[Task, AgentId]],
    max_body_bytes: int,
) -> None:
    """The ``share`` and ``context`` routes, under the same task-token checks."""

    @serves(app, operations.SHARE_NOTE)
    @endpoint
    def share(task_id: str) -> tuple[int, BaseModel]:
        grant = granted(task_id)
        request = read_body(ShareRequest, max_bytes=max_body_bytes)  # bad input: 400 first
        task, _ = held_task(grant)
        return 201, knowledge.share(task, request)

    @serves(app, operations.READ_NOTES)
    @endpoint
    def context(task_id: str) -> tuple[int, BaseModel]:
        grant = granted(task_id)
        query = read_query(ContextQuery)
        task, _ = held_task(grant)
        return 200, knowledge.context(task.repo, query.topic)


__all__ = ["install_mcp_api", "install_notes_api", "progress_note"]
