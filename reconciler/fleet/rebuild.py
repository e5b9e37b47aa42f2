"""What a task's own status comment still tells after the local state was lost.

Task state lives on the issue's ``status/`` label; the details — how many attempts were made,
why the task failed — are written in the bot's status comment. When the local store lost a
task, the assignment controller reads that comment back with :func:`facts_from_status_comment`
so the rebuilt task (and the comment written from it) says what it said before, not
``Failed after 0 attempt(s):`` with no reason. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RebuiltFacts", "facts_from_status_comment"]

_FAILED = re.compile(r"❌ Failed after (\d+) attempt\(s\): (.*)")
_ATTEMPT = re.compile(r"· attempt (\d+)\s*$")


@dataclass(frozen=True)
class RebuiltFacts:
    """Facts recovered from a status comment; ``None`` where the comment does not say."""

    attempt: int | None = None
    failure_reason: str | None = None


def facts_from_status_comment(body: str) -> RebuiltFacts:
    """The attempt count and failure reason written in the bot's status comment ``body``.

    The comment's first line after the hidden marker is the status line the assignment
    controller renders (``❌ Failed after 2 attempt(s): timed out …``, ``🤖 Taken by **box** · branch
    `…` · attempt 3``); anything else (a person's edit, an unknown line) yields no facts.
    """
    lines = [line.strip() for line in body.replace("\r\n", "\n").splitlines()]
    status = next((line for line in lines if line and not line.startswith("<!--")), "")
    failed = _FAILED.match(status)
    if failed:
        reason = failed.group(2).strip()
        return RebuiltFacts(attempt=int(failed.group(1)), failure_reason=reason or None)
    attempt = _ATTEMPT.search(status)
    if attempt:
        return RebuiltFacts(attempt=int(attempt.group(1)))
    return RebuiltFacts()
