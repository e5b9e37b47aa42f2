"""The production HTTP server for the Bottle app: waitress on a background thread.

Bottle's default server (wsgiref) handles one request at a time and is for development only;
with it, one slow client blocks every webhook delivery behind it, and Forgejo abandons a
delivery after 5 s. waitress serves from a pool of threads with an asynchronous front that
buffers slow clients (see docs/architecture.md and bench/webhook.py for the numbers).
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from waitress import wasyncore  # type: ignore[import-untyped]
from waitress.server import create_server  # type: ignore[import-untyped]

log = structlog.get_logger(__name__)


class HttpServer:
    def __init__(self, app: Any, *, host: str, port: int, threads: int = 4) -> None:
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="agent-fleet",
            # A listen backlog of 1024 keeps bursts of webhooks from being refused.
            backlog=1024,
            # Reading a request body must not sit on a worker thread forever.
            channel_timeout=30,
        )
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
