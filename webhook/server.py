"""The production HTTP server for the Bottle app: waitress on a background thread.

Bottle's default server (wsgiref) handles one request at a time and is for development only;
with it, one slow client blocks every webhook delivery behind it, and Forgejo abandons a
delivery after 5 s. waitress serves from a pool of threads with an asynchronous front that
buffers slow clients (see docs/architecture.md and bench/webhook.py for the numbers).

The daemon builds it with the limits of ``[webhook]``: at most ``connection_limit`` open
connections (idle ones do not stop a delivery until then), idle connections closed after
``channel_timeout`` seconds by a sweep every ``cleanup_interval`` seconds, and a request whose
declared ``Content-Length`` is over ``max_body_bytes`` answered 413 at once, before its body
is read. Errors waitress answers itself (413, a malformed request) are JSON like the app's.
"""

from __future__ import annotations

import json
import resource
import threading
from typing import Any

import structlog
from waitress import wasyncore  # type: ignore[import-untyped]
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import create_server  # type: ignore[import-untyped]
from waitress.task import ErrorTask  # type: ignore[import-untyped]

from reconciler.settings import WebhookSettings

log = structlog.get_logger(__name__)


# Waitress's own refusals, with the codes the app's JSON errors use (webhook/app.py).
_ERROR_CODES = {
    400: "bad_request",
    413: "body_too_large",
    431: "headers_too_large",
    501: "not_implemented",
}


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]  # waitress ships no type information
    """An error waitress answers itself (before the app sees the request), as JSON."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps(
            {
                "error": _ERROR_CODES.get(error.code, f"http_{error.code}"),
                "message": f"{error.reason}: {error.body}",
            }
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _JsonErrorTask


class HttpServer:
    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        threads: int = 4,
        max_body_bytes: int = 1 << 20,
        connection_limit: int = 1000,
        channel_timeout: int = 30,
        cleanup_interval: int = 2,
    ) -> None:
        _allow_open_files(connection_limit)
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="agent-fleet",
            # A listen backlog of 1024 keeps bursts of webhooks from being refused.
            backlog=1024,
            # Idle connections are held up to the limit, and closed once idle this long.
            connection_limit=connection_limit,
            channel_timeout=channel_timeout,
            cleanup_interval=cleanup_interval,
            # select() cannot watch a descriptor numbered 1024 or more; poll() can.
            asyncore_use_poll=True,
            # waitress refuses a request whose declared length reaches this before reading it.
            max_request_body_size=max_body_bytes + 1,
        )
        self._server.channel_class = _Channel
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        log.info("http.listening", url=self.url)

    def _serve(self) -> None:
        server = self._server
        # waitress's own run() loops until its socket map is empty; this loop also ends when
        # stop() asks, woken by the server's trigger instead of waiting out a select timeout.
        while not self._stopping.is_set() and server._map:
            wasyncore.loop(
                timeout=server.adj.asyncore_loop_timeout,
                map=server._map,
                use_poll=server.adj.asyncore_use_poll,
                count=1,
            )

    def stop(self, *, timeout: float = 5.0) -> None:
        """Finish the requests being handled, then close every socket and end the loop."""
        # The loop keeps running while the worker threads finish, so their answers are sent.
        self._server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)
        self._stopping.set()
        self._server.pull_trigger()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        wasyncore.close_all(self._server._map)
        log.info("http.stopped", url=self.url)


def _allow_open_files(connection_limit: int) -> None:
    """Raise the soft open-file limit to fit ``connection_limit`` connections, where allowed."""
    wanted = connection_limit + 256  # the store, log files, Forgejo and ssh connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "http.open_file_limit",
            limit=target,
            connection_limit=connection_limit,
            message="the open-file limit is below webhook.connection_limit; lower it or raise "
            "the limit (ulimit -n)",
        )


def http_server(app: Any, webhook: WebhookSettings) -> HttpServer:
    """The HTTP server for ``app`` with the address and limits of the ``[webhook]`` section."""
    return HttpServer(
        app,
        host=webhook.bind,
        port=webhook.port,
        threads=webhook.threads,
        max_body_bytes=webhook.max_body_bytes,
        connection_limit=webhook.connection_limit,
        channel_timeout=webhook.channel_timeout,
        cleanup_interval=webhook.cleanup_interval,
    )
