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
from waitress import wasyncore
from waitress.server import create_server

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
        try:
            self._server.run()
        except OSError as exc:  # the socket map was closed under select() by stop()
            log.debug("http.loop_ended", error=str(exc))

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, let the worker threads finish their requests, close every socket."""
        self._server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)
        wasyncore.close_all(self._server._map)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        log.info("http.stopped", url=self.url)
