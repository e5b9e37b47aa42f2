"""The Bottle application: JSON errors everywhere, health and metrics endpoints.

``make_app()`` builds an app whose every error (404, 405, 500…) is JSON with a stable
``error`` code; the daemon then installs the webhook receiver and the agent API on it. It is
the one error handler of the whole app: a 500 is logged as one structured line (the error's
type and where it was raised — never its message, which can quote a credential), Bottle's raw
tracebacks never reach the log stream, and even a failing error handler answers JSON.

* ``GET /healthz`` — the process is up and serving (always 200 while it is).
* ``GET /readyz`` — 200 when the store is open, Forgejo answered recently, every watched
  repository is set up, the last resync is not stale and every reconcile worker is alive and
  not stuck on one key; 503 with the failing checks otherwise. Matrix, when enabled, is a check
  that only marks the process ``degraded`` (listed in ``degraded``), never unready.
* ``GET /metrics`` — Prometheus text format.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import bottle  # type: ignore[import-untyped]
import structlog

from reconciler.engine.metrics import CONTENT_TYPE, Metrics
from webhook.inputs import InputError

log = structlog.get_logger(__name__)

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    500: "internal_error",
}


@dataclass(frozen=True)
class Check:
    """One readiness check: whether it passes and a short human explanation. A check that is
    not ``required`` (Matrix) shows the process degraded when it fails, not unready."""

    ok: bool
    detail: str
    required: bool = True


def json_response(status: int, body: Mapping[str, object]) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=json.dumps(body), status=status, headers={"Content-Type": "application/json"}
    )


class _Discard:
    """A ``wsgi.errors`` stream that drops what is written to it.

    Bottle writes a caught exception's raw traceback there (waitress points it at stderr),
    which would splice multi-line text into the JSON log; the 500 handler logs it instead,
    as one structured line.
    """

    def write(self, text: str) -> int:
        return len(text)

    def writelines(self, lines: object) -> None:
        return None

    def flush(self) -> None:
        return None


_LAST_RESORT = json.dumps(
    {"error": "internal_error", "message": "internal error; see the agent-fleet log"}
).encode()


class JsonApp(bottle.Bottle):  # type: ignore[misc]  # bottle ships no type information
    """A Bottle app whose every answer, even a failing error handler's, is JSON."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.errors"] = _Discard()
        try:
            return self.wsgi(environ, start_response)
        except Exception:  # noqa: BLE001 -- the last line of defence must answer
            log.error("http.unhandled", path=_printable(environ.get("PATH_INFO", "")))
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "application/json"), ("Content-Length", str(len(_LAST_RESORT)))],
                sys.exc_info(),
            )
            return [_LAST_RESORT]


def _printable(text: object, *, limit: int = 200) -> str:
    """``text`` for a log line: escaped where not printable, cut at ``limit`` characters."""
    value = text if isinstance(text, str) else repr(text)
    return value.encode("unicode_escape", errors="backslashreplace").decode("ascii")[:limit]


def _where(exc: BaseException | None) -> list[str]:
    """The frames an exception passed through, as ``file:line in function``.

    Neither the exception's message nor source lines: a message can quote the input that
    caused it (a UnicodeDecodeError quotes the raw header, a real token), and the log must
    never carry a credential.
    """
    if exc is None:
        return []
    frames = traceback.extract_tb(exc.__traceback__)
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-12:]]


def make_app() -> bottle.Bottle:
    app = JsonApp(catchall=True)

    def json_error(error: bottle.HTTPError) -> str:
        try:
            bottle.response.content_type = "application/json"
            code = _ERROR_CODES.get(error.status_code, f"http_{error.status_code}")
            message = (
                error.body if isinstance(error.body, str) and error.body else error.status_line
            )
            exc = error.exception if isinstance(error.exception, BaseException) else None
            if isinstance(exc, InputError):
                # A refusal of what the client sent, raised where no endpoint wrapper turned it
                # into an answer (a page reading the Authorization header): its own 4xx.
                bottle.response.status = exc.status
                return json.dumps({"error": exc.code, "message": exc.message[:500]})
            if error.status_code == 500:
                # Never leak a traceback or internals to a client; the log has where it failed.
                log.error(
                    "http.internal_error",
                    path=_printable(bottle.request.environ.get("PATH_INFO", "")),
                    error_type=type(exc).__name__ if exc is not None else "",
                    where=_where(exc),
                )
                message = "internal error; see the agent-fleet log"
            return json.dumps({"error": code, "message": str(message)[:500]})
        except Exception:  # noqa: BLE001 -- an error handler that fails must still answer
            return _LAST_RESORT.decode()

    # Every error status Bottle could produce, not only the ones the routes use.
    for status in range(400, 600):
        app.error(status)(json_error)
    return app


def install_health(
    app: bottle.Bottle,
    *,
    readiness: Callable[[], Mapping[str, Check]],
    metrics: Metrics,
) -> None:
    @app.get("/healthz")  # type: ignore[untyped-decorator]
    def healthz() -> bottle.HTTPResponse:
        return json_response(200, {"status": "ok"})

    @app.get("/readyz")  # type: ignore[untyped-decorator]
    def readyz() -> bottle.HTTPResponse:
        checks = readiness()
        ready = all(c.ok or not c.required for c in checks.values())
        body = {
            "ready": ready,
            "degraded": sorted(name for name, c in checks.items() if not c.ok and not c.required),
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
        }
        return json_response(200 if ready else 503, body)

    @app.get("/metrics")  # type: ignore[untyped-decorator]
    def prometheus() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(
            body=metrics.render(), status=200, headers={"Content-Type": CONTENT_TYPE}
        )
