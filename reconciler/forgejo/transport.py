"""An httpx transport on the standard library's ``http.client``: the gateway's default.

httpx's own transport (httpcore and h11, both pure Python) costs the daemon about three times
the CPU of ``http.client`` per Forgejo call, and a reconcile makes several. This transport
keeps httpx's client above it — base URL, auth, redirects, the request and response models the
gateway and pyforgejo use — and moves the bytes with ``http.client`` over a small pool of
keep-alive connections, with the same promises httpcore makes about errors:

* :class:`httpx.ConnectError` / :class:`httpx.ConnectTimeout` only while the connection is being
  made, before any byte of the request left (the gateway treats these as "surely not sent");
* every failure after that — a reset, a timeout, a truncated or garbled answer — as another
  :class:`httpx.TransportError` (``WriteError``, ``ReadError``, ``ReadTimeout``,
  ``WriteTimeout``, ``RemoteProtocolError``): the outcome of a write is then unknown, and the
  gateway checks before repeating it.

A kept connection is reused only while younger than ``keepalive_expiry`` seconds of idleness and
only if the server has not closed it (a readable idle socket is a closed one), as httpcore does.
Requests through a proxy (one set in the environment for the address) are left to httpx's own
transport: :func:`transport_for` decides.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable

import httpx

__all__ = ["StdlibTransport", "transport_for"]

KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse (httpx's default)."""

MAX_IDLE = 20
"""Idle connections kept per host (httpx's default keep-alive limit)."""

_Key = tuple[str, str, int]


class _Idle:
    __slots__ = ("conn", "since")

    def __init__(self, conn: http.client.HTTPConnection, since: float) -> None:
        self.conn = conn
        self.since = since


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 over ``http.client`` with keep-alive; thread-safe (each request takes its own
    connection from the pool, or makes one)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_idle: int = MAX_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle
        self._clock = clock
        self._idle: dict[_Key, list[_Idle]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # --- the pool ----------------------------------------------------------------------------

    def _take(self, key: _Key) -> http.client.HTTPConnection | None:
        """An idle connection to ``key`` still fit for a request, or None."""
        now = self._clock()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                kept = idle.pop()  # the most recently used: the least likely to be closed
            if now - kept.since <= self._keepalive_expiry and not _closed_by_peer(kept.conn):
                return kept.conn
            kept.conn.close()

    def _give_back(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(_Idle(conn, self._clock()))
                return
        conn.close()

    def _connect(self, key: _Key, timeout: _Timeouts) -> http.client.HTTPConnection:
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl_context is None:  # made once: it loads the CA bundle
                self._ssl_context = httpx.create_ssl_context()
            conn = http.client.HTTPSConnection(
                host, port, timeout=timeout.connect, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout.connect)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, TLS, …
            conn.close()
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from exc
        if conn.sock is not None:
            conn.sock.settimeout(timeout.read)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    # --- one request ---------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        host = url.host
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        timeout = _Timeouts(request.extensions.get("timeout") or {})
        body = request.read()
        conn = self._take(key) or self._connect(key, timeout)
        target = url.raw_path.decode("ascii")
        try:
            response = self._exchange(conn, request, target, body, timeout)
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._give_back(key, conn)
        return self._response(response)

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        request: httpx.Request,
        target: str,
        body: bytes,
        timeout: _Timeouts,
    ) -> _Answer:
        if conn.sock is not None:
            conn.sock.settimeout(timeout.write)
        try:
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
            conn.endheaders(body or None)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(f"sending the request timed out: {exc}") from exc
        except OSError as exc:
            raise httpx.WriteError(f"sending the request failed: {exc}") from exc
        if conn.sock is not None:
            conn.sock.settimeout(timeout.read)
        try:
            answer = conn.getresponse()
            content = answer.read()
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"waiting for the answer timed out: {exc}") from exc
        except http.client.RemoteDisconnected as exc:
            raise httpx.RemoteProtocolError(
                "the server closed the connection without answering"
            ) from exc
        except http.client.IncompleteRead as exc:
            raise httpx.RemoteProtocolError(
                f"the answer ended early ({len(exc.partial)} bytes read, "
                f"{exc.expected} more expected)"
            ) from exc
        except http.client.HTTPException as exc:  # a bad status line, headers too long, …
            raise httpx.RemoteProtocolError(f"unusable answer: {type(exc).__name__}") from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the answer failed: {exc}") from exc
        return _Answer(
            status=answer.status,
            reason=answer.reason,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.getheaders()],
            content=content,
            # http.client's own answers say whether the server keeps the connection; a
            # stand-in response class (a recording replayer, say) may not, and then the
            # connection is not kept.
            will_close=bool(getattr(answer, "will_close", True)),
        )

    @staticmethod
    def _response(answer: _Answer) -> httpx.Response:
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.content),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": answer.reason.encode("latin-1", "replace"),
            },
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [kept for kept_list in self._idle.values() for kept in kept_list]
            self._idle.clear()
        for kept in idle:
            kept.conn.close()


class _Timeouts:
    """The request's timeouts (httpx's ``timeout`` extension; None: wait without end)."""

    __slots__ = ("connect", "read", "write")

    def __init__(self, given: dict[str, float | None]) -> None:
        self.connect = given.get("connect")
        self.read = given.get("read")
        self.write = given.get("write")


class _Answer:
    __slots__ = ("content", "headers", "reason", "status", "will_close")

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
        will_close: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self.will_close = will_close


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept connection was closed by the server (or has unread bytes, which
    no idle HTTP/1.1 connection should): its socket reads as ready."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def transport_for(base_url: str) -> httpx.BaseTransport | None:
    """The transport for a gateway to ``base_url``: :class:`StdlibTransport`, or None (httpx's
    own, which honours proxy settings) when the environment sets a proxy for that address."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    proxied = bool(proxies.get(url.scheme) or proxies.get("all"))
    if proxied and not urllib.request.proxy_bypass(url.host):
        return None
    return StdlibTransport()
