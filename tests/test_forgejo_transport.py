"""The gateway's default transport (``reconciler/forgejo/transport.py``) against a real socket
server that answers as scripted: keep-alive reuse, a connection the server closed while idle,
and every fault mapped to the httpx error that says whether the request may have landed."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from reconciler.errors import ForgejoServerError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.transport import StdlibTransport, transport_for

Script = Callable[[socket.socket, bytes], bool]
"""Answers one request (its head and body as read) on the connection; False closes it."""


class ScriptedServer:
    """A loopback HTTP/1.1 server run on a thread: each request read whole, then answered by
    ``script``. Counts connections accepted and requests read."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                if not self.script(conn, head):
                    return

    def close_idle(self) -> None:
        """Close every connection from the server's side (an idle timeout, a restart)."""
        for conn in self._open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._open.clear()

    def stop(self) -> None:
        """Stop listening for good. Closing the socket alone would not: the thread blocked in
        ``accept`` keeps the kernel's listener alive, and it would go on answering whatever
        later connects to that port (another test's server given the same port, say)."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout=5)
        assert not self._acceptor.is_alive(), "the scripted server's accept loop did not end"
        self.close_idle()


def answer(body: bytes = b'{"ok": true}', *, status: str = "200 OK", extra: str = "") -> Script:
    def script(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )
        return "connection: close" not in extra.lower()

    return script


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's default transport is the one under test, whatever the environment says."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def served() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client(server: ScriptedServer, *, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url=server.url, transport=StdlibTransport(), timeout=timeout)


def test_requests_share_one_kept_connection(
    served: Callable[[Script], ScriptedServer],
) -> None:
    """Three requests (a GET, a POST with a JSON body, a GET with a query) travel on one
    connection, arrive as sent, and their answers parse."""
    server = served(answer())
    with client(server) as http:
        assert http.get("/api/v1/version").json() == {"ok": True}
        assert http.post("/api/v1/x", json={"a": "é"}).status_code == 200
        assert http.get("/api/v1/y", params={"q": "a b"}).status_code == 200
    assert server.accepted == 1
    first, posted, queried = server.requests
    assert first.startswith(b"GET /api/v1/version HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first.lower()
    assert posted.startswith(b"POST /api/v1/x HTTP/1.1\r\n")
    assert json.loads(posted.partition(b"\r\n\r\n")[2]) == {"a": "é"}
    assert queried.startswith(b"GET /api/v1/y?q=a+b HTTP/1.1\r\n")


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    served: Callable[[Script], ScriptedServer],
) -> None:
    """The server closes the kept connection between two requests: the second request goes
    on a new connection and succeeds — no error, nothing to doubt."""
    server = served(answer())
    with client(server) as http:
        assert http.get("/one").status_code == 200
        server.close_idle()
        assert http.get("/two").status_code == 200
    assert server.accepted == 2


def test_an_answer_that_says_close_closes(served: Callable[[Script], ScriptedServer]) -> None:
    server = served(answer(extra="Connection: close\r\n"))
    with client(server) as http:
        assert http.get("/one").status_code == 200
        assert http.get("/two").status_code == 200
    assert server.accepted == 2


def test_a_compressed_answer_is_decoded(served: Callable[[Script], ScriptedServer]) -> None:
    packed = gzip.compress(b'{"n": 1}')
    server = served(answer(packed, extra="Content-Encoding: gzip\r\n"))
    with client(server) as http:
        assert http.get("/x").json() == {"n": 1}


def test_a_stopped_server_answers_nothing_more(served: Callable[[Script], ScriptedServer]) -> None:
    """Once stopped, the port refuses connections: a scripted answer never reaches a client
    meant for some later server on that port."""
    server = served(answer())
    with client(server) as http:
        assert http.get("/x").status_code == 200
    server.stop()
    try:
        probe = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    except ConnectionRefusedError:
        return
    with probe:
        probe.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert probe.recv(100) == b"", "a stopped server still answered"


def test_a_refused_connection_is_a_connect_error() -> None:
    """Nothing listens: ConnectError, which the gateway knows sent nothing."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=StdlibTransport()) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get("/x")


def _close(conn: socket.socket, head: bytes) -> bool:
    return False


def _truncated(conn: socket.socket, head: bytes) -> bool:
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
    return False


def _garbage(conn: socket.socket, head: bytes) -> bool:
    conn.sendall(b"SMTP ready\r\n\r\n")
    return False


def _silent(conn: socket.socket, head: bytes) -> bool:
    threading.Event().wait(2.0)
    return False


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (_close, httpx.RemoteProtocolError),
        (_truncated, httpx.RemoteProtocolError),
        (_garbage, httpx.RemoteProtocolError),
        (_silent, httpx.ReadTimeout),
    ],
    ids=["closed-without-answer", "truncated", "not-http", "no-answer-in-time"],
)
def test_a_fault_after_the_request_left_is_a_transport_error_of_unknown_outcome(
    served: Callable[[Script], ScriptedServer], script: Script, error: type[Exception]
) -> None:
    """The request reached the server and then the answer failed: not a ConnectError (the
    write may have landed), and the gateway says the outcome is unknown."""
    server = served(script)
    with client(server, timeout=0.5) as http, pytest.raises(error) as raised:
        http.post("/x", json={})
    assert not isinstance(raised.value, httpx.ConnectError)
    gateway = ForgejoGateway(server.url, "token", timeout=0.5, read_retries=0)
    with pytest.raises(ForgejoServerError) as failed:
        gateway.create_comment("o/r", 1, "hello")
    assert failed.value.outcome_unknown


def test_the_gateway_uses_this_transport_unless_a_proxy_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without proxy settings the gateway's default is this transport; with a proxy set for
    the address, httpx's own (which honours it); an address in NO_PROXY keeps this one."""
    assert isinstance(transport_for("http://forge.example:3000"), StdlibTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert isinstance(transport_for("http://forge.example:3000"), StdlibTransport)
    assert transport_for("https://forge.example") is None
    monkeypatch.setenv("NO_PROXY", "forge.example")
    assert isinstance(transport_for("https://forge.example"), StdlibTransport)
