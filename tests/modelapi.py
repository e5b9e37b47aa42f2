"""A local stand-in for the model APIs the real agent CLIs call, and fixtures that serve it.

``tests/test_agent_clis.py`` runs the real ``claude`` and ``codex`` binaries against it: Claude
Code speaks the Anthropic Messages API (``POST /v1/messages``, streamed as server-sent events,
with a non-streamed retry of the same request when a stream fails) and Codex the OpenAI
Responses API (``POST /v1/responses``, streamed). The server binds 127.0.0.1 on a free port.

Each test scripts its own answers: :meth:`ModelApiStandIn.base_url` registers a :class:`Script`
under a fresh path prefix (``/s/<token>``), so the scenario travels in the base URL the CLI is
given and tests never share state. Answers are a pure function of the script and the request:

* ``Script.text_reply(...)`` answers every request with that text;
* ``Script.tool_call(command, ...)`` asks for one shell command (Claude's ``Bash`` tool, Codex's
  ``exec_command``) while the conversation has no tool result yet, then answers with text — or,
  with ``then_hang=True``, never answers the request that carries the tool result (a run that
  only ends when something stops it, e.g. its budget);
* ``Script.failure(401)`` answers with that HTTP status and an API-shaped error body;
* ``Script.hang()`` never answers (until the stand-in stops), for wall-clock timeouts.

Every request is recorded (:meth:`ModelApiStandIn.requests`); a path the stand-in does not
know is recorded too and answered 404 with an API-shaped error, so a new CLI release that calls
something new shows up in the record instead of as a silent hang.

Registered from ``tests/conftest.py`` as a pytest plugin: fixture ``model_api``.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

# Token counts every answer reports, so tests can check how usage is summed.
INPUT_TOKENS = 100
OUTPUT_TOKENS = 7
# A hanging request is released when the stand-in stops, or after this many seconds at most.
HANG_LIMIT_S = 120.0


@dataclass(frozen=True)
class Script:
    """How the stand-in answers every request made under one base URL."""

    kind: Literal["text", "tool_call", "mcp_call", "failure", "hang"]
    text: str = "done"
    command: str = ""
    status: int = 200
    then_hang: bool = False
    tool: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def text_reply(cls, text: str) -> Script:
        """Answer with ``text`` and end the turn."""
        return cls(kind="text", text=text)

    @classmethod
    def tool_call(cls, command: str, *, then: str = "done", then_hang: bool = False) -> Script:
        """Ask for the shell ``command`` first; once its result is sent back, answer ``then``
        (or, ``then_hang``, never answer)."""
        return cls(kind="tool_call", command=command, text=then, then_hang=then_hang)

    @classmethod
    def mcp_call(cls, tool: str, arguments: Mapping[str, Any], *, then: str = "done") -> Script:
        """Call the offered MCP tool whose name ends in ``__<tool>`` (``mcp__fleet__progress``)
        with ``arguments`` while there is no tool result yet; then answer ``then``."""
        return cls(kind="mcp_call", tool=tool, arguments=dict(arguments), text=then)

    @classmethod
    def failure(cls, status: int) -> Script:
        """Answer every request with HTTP ``status``."""
        return cls(kind="failure", status=status)

    @classmethod
    def hang(cls) -> Script:
        """Accept the request and never answer."""
        return cls(kind="hang")


@dataclass(frozen=True)
class ModelRequest:
    """One request the stand-in received."""

    method: str
    path: str
    body: Any
    token: str | None = None

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


@dataclass
class _State:
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[ModelRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    counter: int = 0

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def next_id(self, prefix: str) -> str:
        with self.lock:
            self.counter += 1
            return f"{prefix}_standin{self.counter}"


class ModelApiStandIn:
    """The server; start with :meth:`start`, stop with :meth:`stop` (the fixture does both)."""

    def __init__(self) -> None:
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        state = self._state
        handler = type("_BoundHandler", (_Handler,), {"state": state})
        server = _Server(("127.0.0.1", 0), handler)
        self._server = server
        # A short poll interval lets stop() return at once instead of after half a second.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="model-api-stand-in",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._state.stopping.set()  # releases hanging requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the model-API stand-in is not started")
        return int(self._server.server_address[1])

    # --- scripting and inspection -------------------------------------------------------------

    def base_url(self, script: Script) -> str:
        """A base URL (no trailing ``/v1``) whose requests are answered by ``script``."""
        token = secrets.token_hex(6)
        with self._state.lock:
            self._state.scripts[token] = script
        return f"http://127.0.0.1:{self.port}/s/{token}"

    def requests(self, base_url: str | None = None) -> list[ModelRequest]:
        """Requests received, all of them or those under one ``base_url``."""
        with self._state.lock:
            if base_url is None:
                return list(self._state.requests)
            return self._requests_under(base_url)

    def wait_for_request(self, base_url: str, *, timeout: float) -> bool:
        """Block until a request under ``base_url`` has arrived; False if none came in time."""
        with self._state.arrived:
            return self._state.arrived.wait_for(
                lambda: bool(self._requests_under(base_url)), timeout
            )

    def _requests_under(self, base_url: str) -> list[ModelRequest]:
        token = urlsplit(base_url).path.rstrip("/").rsplit("/", 1)[-1]
        return [request for request in self._state.requests if request.token == token]

    def unknown_requests(self) -> list[ModelRequest]:
        """Requests to paths the stand-in does not serve."""
        return [r for r in self.requests() if not _known_path(_api_path(r.path))]

    # --- environments for the real CLIs ---------------------------------------------------------

    def claude_env(self, base_url: str, *, home: Path) -> dict[str, str]:
        """Variables that point Claude Code at ``base_url`` (from :meth:`base_url`), with its
        own empty ``home`` (Claude keeps its sessions there: a resume needs the same one)."""
        home.mkdir(parents=True, exist_ok=True)
        return {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-ant-stand-in",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def codex_env(self, base_url: str, *, home: Path, model: str = "gpt-mock") -> dict[str, str]:
        """Variables and a ``CODEX_HOME`` config that point Codex at ``base_url``.

        The custom provider declares no retries, so a failing answer fails the turn at once.
        Codex keeps its threads in ``CODEX_HOME``: a resume needs the same ``home``. The model
        name is unknown to Codex, which says so in a harmless ``error`` item.
        """
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            f'model = "{model}"\n'
            'model_provider = "standin"\n'
            "[model_providers.standin]\n"
            'name = "model-API stand-in"\n'
            f'base_url = "{base_url}/v1"\n'
            'env_key = "STANDIN_API_KEY"\n'
            'wire_api = "responses"\n'
            "request_max_retries = 0\n"
            "stream_max_retries = 0\n",
            encoding="utf-8",
        )
        return {
            "HOME": str(home),
            "CODEX_HOME": str(codex_home),
            "STANDIN_API_KEY": "sk-stand-in",
            "NO_PROXY": "127.0.0.1,localhost",
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A CLI killed mid-request resets its connection: expected here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _api_path(path: str) -> str:
    """The API path of a request, without the ``/s/<token>`` prefix and the query."""
    plain = urlsplit(path).path
    if plain.startswith("/s/"):
        parts = plain.split("/", 3)
        return "/" + parts[3] if len(parts) > 3 else "/"
    return plain


def _known_path(api_path: str) -> bool:
    return api_path in ("/v1/messages", "/v1/responses")


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """The record of requests replaces the access log."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    # --- dispatch -------------------------------------------------------------------------

    def _answer(self) -> None:
        token, api_path = self._route()
        body = self._read_body()
        request = ModelRequest(method=self.command, path=self.path, body=body, token=token)
        with self.state.lock:
            self.state.requests.append(request)
            self.state.arrived.notify_all()
            script = self.state.scripts.get(token or "")
        if not _known_path(api_path) or self.command != "POST":
            self._send_json(
                404, _error_body(api_path, 404, f"stand-in: no {self.command} {api_path}")
            )
            return
        if script is None:
            self._send_json(404, _error_body(api_path, 404, "stand-in: no script for this URL"))
            return
        if script.kind == "hang":
            self.state.stopping.wait(HANG_LIMIT_S)
            self.close_connection = True
            return
        if script.kind == "failure":
            self._send_json(script.status, _error_body(api_path, script.status, "stand-in failure"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body(api_path, 400, "stand-in: body is not a JSON object"))
            return
        if script.then_hang and (_has_anthropic_tool_result(body) or _has_openai_tool_result(body)):
            self.state.stopping.wait(HANG_LIMIT_S)
            self.close_connection = True
            return
        if api_path == "/v1/messages":
            self._answer_messages(script, body)
        else:
            self._answer_responses(script, body)

    def _route(self) -> tuple[str | None, str]:
        plain = urlsplit(self.path).path
        token = (
            plain.split("/", 3)[2] if plain.startswith("/s/") and plain.count("/") >= 2 else None
        )
        return token, _api_path(self.path)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    # --- Anthropic Messages ---------------------------------------------------------------

    def _answer_messages(self, script: Script, body: dict[str, Any]) -> None:
        model = str(body.get("model") or "claude-sonnet-4-5")
        wants_tool = (
            script.kind == "tool_call"
            and _offers_tool(body, "Bash")
            and not _has_anthropic_tool_result(body)
        )
        mcp_tool = (
            _offered_mcp_tool(body, script.tool)
            if script.kind == "mcp_call" and not _has_anthropic_tool_result(body)
            else None
        )
        if wants_tool:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": self.state.next_id("toolu"),
                "name": "Bash",
                "input": {"command": script.command, "description": "Run the scripted command"},
            }
            stop_reason = "tool_use"
        elif mcp_tool is not None:
            block = {
                "type": "tool_use",
                "id": self.state.next_id("toolu"),
                "name": mcp_tool,
                "input": dict(script.arguments),
            }
            stop_reason = "tool_use"
        else:
            block = {"type": "text", "text": script.text}
            stop_reason = "end_turn"
        message_id = self.state.next_id("msg")
        usage = {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS}
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [block],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        start_block = dict(block, input={}) if block["type"] == "tool_use" else dict(block, text="")
        if block["type"] == "tool_use":
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            delta = {"type": "text_delta", "text": block["text"]}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
                    },
                },
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": start_block},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": OUTPUT_TOKENS},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._send_events(events)

    # --- OpenAI Responses -----------------------------------------------------------------

    def _answer_responses(self, script: Script, body: dict[str, Any]) -> None:
        response_id = self.state.next_id("resp")
        wants_tool = (
            script.kind == "tool_call"
            and _offers_tool(body, "exec_command")
            and not _has_openai_tool_result(body)
        )
        mcp_tool = (
            _offered_namespaced_tool(body, script.tool)
            if script.kind == "mcp_call" and not _has_openai_tool_result(body)
            else None
        )
        if wants_tool or mcp_tool is not None:
            item: dict[str, Any] = {
                "type": "function_call",
                "id": self.state.next_id("fc"),
                "call_id": self.state.next_id("call"),
                "name": mcp_tool[1] if mcp_tool else "exec_command",
                "arguments": json.dumps(
                    dict(script.arguments) if mcp_tool else {"cmd": script.command}
                ),
                "status": "completed",
            }
            if mcp_tool:
                item["namespace"] = mcp_tool[0]
        else:
            item = {
                "type": "message",
                "id": self.state.next_id("msg"),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": script.text, "annotations": []}],
            }
        usage = {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        }
        response = {"id": response_id, "object": "response", "status": "in_progress"}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": response}),
            (
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": 0, "item": item},
            ),
        ]
        if item["type"] == "message":
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": 0,
                        "content_index": 0,
                        "delta": script.text,
                    },
                )
            )
        events += [
            (
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": 0, "item": item},
            ),
            (
                "response.completed",
                {
                    "type": "response.completed",
                    "response": dict(response, status="completed", output=[item], usage=usage),
                },
            ),
        ]
        self._send_events(events)

    # --- wire -----------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self.state.next_id("req"))
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        data = "".join(
            f"event: {name}\ndata: {json.dumps(payload)}\n\n" for name, payload in events
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _offers_tool(body: Mapping[str, Any], name: str) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(tool, dict) and tool.get("name") == name for tool in tools
    )


