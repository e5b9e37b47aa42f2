"""Task credentials: a bearer token scoped to one task under one lease, for ``agent-fleet mcp``.

The daemon issues a token when it hands a run its MCP configuration (the ssh executor, the
pull worker's dequeue answer) and checks it on every call of the task endpoints the MCP server
uses (``webhook/mcp_api.py``). The token is ``aft1.<task id>.<lease>.<mac>``: the MAC is an
HMAC-SHA256 over the version, task id and lease, keyed by the daemon's ``api.task_token_secret``
(a random key per process when none is configured). Nothing is stored: the token proves which
task and lease it was issued for, and the API then checks that lease is still the task's
current one, so a token stops working the moment the task is reassigned.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from reconciler.models import TaskId

PREFIX = "aft1"
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class TaskGrant:
    """What a valid task token grants: acting for ``task_id`` under ``lease_generation``."""

    task_id: TaskId
    lease_generation: int


class TaskTokens:
    """Issues and checks task tokens under one secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret if secret else secrets.token_bytes(32)

    def _mac(self, task_id: str, lease_generation: int) -> str:
        message = f"{PREFIX}.{task_id}.{lease_generation}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, task_id: str, lease_generation: int) -> str:
        """The token for ``task_id`` under ``lease_generation``."""
        if not _TASK_ID.match(task_id):
            raise ValueError(f"task id {task_id!r} cannot be put in a token")
        if lease_generation < 1:
            raise ValueError("a lease generation starts at 1")
        mac = self._mac(task_id, lease_generation)
        return f"{PREFIX}.{task_id}.{lease_generation}.{mac}"

    def check(self, token: str) -> TaskGrant | None:
        """What ``token`` grants, or None when it is not a task token this daemon issued."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            return None
        _, task_id, lease, mac = parts
        if not _TASK_ID.match(task_id) or not lease.isdigit() or int(lease) < 1:
            return None
        expected = self._mac(task_id, int(lease))
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            return None
        return TaskGrant(TaskId(task_id), int(lease))


def is_task_token(token: str) -> bool:
    """Whether ``token`` has a task token's shape (it may still be forged or stale)."""
    return token.startswith(f"{PREFIX}.")


__all__ = ["PREFIX", "TaskGrant", "TaskTokens", "is_task_token"]
