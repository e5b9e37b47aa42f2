"""The agent API's operations: each route, who may call it, what goes in and comes out, and
its documented refusals — the other half of the wire contract, built on the models of
``reconciler/fleet/api.py``.

The server installs each route from its :class:`Operation` (``webhook.agents_api.serves``),
the OpenAPI document (``webhook/openapi.py``) is generated from the operations so installed,
and the clients (``reconciler/agent/client.py``, ``reconciler/console/client.py``) build
their URLs with :meth:`Operation.url`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from reconciler.fleet.api import (
    AgentList,
    AgentQuery,
    AgentSummary,
    Answer,
    AskAnswer,
    AskRequest,
    CompleteRequest,
    DequeueRequest,
    DeregisterAnswer,
    DeregisterRequest,
    DrainRequest,
    HeartbeatAnswer,
    HeartbeatRequest,
    ProgressRequest,
    Query,
    ReceiptAnswer,
    ReceiptRequest,
    RegisterAnswer,
    RegisterRequest,
    Request,
    TaskBrief,
    TaskDetail,
    TaskHandout,
    TaskList,
    TaskQuery,
    TaskStatusAnswer,
    TaskStatusRequest,
)
from reconciler.fleet.knowledge_api import ContextAnswer, ContextQuery, ShareAnswer, ShareRequest

API = "/api/v1"

Who = Literal["agent", "operator", "agent_or_operator", "registration", "anyone", "task"]


@dataclass(frozen=True)
class Operation:
    """One operation of the API: its route, who may call it, what goes in and comes out, and
    its documented refusals (status → codes)."""

    method: Literal["get", "post"]
    path: str  # OpenAPI style: /api/v1/agents/{agent_id}
    operation_id: str
    summary: str
    who: Who
    status: int
    answer: type[Answer] | None  # None: not one of these models (the OpenAPI document)
    answer_text: str
    request: type[Request] | None = None
    query: type[Query] | None = None
    errors: Mapping[int, str] = field(default_factory=dict)
    path_params: Mapping[str, str] = field(default_factory=dict)  # name → description
    no_content: str = ""  # when set, the operation may also answer 204 without a body

    @property
    def route(self) -> str:
        """The path as a Bottle route: ``{agent_id}`` → ``<agent_id>``."""
        return self.path.replace("{", "<").replace("}", ">")

    def url(self, server: str, **params: str) -> str:
        """The operation's URL on ``server`` with its path parameters filled in (quoted)."""
        path = self.path.format(**{k: urllib.parse.quote(v, safe="") for k, v in params.items()})
        return f"{server.rstrip('/')}{path}"


_AUTH = {401: "`missing_token`, `unknown_token`", 403: "`not_your_agent`, `operator_only`"}
_BODY = {400: "`malformed_json`, `invalid_body` (unknown fields included)", 413: "`body_too_large`"}
_RECEIPT = {
    **_BODY,
    401: _AUTH[401],
    403: "`not_your_task`: the agent never held the task under that lease",
    404: "`task_not_found`",
    409: "`stale_lease`, `illegal_transition` (the task is not running), `receipt_conflict` "
    "(another receipt under this id), `task_changed`",
}
_AGENT_ID = {"agent_id": "The agent's id."}
_TASK_ID = {"task_id": "The task's id, e.g. 12-3f9a1c2b."}
_ACCEPTED = "Accepted (a retry of the same receipt gets the same answer)."