def _offered_mcp_tool(body: Mapping[str, Any], tool: str) -> str | None:
    """The name of the offered tool ending in ``__<tool>``, if the request offers one."""
    for offered in body.get("tools") or ():
        name = offered.get("name") if isinstance(offered, dict) else None
        if isinstance(name, str) and name.endswith(f"__{tool}"):
            return name
    return None


def _offered_namespaced_tool(body: Mapping[str, Any], tool: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of ``tool`` in an offered MCP namespace (Codex: ``mcp__fleet``)."""
    for offered in body.get("tools") or ():
        if not isinstance(offered, dict) or offered.get("type") != "namespace":
            continue
        for inner in offered.get("tools") or ():
            if isinstance(inner, dict) and inner.get("name") == tool:
                return str(offered.get("name")), tool
    return None


def _has_anthropic_tool_result(body: Mapping[str, Any]) -> bool:
    """A tool's result came back since the last prompt of the user (a resumed session's
    earlier results do not count: the script starts again on a new prompt)."""
    answered = False
    for message in body.get("messages") or ():
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text"}]
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            answered = True
        elif any(isinstance(b, dict) and b.get("type") == "text" for b in blocks):
            answered = False
    return answered


def _has_openai_tool_result(body: Mapping[str, Any]) -> bool:
    """As :func:`_has_anthropic_tool_result`, for the Responses API's input items."""
    items = body.get("input")
    answered = False
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call_output":
            answered = True
        elif item.get("role") == "user":
            answered = False
    return answered


def _error_body(api_path: str, status: int, message: str) -> dict[str, Any]:
    """An error in the shape of the API the path belongs to."""
    if api_path.startswith("/v1/responses"):
        return {"error": {"message": message, "type": "invalid_request_error", "code": str(status)}}
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "api_error")  # fmt: skip
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture
def model_api() -> Iterator[ModelApiStandIn]:
    """A started model-API stand-in, stopped (and its hanging requests released) afterwards."""
    stand_in = ModelApiStandIn()
    stand_in.start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
