"""Slow and hostile clients against the real HTTP server (waitress) with the daemon's default
limits: idle connections do not keep a webhook delivery from being answered within Forgejo's
delivery timeout, and a declared oversized body is refused at once, before it is sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from reconciler.keys import Key
from reconciler.settings import WebhookSettings
from webhook.app import make_app
from webhook.receiver import install_forgejo_webhook
from webhook.server import HttpServer, http_server

SECRET = "slow-clients-secret"
# Forgejo abandons a delivery it has no answer to after 5 s (docs/webhooks.md).
FORGEJO_DELIVERY_TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[tuple[HttpServer, list[Key]]]:
    keys: list[Key] = []
    app = make_app()
    install_forgejo_webhook(app, secret=SECRET, enqueue=keys.append)
    server = http_server(app, WebhookSettings(port=0))
    server.start()
    try:
        yield server, keys
    finally:
        server.stop()


def delivery() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {"action": "opened", "issue": {"number": 7}, "repository": {"full_name": "acme/web"}}
    ).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-Forgejo-Event": "issues",
        "X-Forgejo-Signature": signature,
        "Content-Type": "application/json",
    }
    return body, headers


def test_a_webhook_is_answered_promptly_past_200_idle_connections(
    server: tuple[HttpServer, list[Key]],
) -> None:
    """With 200 connections open and silent (twice waitress's default connection limit), a
    signed delivery still gets its 202 within Forgejo's delivery timeout."""
    http, keys = server
    idle = [socket.create_connection((http.host, http.port), timeout=10) for _ in range(200)]
    try:
        body, headers = delivery()
        answer = httpx.post(
            f"{http.url}/webhooks/forgejo",
            content=body,
            headers=headers,
            timeout=FORGEJO_DELIVERY_TIMEOUT,
        )
        assert answer.status_code == 202
        assert [str(k) for k in keys] == ["assignment:acme/web#7"]
    finally:
        for sock in idle:
            sock.close()


def test_a_declared_oversized_body_is_refused_with_413_json_before_it_is_sent(
    server: tuple[HttpServer, list[Key]],
) -> None:
    """A request announcing 200 MB gets 413 JSON without sending a byte of its body."""
    http, keys = server
    with socket.create_connection((http.host, http.port), timeout=10) as sock:
        sock.settimeout(FORGEJO_DELIVERY_TIMEOUT)
        sock.sendall(
            b"POST /webhooks/forgejo HTTP/1.1\r\nHost: fleet\r\n"
            b"Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
        )
        received = b""
        deadline = time.monotonic() + FORGEJO_DELIVERY_TIMEOUT
        while b"}" not in received and time.monotonic() < deadline:
            part = sock.recv(4096)
            if not part:
                break
            received += part
    head, _, content = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), received
    assert b"application/json" in head.lower()
    assert json.loads(content)["error"] == "body_too_large"
    assert keys == []


def test_an_idle_connection_is_closed_after_the_channel_timeout() -> None:
    """A connection that sends nothing is closed by the server once channel_timeout passes,
    so idle connections cannot pile up to the limit for good."""
    app = make_app()
    server = http_server(app, WebhookSettings(port=0, channel_timeout=1, cleanup_interval=1))
    server.start()
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            # recv returns b"" once the server closes; the timeout is only a safety net.
            assert sock.recv(1) == b""
    finally:
        server.stop()
