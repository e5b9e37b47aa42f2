"""The Forgejo webhook receiver: ``POST /webhooks/forgejo`` → verified keys on the work queue.

The daemon's HTTP assembly calls ``install_forgejo_webhook`` once on its Bottle app. A delivery
goes through four checks, cheapest and least trusting first — body size, signature, parse,
map (`webhook.events.keys_for`) — and then each key is handed to ``enqueue``. Nothing else
happens here: no Forgejo call, no store write, no I/O besides reading the body, because Forgejo
gives up on a delivery after 5 s and never retries it. Losing a delivery is harmless anyway:
the periodic resync finds the same change a little later.

Answers: 202 ``{"accepted": N, "keys": [...]}`` when keys were enqueued; 204 when the event or
action is none of agent-fleet's business, or when the delivery is the echo of agent-fleet's own
write showing the issue as last seen (``is_echo``; logged with the result ``echo``); otherwise
JSON ``{"error": <code>, "message": ...}``:

| status | ``error``                       | when                                              |
|--------|---------------------------------|---------------------------------------------------|
| 401    | ``webhook_secret_not_configured``| no secret configured: every delivery is refused  |
| 401    | ``missing_signature``           | no (or an empty) signature header                 |
| 401    | ``bad_signature``               | the HMAC-SHA256 of the body does not match        |
| 413    | ``body_too_large``              | the body is over ``max_body_bytes``               |
| 400    | ``bad_content_length``          | Content-Length unreadable, or the body ends early |
| 415    | ``unsupported_content_type``    | neither JSON nor form-encoded                     |
| 400    | ``malformed_json``              | the body (or its ``payload`` field) is not a JSON object, nests deeper than 32 levels, or holds text that is not valid Unicode |
| 400    | ``malformed_payload``           | the JSON lacks what the event needs               |
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
import structlog

from reconciler.keys import Key
from webhook.events import KNOWN_EVENTS, MalformedPayload, keys_for
from webhook.inputs import InputError, parse_json, read_at_most

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/webhooks/forgejo"
DEFAULT_MAX_BODY_BYTES = 1 << 20

# Forgejo sends the same values under each vendor prefix; the first one present wins.
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event", "X-Gogs-Event", "X-GitHub-Event")
EVENT_TYPE_HEADERS = (
    "X-Forgejo-Event-Type",
    "X-Gitea-Event-Type",
    "X-Gogs-Event-Type",
    "X-GitHub-Event-Type",
)
DELIVERY_HEADERS = (
    "X-Forgejo-Delivery",
    "X-Gitea-Delivery",
    "X-Gogs-Delivery",
    "X-GitHub-Delivery",
)
# Plain lowercase hex of HMAC-SHA256, in the order they are trusted.
HEX_SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature")
HUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
HUB_SIGNATURE_PREFIX = "sha256="

# Header values go into logs; a sender must not be able to flood them.
_MAX_LOGGED_HEADER = 100
_READ_CHUNK = 64 * 1024


class DeliveryResult(StrEnum):
    """How a delivery ended, as counted in /metrics."""

    ACCEPTED = "accepted"
    IGNORED = "ignored"
    # The echo of agent-fleet's own write, showing the issue as last seen: nothing enqueued.
    ECHO = "echo"
    # Also a missing signature, and any delivery while no secret is configured: in every
    # case the sender could not be authenticated.
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"


class _Refused(Exception):
    """A delivery refused at one of the checks; becomes one JSON error response."""

    def __init__(self, status: int, code: str, message: str, *, result: DeliveryResult) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.result = result
        super().__init__(message)


def install_forgejo_webhook(
    app: bottle.Bottle,
    *,
    secret: str | None,
    enqueue: Callable[[Key], None],
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    on_delivery: Callable[[str, str], None] | None = None,
    path: str = WEBHOOK_PATH,
    is_echo: Callable[[str, Mapping[str, Any]], bool] | None = None,
    note: Callable[[str, Mapping[str, Any]], None] | None = None,
) -> None:
    """Add ``POST path`` to ``app``: verify, parse and map each delivery, ``enqueue`` its keys.

    ``secret`` is the hook's secret as configured in Forgejo; without one (None or empty)
    every delivery is refused, since an unauthenticated receiver would let anyone drive the
    fleet. ``on_delivery(event, result)`` is called once per delivery with the event name
    (``"other"`` for a name Forgejo does not send, so callers cannot invent metric labels) and
    a ``DeliveryResult`` value. ``enqueue`` must not block; an exception from it propagates.
    ``is_echo(event, payload)`` (in memory, no I/O) tells a delivery caused by agent-fleet's
    own write that shows nothing new: it is answered 204 and counted as ``echo``, unqueued.
    ``note(event, payload)`` (in memory, no I/O) is told each verified delivery that names keys,
    before they are enqueued.
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    key = secret.encode() if secret else None

    def receive() -> bottle.HTTPResponse:
        environ = bottle.request.environ
        event = _first_header(environ, EVENT_HEADERS)
        event_type = _first_header(environ, EVENT_TYPE_HEADERS)
        delivery = _first_header(environ, DELIVERY_HEADERS)
        keys: tuple[Key, ...] = ()
        try:
            if key is None:
                raise _Refused(
                    401,
                    "webhook_secret_not_configured",
                    "the webhook secret is not configured on this agent-fleet; set it to the "
                    "hook's secret in Forgejo (deliveries are refused until then)",
                    result=DeliveryResult.BAD_SIGNATURE,
                )
            body = _read_body(environ, max_body_bytes=max_body_bytes)
            _verify_signature(environ, body, key=key)
            payload = _parse(body, content_type=environ.get("CONTENT_TYPE", ""))
            try:
                keys = keys_for(event, payload)
            except MalformedPayload as exc:
                raise _Refused(
                    400,
                    "malformed_payload",
                    f"{event} payload: {exc}",
                    result=DeliveryResult.MALFORMED,
                ) from exc
        except _Refused as refused:
            _record(on_delivery, event, event_type, delivery, refused.result, error=refused.code)
            return _error(refused)
        if keys and note is not None:
            note(event, payload)
        if keys and is_echo is not None and is_echo(event, payload):
            _record(on_delivery, event, event_type, delivery, DeliveryResult.ECHO, keys=keys)
            return bottle.HTTPResponse(status=204)
        for each in keys:
            enqueue(each)
        if not keys:
            _record(on_delivery, event, event_type, delivery, DeliveryResult.IGNORED)
            return bottle.HTTPResponse(status=204)
        _record(on_delivery, event, event_type, delivery, DeliveryResult.ACCEPTED, keys=keys)
        # No body: the status says it all, and any body makes every delivery measurably
        # slower on the server (bench/webhook.py). The keys are in the debug log.
        return bottle.HTTPResponse(status=202)

    app.route(path, method="POST", callback=receive, name="forgejo_webhook")


