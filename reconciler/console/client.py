"""The CLI's client of a running daemon: reads the agent API with the operator token.

``agent-fleet agents``, ``agent-fleet status`` and ``agent-fleet tasks show`` (``webhook/cli.py``)
call :func:`fetch_agents`, :func:`fetch_tasks` and :func:`fetch_task`, then print with
``reconciler/console/views.py`` and ``reconciler/console/history.py``. Paths, queries and
answers are the wire contract's (``reconciler/fleet/api.py``); refusals are decoded by its
:func:`~reconciler.fleet.api.refusal`. Only reads: nothing here changes the fleet.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError

from reconciler.errors import TransientError
from reconciler.fleet import api, operations
from reconciler.fleet.api import AgentList, AgentSummary, Answer, TaskDetail, TaskList
from reconciler.fleet.operations import Operation
from reconciler.models import AgentStatus, Task, TaskState
from reconciler.settings import WebhookSettings

_Answer = TypeVar("_Answer", bound=Answer)


def daemon_url(webhook: WebhookSettings) -> str:
    """Where a local CLI reaches the daemon configured with ``webhook``; a wildcard bind
    address is reached on loopback. Raises ValueError for port 0 (a port picked at start)."""
    if webhook.port == 0:
        raise ValueError(
            "webhook.port is 0, so the daemon picked its port at start (see its log); "
            "give the daemon's URL"
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(webhook.bind, webhook.bind)
    return f"http://{f'[{host}]' if ':' in host else host}:{webhook.port}"


def fetch_agents(
    server: str,
    *,
    token: str,
    capabilities: Sequence[str] = (),
    status: AgentStatus | None = None,
    role: str | None = None,
    timeout: float = 10.0,
) -> list[AgentSummary]:
    """``GET /api/v1/agents`` from a running daemon with the operator token.

    Raises :class:`RefusedError` (401/403…) or :class:`NotFoundError` with the daemon's own
    message, and :class:`TransientError` when the daemon cannot be reached.
    """
    query = [("capability", c) for c in capabilities]
    if status is not None:
        query.append(("status", status.value))
    if role is not None:
        query.append(("role", role))
    answer = get(
        server, operations.LIST_AGENTS, AgentList, query=query, token=token, timeout=timeout
    )
    return list(answer.agents)


def fetch_tasks(
    server: str,
    *,
    token: str,
    states: Sequence[TaskState] = (),
    repo: str | None = None,
    timeout: float = 10.0,
) -> list[Task]:
    """``GET /api/v1/tasks`` from a running daemon with the operator token."""
    query = [("state", s.value) for s in states]
    if repo is not None:
        query.append(("repo", repo))
    answer = get(server, operations.LIST_TASKS, TaskList, query=query, token=token, timeout=timeout)
    return list(answer.tasks)


def fetch_task(server: str, task_id: str, *, token: str, timeout: float = 10.0) -> TaskDetail:
    """One task and its history (``GET /api/v1/tasks/{id}``) from a running daemon, with the
    operator token. Raises :class:`NotFoundError` for an unknown task, :class:`RefusedError`
    for a refused token and :class:`TransientError` when the daemon cannot be reached."""
    if not task_id.strip():
        raise ValueError("give a task id, e.g. 12-3f9a1c2b")
    return get(
        server,
        operations.GET_TASK,
        TaskDetail,
        params={"task_id": task_id},
        token=token,
        timeout=timeout,
    )


def get(
    server: str,
    operation: Operation,
    answer: type[_Answer],
    *,
    token: str,
    timeout: float,
    params: dict[str, str] | None = None,
    query: Sequence[tuple[str, str]] = (),
) -> _Answer:
    """GET one operation of a running daemon with the operator token; its answer as ``answer``.

    Raises :class:`RefusedError` (401/403…) or :class:`NotFoundError` with the daemon's own
    message, and :class:`TransientError` when the daemon cannot be reached or answers
    something that is not ``answer``.
    """
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"the daemon's address must be an http(s) URL, not {server!r}")
    url = operation.url(server, **(params or {}))
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise api.refusal(exc.code, exc.read(), url=url) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"cannot reach the agent-fleet daemon at {server}: {reason}") from None
    try:
        return answer.model_validate_json(body)
    except ValidationError as exc:
        raise TransientError(
            f"{url} answered something that is not a {answer.__name__}: {exc}"
        ) from None


__all__ = ["daemon_url", "fetch_agents", "fetch_task", "fetch_tasks", "get"]
