"""The Bottle application: JSON errors everywhere, health and metrics endpoints.

``make_app()`` builds an app whose every error (404, 405, 500…) is JSON with a stable
``error`` code; the daemon then installs the webhook receiver and the agent API on it.

* ``GET /healthz`` — the process is up and serving (always 200 while it is).
* ``GET /readyz`` — 200 when the store is open, Forgejo answered recently and the last resync
  is not stale; 503 with the failing checks otherwise. Matrix, when enabled, is a check that
  only marks the process ``degraded`` (listed in ``degraded``), never unready.
* ``GET /metrics`` — Prometheus text format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import bottle  # type: ignore[import-untyped]
import structlog

from reconciler.engine.metrics import CONTENT_TYPE, Metrics

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


def make_app() -> bottle.Bottle:
    app = bottle.Bottle(catchall=True)

    def json_error(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        code = _ERROR_CODES.get(error.status_code, f"http_{error.status_code}")
        message = error.body if isinstance(error.body, str) and error.body else error.status_line
        if error.status_code == 500:
            # Never leak a traceback or internals to a client; the log has them.
            log.error(
                "http.internal_error",
                path=bottle.request.path,
                error=repr(error.exception),
                traceback=error.traceback,
            )
            message = "internal error; see the agent-fleet log"
        return json.dumps({"error": code, "message": message})

    for status in (400, 401, 403, 404, 405, 409, 413, 500):
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