# --- the checks, in order ----------------------------------------------------------------


def _read_body(environ: Mapping[str, Any], *, max_body_bytes: int) -> bytes:
    """The raw body, refused before reading when its declared length is over the limit.

    Read from ``wsgi.input`` directly rather than through ``bottle.request.body``, which
    spools bodies over 100 KB to a temporary file and trusts the length it is told.
    """
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH", "").strip()
    if declared:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise _Refused(
                400,
                "bad_content_length",
                f"Content-Length {declared[:20]!r} is not a length",
                result=DeliveryResult.MALFORMED,
            )
        if length > max_body_bytes:
            raise _Refused(
                413,
                "body_too_large",
                f"body of {length} bytes is over the limit of {max_body_bytes}",
                result=DeliveryResult.TOO_LARGE,
            )
        body = read_at_most(stream, length)
        if len(body) < length:
            raise _Refused(
                400,
                "bad_content_length",
                f"body ended after {len(body)} of the {length} bytes announced",
                result=DeliveryResult.MALFORMED,
            )
        return body
    if not environ.get("wsgi.input_terminated"):
        # No length and a stream that may never end (PEP 3333): the body counts as empty.
        return b""
    body = read_at_most(stream, max_body_bytes + 1)
    if len(body) > max_body_bytes:
        raise _Refused(
            413,
            "body_too_large",
            f"body is over the limit of {max_body_bytes} bytes",
            result=DeliveryResult.TOO_LARGE,
        )
    return body


def _verify_signature(environ: Mapping[str, Any], body: bytes, *, key: bytes) -> None:
    signature = _first_header(environ, HEX_SIGNATURE_HEADERS)
    if not signature:
        hub = _first_header(environ, (HUB_SIGNATURE_HEADER,))
        if hub and not hub.startswith(HUB_SIGNATURE_PREFIX):
            raise _Refused(
                401,
                "bad_signature",
                f"{HUB_SIGNATURE_HEADER} must read '{HUB_SIGNATURE_PREFIX}<hex>'",
                result=DeliveryResult.BAD_SIGNATURE,
            )
        # Forgejo sends a bare "sha256=" when the hook has no secret: that is no signature.
        signature = hub.removeprefix(HUB_SIGNATURE_PREFIX).strip()
    if not signature:
        raise _Refused(
            401,
            "missing_signature",
            "no X-Forgejo-Signature (or X-Gitea-Signature, X-Hub-Signature-256) header; "
            "set the hook's secret in Forgejo",
            result=DeliveryResult.BAD_SIGNATURE,
        )
    expected = _hmac_sha256_hex(key, body)
    # Header values are latin-1 text in WSGI; comparing bytes keeps compare_digest total.
    given = signature.strip().lower().encode("latin-1", errors="replace")
    if not hmac.compare_digest(expected, given):
        raise _Refused(
            401,
            "bad_signature",
            "the signature does not match the body; check that the hook's secret in Forgejo "
            "is the one agent-fleet is configured with",
            result=DeliveryResult.BAD_SIGNATURE,
        )


