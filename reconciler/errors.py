"""The one error module: every error agent-fleet raises on purpose is defined here.

The loop decides what to do with a failed reconcile by the class of the error:

* ``TransientError`` (and any exception not defined here) is retried with per-key
  exponential backoff.
* ``WaitingError`` requeues after ``retry_after`` seconds and logs at info level.
* ``StalledError`` stops retrying until the key's inputs change; its reason is shown.

Forgejo API failures are mapped by the gateway onto the ``ForgejoError`` family so no other
module needs to know about HTTP status codes.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base class of every error agent-fleet raises deliberately."""


class ConfigError(FleetError):
    """The configuration is invalid; ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "; ".join(f"{path}: {msg}" for path, msg in problems)
        super().__init__(f"invalid configuration{where}: {lines}")


class TransientError(FleetError):
    """Something that may succeed if tried again later (network, 5xx, lock timeout)."""


class WaitingError(FleetError):
    """A condition that is expected to clear by itself; retry after ``retry_after`` seconds."""

    def __init__(self, reason: str, *, retry_after: float) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class StaleStateError(TransientError):
    """A record changed between being read and being written; retry with its new state."""


class StalledError(FleetError):
    """A condition that will not clear until its inputs change; do not retry."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class IllegalTransitionError(FleetError):
    """A task was asked to move between two states the state machine does not connect."""


class StoreError(FleetError):
    """The local state store cannot be opened or written."""


class StoreLockedError(StoreError):
    """Another process holds the state store."""


class NotFoundError(FleetError):
    """A local record (task, agent, receipt) does not exist."""


# --- refused requests (the agent API answers each with its HTTP status) --------------------


class RefusedError(FleetError):
    """A request from an agent or an operator that the registry refuses.

    ``code`` is the stable, machine-readable reason (``stale_lease``, ``unknown_token``…)
    the agent API returns as the ``error`` of its JSON answer.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class UnauthenticatedError(RefusedError):
    """No credential, or one nobody issued (HTTP 401)."""


class ForbiddenError(RefusedError):
    """A valid credential that does not allow this request (HTTP 403)."""


class ConflictError(RefusedError):
    """The request contradicts the current state: a stale lease, a deregistered agent (409)."""


# --- Forgejo API errors -------------------------------------------------------------------


class ForgejoError(FleetError):
    """A Forgejo API call failed. ``status`` is the HTTP status (0 when no response came)."""

    def __init__(
        self, message: str, *, status: int = 0, operation: str = "", body: str = ""
    ) -> None:
        self.status = status
        self.operation = operation
        self.body = body
        super().__init__(message)


class ForgejoNotFound(ForgejoError):
    """404: the repository, issue, PR, label or comment does not exist (or is hidden)."""


class ForgejoConflict(ForgejoError):
    """409 or 422: the request conflicts with the current state (e.g. already exists)."""


class ForgejoForbidden(ForgejoError):
    """401 or 403: the token is missing, wrong, or lacks the permission."""


class ForgejoServerError(ForgejoError, TransientError):
    """5xx, or no response at all (connection refused, timeout). Retried.

    ``outcome_unknown`` is True when the request may have been carried out all the same: it
    was sent and the answer was lost (a read timeout, a reset), or Forgejo answered 5xx, which
    it can do after its database already changed. Only a connection that was never made is a
    certain "nothing happened".
    """

    def __init__(self, message: str, *, outcome_unknown: bool = True, **kw: object) -> None:
        self.outcome_unknown = outcome_unknown
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ForgejoRateLimited(ForgejoError, TransientError):
    """429. ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]