REGISTER = Operation(
    "post", f"{API}/agents/register", "registerAgent",
    "Register an agent, or register an existing id again (updating it, new token).",
    "registration", 201, RegisterAnswer, "Registered a new agent (200: an existing id again).",
    request=RegisterRequest,
    errors={
        **_BODY,
        401: "`missing_token`: the enrolment secret or the id's token is needed",
        403: "`registration_refused`: neither the enrolment secret nor the id's token",
        409: "`agent_id_conflict`: the id is an ssh host from the configuration",
    },
)  # fmt: skip
HEARTBEAT = Operation(
    "post", f"{API}/agents/heartbeat", "heartbeat",
    "Say the agent is alive; the answer lists the tasks it must stop.",
    "agent", 200, HeartbeatAnswer, "Recorded.",
    request=HeartbeatRequest,
    errors={
        **_BODY, 401: _AUTH[401], 403: "`not_your_agent`",
        409: "`agent_deregistered`: register again to rejoin",
    },
)  # fmt: skip
DEREGISTER = Operation(
    "post", f"{API}/agents/deregister", "deregisterAgent",
    "Leave the fleet: the agent goes offline and its tasks are requeued.",
    "agent", 200, DeregisterAnswer, "Deregistered.",
    request=DeregisterRequest,
    errors={**_BODY, 401: _AUTH[401], 403: "`not_your_agent`"},
)  # fmt: skip
DRAIN = Operation(
    "post", f"{API}/agents/{{agent_id}}/drain", "drainAgent",
    "Drain an agent: it finishes its tasks and takes no new ones.",
    "agent_or_operator", 200, AgentSummary, "The agent, draining.",
    request=DrainRequest,
    errors={**_BODY, **_AUTH, 404: "`agent_not_found`"},
    path_params=_AGENT_ID,
)  # fmt: skip
UNDRAIN = Operation(
    "post", f"{API}/agents/{{agent_id}}/undrain", "undrainAgent",
    "End a drain: the agent takes new tasks again.",
    "agent_or_operator", 200, AgentSummary, "The agent.",
    request=DrainRequest,
    errors={**_BODY, **_AUTH, 404: "`agent_not_found`"},
    path_params=_AGENT_ID,
)  # fmt: skip
LIST_AGENTS = Operation(
    "get", f"{API}/agents", "listAgents",
    "List agents with their load, current tasks, last heartbeat and stats.",
    "operator", 200, AgentList, "The agents, by id.",
    query=AgentQuery,
    errors={400: "`invalid_query`", **_AUTH},
)  # fmt: skip
GET_AGENT = Operation(
    "get", f"{API}/agents/{{agent_id}}", "getAgent", "One agent.",
    "agent_or_operator", 200, AgentSummary, "The agent.",
    errors={**_AUTH, 404: "`agent_not_found`"},
    path_params=_AGENT_ID,
)  # fmt: skip
TASK_STATUS = Operation(
    "post", f"{API}/tasks/{{task_id}}/status", "reportTaskStatus",
    "Report assigned → running, or a progress note, under the task's lease.",
    "agent", 200, TaskStatusAnswer,
    "Accepted (an event was appended when it changed anything).",
    request=TaskStatusRequest,
    errors={
        **_BODY, 401: _AUTH[401], 403: "`not_your_task`", 404: "`task_not_found`",
        409: "`stale_lease`, `illegal_transition`, `task_changed`",
    },
    path_params=_TASK_ID,
)  # fmt: skip
LIST_TASKS = Operation(
    "get", f"{API}/tasks", "listTasks",
    "Live tasks in queue order, each with its state, agent, and why it waits or failed.",
    "operator", 200, TaskList, "The tasks, highest priority and oldest first.",
    query=TaskQuery,
    errors={400: "`invalid_query`", **_AUTH},
)  # fmt: skip
GET_TASK = Operation(
    "get", f"{API}/tasks/{{task_id}}", "getTask", "A task with its event history.",
    "agent_or_operator", 200, TaskDetail, "The task and its events, oldest first.",
    errors={401: _AUTH[401], 403: "`not_your_task`", 404: "`task_not_found`"},
    path_params=_TASK_ID,
)  # fmt: skip
DEQUEUE = Operation(
    "post", f"{API}/tasks/dequeue", "dequeueTask",
    "Take the next waiting task that fits the agent, under a new lease.",
    "agent", 200, TaskHandout,
    "The task, its lease, its branch and where to fetch and push it.",
    request=DequeueRequest,
    errors={
        **_BODY, 401: _AUTH[401], 403: "`not_your_agent`", 404: "`agent_not_found`",
        409: "`agent_deregistered`, `task_changed`",
    },
    no_content="No task for the agent now: none fits, no free slot, or the agent is not "
    "online (offline, draining).",
)  # fmt: skip
COMPLETE = Operation(
    "post", f"{API}/tasks/{{task_id}}/complete", "completeTask",
    "Finish a running task that produces no pull request, with its receipt.",
    "agent", 201, ReceiptAnswer, _ACCEPTED,
    request=CompleteRequest, errors=_RECEIPT, path_params=_TASK_ID,
)  # fmt: skip
SUBMIT_RECEIPT = Operation(
    "post", f"{API}/receipts", "submitReceipt",
    "Hand in what the agent did for its running task; idempotent by receipt_id.",
    "agent", 201, ReceiptAnswer, _ACCEPTED,
    request=ReceiptRequest, errors=_RECEIPT,
)  # fmt: skip
_TASK_TOKEN = {
    401: "`missing_token`, `unknown_token` (not a task token this daemon issued)",
    403: "`not_your_task`: the token is another task's",
    404: "`task_not_found`",
    409: "`stale_lease`: the task was reassigned since the token was issued",
}
TASK_BRIEF = Operation(
    "get", f"{API}/tasks/{{task_id}}/brief", "getTaskBrief",
    "The task as the fleet sees it, for the run's MCP server (task token).",
    "task", 200, TaskBrief, "The task's trusted facts and the run's progress so far.",
    errors=_TASK_TOKEN,
    path_params=_TASK_ID,
)  # fmt: skip
TASK_PROGRESS = Operation(
    "post", f"{API}/tasks/{{task_id}}/progress", "reportTaskProgress",
    "Report a percent and a step, from the run's MCP server (task token).",
    "task", 200, TaskStatusAnswer, "Recorded as a progress event.",
    request=ProgressRequest,
    errors={**_BODY, **_TASK_TOKEN, 409: _TASK_TOKEN[409] + ", `task_changed`"},
    path_params=_TASK_ID,
)  # fmt: skip
TASK_ASK = Operation(
    "post", f"{API}/tasks/{{task_id}}/questions", "askQuestion",
    "Ask a question or a decision about the task, from the run's MCP server (task token): "
    "it becomes an issue the task depends on, and the run should end to wait for the answer.",
    "task", 201, AskAnswer, "Recorded; the question's issue is opened shortly.",
    request=AskRequest,
    errors={
        **_BODY, **_TASK_TOKEN,
        409: _TASK_TOKEN[409] + ", `task_changed`, `question_limit`, `question_depth`, "
        "`own_role`, `over_budget`",
    },
    path_params=_TASK_ID,
)  # fmt: skip
SHARE_NOTE = Operation(
    "post", f"{API}/tasks/{{task_id}}/notes", "shareNote",
    "Share a note on a topic in the repository's shared knowledge (task token).",
    "task", 201, ShareAnswer, "Queued for the topic's wiki page.",
    request=ShareRequest,
    errors={
        **_BODY, **_TASK_TOKEN,
        400: _BODY[400] + ", `note_too_large`, `invalid_note` (an HTML comment), `empty_note`",
        409: _TASK_TOKEN[409] + ", `note_limit_reached` (mcp.max_notes_per_task)",
    },
    path_params=_TASK_ID,
)  # fmt: skip
READ_NOTES = Operation(
    "get", f"{API}/tasks/{{task_id}}/notes", "readNotes",
    "A topic's shared notes, labelled with author and trust, or the list of topics "
    "(task token).",
    "task", 200, ContextAnswer, "The topic's page text and notes, or the topics.",
    query=ContextQuery,
    errors={400: "`invalid_query`", **_TASK_TOKEN},
    path_params=_TASK_ID,
)  # fmt: skip
OPENAPI = Operation(
    "get", f"{API}/openapi.json", "openapi", "This document.",
    "anyone", 200, None, "The OpenAPI document.",
)  # fmt: skip

OPERATIONS: tuple[Operation, ...] = (
    REGISTER, HEARTBEAT, DEREGISTER, DRAIN, UNDRAIN, LIST_AGENTS, GET_AGENT, TASK_STATUS,
    LIST_TASKS, GET_TASK, DEQUEUE, COMPLETE, SUBMIT_RECEIPT, TASK_BRIEF, TASK_PROGRESS,
    TASK_ASK, SHARE_NOTE, READ_NOTES, OPENAPI,
)  # fmt: skip


__all__ = [
    "API",
    "COMPLETE",
    "DEQUEUE",
    "DEREGISTER",
    "DRAIN",
    "GET_AGENT",
    "GET_TASK",
    "HEARTBEAT",
    "LIST_AGENTS",
    "LIST_TASKS",
    "OPENAPI",
    "OPERATIONS",
    "READ_NOTES",
    "REGISTER",
    "SHARE_NOTE",
    "SUBMIT_RECEIPT",
    "TASK_ASK",
    "TASK_BRIEF",
    "TASK_PROGRESS",
    "TASK_STATUS",
    "UNDRAIN",
    "Operation",
    "Who",
]