def _parse(body: bytes, *, content_type: str) -> dict[str, Any]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        document: str | bytes = _parse_form_payload(body)
    elif media_type in ("", "application/json"):
        document = body
    else:
        raise _Refused(
            415,
            "unsupported_content_type",
            f"Content-Type {media_type[:60]!r} is not supported; configure the hook with "
            "content type application/json",
            result=DeliveryResult.MALFORMED,
        )
    try:
        # Bounded nesting, and no text that is not valid Unicode (webhook/inputs.py).
        payload = parse_json(document)
    except InputError as exc:
        raise _Refused(
            400, "malformed_json", exc.message, result=DeliveryResult.MALFORMED
        ) from None
    if not isinstance(payload, dict):
        raise _Refused(
            400,
            "malformed_json",
            f"body must be a JSON object, got a JSON {type(payload).__name__}",
            result=DeliveryResult.MALFORMED,
        )
    return payload


def _parse_form_payload(body: bytes) -> str:
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refused(
            400,
            "malformed_payload",
            f"form-encoded body is not valid: {exc}",
            result=DeliveryResult.MALFORMED,
        ) from exc
    values = fields.get("payload")
    if not values or len(values) != 1:
        raise _Refused(
            400,
            "malformed_payload",
            "form-encoded body must carry exactly one 'payload' field",
            result=DeliveryResult.MALFORMED,
        )
    return values[0]


# --- responses and records ---------------------------------------------------------------


_DEBUG_BY_WRAPPER: dict[object, bool] = {}


def _debug_logged() -> bool:
    """Whether debug lines are emitted under the current logging set-up.

    Cached per structlog configuration: even a debug call that is filtered out costs a
    logger bind, which at webhook rates is as much as the rest of the receiver's own work.
    """
    wrapper = structlog.get_config()["wrapper_class"]
    enabled = _DEBUG_BY_WRAPPER.get(wrapper)
    if enabled is None:
        try:
            enabled = bool(wrapper(None, [], {}).is_enabled_for(logging.DEBUG))
        except (AttributeError, TypeError):  # not a filtering logger: assume it logs
            enabled = True
        _DEBUG_BY_WRAPPER[wrapper] = enabled
    return enabled


def _first_header(environ: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """The first non-empty value among header ``names``; an empty header counts as absent.

    Read from the WSGI environ (latin-1 text) rather than ``bottle.request.headers``, which
    re-decodes values as UTF-8 and raises on a header that is not.
    """
    for environ_key in _environ_keys(names):
        value = environ.get(environ_key)
        if isinstance(value, str) and value and not value.isspace():
            return value.strip()
    return ""


# hashlib releases the GIL for updates of 2,048 bytes or more. Under load that turns every
# signature check into a wait for the GIL to come back (up to the 5 ms switch interval) while
# the server's other threads run; fed in smaller pieces the check stays on the CPU it has.
# Measured with bench/webhook.py: it is the difference between 0.5x and 0.7x the throughput of
# a bare endpoint at 4 connections.
_HMAC_PIECE = 2047


def _hmac_sha256_hex(key: bytes, body: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    view = memoryview(body)
    for start in range(0, len(view), _HMAC_PIECE):
        mac.update(view[start : start + _HMAC_PIECE])
    return mac.hexdigest().encode("ascii")


@functools.cache
def _environ_keys(names: tuple[str, ...]) -> tuple[str, ...]:
    """``X-Forgejo-Event`` → ``HTTP_X_FORGEJO_EVENT``, computed once per header tuple."""
    return tuple("HTTP_" + name.upper().replace("-", "_") for name in names)


def _json(status: int, body: Mapping[str, object]) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=json.dumps(body), status=status, headers={"Content-Type": "application/json"}
    )


def _error(refused: _Refused) -> bottle.HTTPResponse:
    return _json(refused.status, {"error": refused.code, "message": refused.message})


def _record(
    on_delivery: Callable[[str, str], None] | None,
    event: str,
    event_type: str,
    delivery: str,
    result: DeliveryResult,
    *,
    keys: tuple[Key, ...] = (),
    error: str | None = None,
) -> None:
    # Accepted and ignored deliveries are counted in /metrics and their keys show up in the
    # reconcile log, so they log at debug: an info line per delivery costs as much server
    # time as the rest of the receiver. Refusals are what an operator must see.
    routine = result in (DeliveryResult.ACCEPTED, DeliveryResult.IGNORED, DeliveryResult.ECHO)
    if routine and not _debug_logged():
        if on_delivery is not None:
            on_delivery(event if event in KNOWN_EVENTS else "other", result.value)
        return
    emit = log.debug if routine else log.warning
    emit(
        "webhook.received",
        # structlog's own `event` is the message name, so the Forgejo event gets a longer one.
        forgejo_event=event[:_MAX_LOGGED_HEADER],
        event_type=event_type[:_MAX_LOGGED_HEADER],
        delivery=delivery[:_MAX_LOGGED_HEADER],
        result=result.value,
        keys=[str(each) for each in keys],
        **({"error": error} if error else {}),
    )
    if on_delivery is not None:
        on_delivery(event if event in KNOWN_EVENTS else "other", result.value)
