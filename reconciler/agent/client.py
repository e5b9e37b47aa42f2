"""The pull worker's client of the daemon's agent API, over plain HTTP (``urllib``).

:class:`~reconciler.agent.worker.Worker` holds one :class:`AgentApi` and calls it to register,
heartbeat, dequeue, report on a task and hand in receipts (the latter through
``reconciler/agent/outbox.py``). Paths, requests and answers are the wire contract's
(``reconciler/fleet/api.py``), so the worker and the daemon cannot disagree on a field.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import ValidationError

from reconciler import __version__
from reconciler.errors import TransientError
from reconciler.fleet import api, operations
from reconciler.fleet.api import (
    Answer,
    AskAnswer,
    AskRequest,
    DeregisterAnswer,
    HeartbeatAnswer,
    HeartbeatRequest,
    HeldTaskItem,
    ProgressRequest,
    ReceiptAnswer,
    ReceiptRequest,
    RegisterAnswer,
    RegisterRequest,
    Request,
    TaskBrief,
    TaskHandout,
    TaskStatusAnswer,
    TaskStatusRequest,
)
from reconciler.fleet.knowledge_api import ContextAnswer, ShareAnswer, ShareRequest
from reconciler.fleet.operations import Operation
from reconciler.models import QuestionKind

_Answer = TypeVar("_Answer", bound=Answer)


class AgentApi:
    """The daemon's agent API over HTTP, with the agent's token once it has one.

    Refusals raise the error module's classes with the daemon's code (401
    :class:`UnauthenticatedError`, 403 :class:`ForbiddenError`, 409 :class:`ConflictError`,
    404 :class:`NotFoundError`, other 4xx :class:`RefusedError`); no answer, 429 or 5xx raise
    :class:`TransientError`, and so does an answer that is not the contract's.
    """

    def __init__(self, server: str, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.token: str | None = None
        self._timeout = timeout

    def call(
        self,
        operation: Operation,
        body: Request | None,
        *,
        params: Mapping[str, str] | None = None,
        credential: str | None = None,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send ``body`` (None: none) to ``operation``; the status and the raw answer (empty
        for 204). ``credential`` None sends the agent's token; an empty one sends none;
        ``query`` is the query string's parameters."""
        token = credential if credential is not None else self.token
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = operation.url(self.server, **(params or {}))
        if query:
            url = f"{url}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(
            url,
            data=None if body is None else body.model_dump_json(exclude_defaults=True).encode(),
            headers=headers,
            method=operation.method.upper(),
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise api.refusal(exc.code, exc.read(), url=url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"cannot reach the daemon at {self.server}: {reason}") from None

    def register(self, request: RegisterRequest, *, credential: str | None) -> RegisterAnswer:
        """Register (again) with ``credential`` (None: none); keep the new token."""
        _, raw = self.call(operations.REGISTER, request, credential=credential or "")
        registered = _parse(RegisterAnswer, raw, what="the registration")
        self.token = registered.token
        return registered

    def heartbeat(self, tasks: Sequence[HeldTaskItem], *, load: float) -> HeartbeatAnswer:
        request = HeartbeatRequest(load=load, version=__version__, tasks=tuple(tasks))
        _, raw = self.call(operations.HEARTBEAT, request)
        return _parse(HeartbeatAnswer, raw, what="the heartbeat")

    def dequeue(self) -> TaskHandout | None:
        """The next task for this agent, or None when there is none now (204)."""
        status, raw = self.call(operations.DEQUEUE, api.DequeueRequest())
        return None if status == 204 else _parse(TaskHandout, raw, what="the dequeue")

    def report(
        self,
        task_id: str,
        *,
        lease_generation: int,
        running: bool = False,
        note: str = "",
        failed: bool = False,
        over_budget: bool = False,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
        waiting: bool = False,
        session_id: str | None = None,
    ) -> TaskStatusAnswer:
        request = TaskStatusRequest(
            lease_generation=lease_generation,
            state="running" if running else None,
            note=note[: api.NOTE_MAX],
            failed=failed,
            over_budget=over_budget,
            spent_usd=spent_usd,
            spent_tokens=spent_tokens,
            waiting=waiting,
            session_id=session_id,
        )
        _, raw = self.call(operations.TASK_STATUS, request, params={"task_id": task_id})
        return _parse(TaskStatusAnswer, raw, what="the status update")

    def submit_receipt(self, receipt: ReceiptRequest) -> ReceiptAnswer:
        _, raw = self.call(operations.SUBMIT_RECEIPT, receipt)
        return _parse(ReceiptAnswer, raw, what="the receipt")

    def brief(self, task_id: str, *, task_token: str | None = None) -> TaskBrief:
        """The task as the fleet sees it (the token must be the task's token: ``task_token``,
        or this client's own)."""
        _, raw = self.call(
            operations.TASK_BRIEF, None, params={"task_id": task_id}, credential=task_token
        )
        return _parse(TaskBrief, raw, what="the task brief")

    def ask(
        self,
        task_id: str,
        *,
        text: str,
        kind: QuestionKind = QuestionKind.QUESTION,
        options: Sequence[str] = (),
        role: str | None = None,
    ) -> AskAnswer:
        """Ask a question or decision about the task (the token must be the task's token)."""
        request = AskRequest(kind=kind, text=text, options=tuple(options), role=role)
        _, raw = self.call(operations.TASK_ASK, request, params={"task_id": task_id})
        return _parse(AskAnswer, raw, what="the question")

    def progress(self, task_id: str, *, percent: int, step: str) -> TaskStatusAnswer:
        """Report how far the run is (the token must be the task's token)."""
        request = ProgressRequest(percent=percent, step=step)
        _, raw = self.call(operations.TASK_PROGRESS, request, params={"task_id": task_id})
        return _parse(TaskStatusAnswer, raw, what="the progress report")

    def share_note(self, task_id: str, *, topic: str, note: str) -> ShareAnswer:
        """Share a note on ``topic`` (the token must be the task's token)."""
        request = ShareRequest(topic=topic, note=note)
        _, raw = self.call(operations.SHARE_NOTE, request, params={"task_id": task_id})
        return _parse(ShareAnswer, raw, what="the shared note")

    def read_notes(self, task_id: str, *, topic: str | None = None) -> ContextAnswer:
        """A topic's shared notes, or the topics (the token must be the task's token)."""
        _, raw = self.call(
            operations.READ_NOTES,
            None,
            params={"task_id": task_id},
            query={"topic": topic} if topic else None,
        )
        return _parse(ContextAnswer, raw, what="the shared notes")

    def deregister(self) -> DeregisterAnswer:
        """Leave the fleet: the daemon requeues this agent's tasks at once."""
        _, raw = self.call(operations.DEREGISTER, api.DeregisterRequest())
        return _parse(DeregisterAnswer, raw, what="the deregistration")


def _parse(model: type[_Answer], raw: bytes, *, what: str) -> _Answer:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise TransientError(f"the daemon's answer to {what} is not understood: {exc}") from None


__all__ = ["AgentApi"]
