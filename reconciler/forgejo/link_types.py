"""Frozen models of what an issue's timeline says about its labels, parsed from Forgejo's JSON.
``reconciler.forgejo.types`` re-exports them with the other wire models.

Forgejo's timeline (``GET /repos/{owner}/{repo}/issues/{index}/timeline``) lists every event of
an issue as a ``TimelineComment`` with a ``type``; agent-fleet reads only the ``label`` entries,
which say who added or removed which label and when (``body`` is ``"1"`` for an addition and
empty for a removal, as Forgejo stores them). This module imports neither pyforgejo nor httpx.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from reconciler.forgejo.parsing import _Frozen, _login, _mapping, _req_int, _str, _time
from reconciler.forgejo.repo_types import Label


class LabelEvent(_Frozen):
    """One label added to or removed from an issue, by ``actor``."""

    id: int
    label: str
    added: bool
    actor: str
    created_at: datetime | None

    @classmethod
    def from_timeline(cls, raw: object) -> LabelEvent | None:
        """The label change a timeline entry records, or None for any other kind of entry."""
        data = _mapping(raw, "timeline entry")
        label = data.get("label")
        if _str(data, "type") != "label" or not isinstance(label, Mapping):
            return None
        return cls(
            id=_req_int(data, "id", "timeline entry"),
            label=Label.from_api(label).name,
            added=_str(data, "body") == "1",
            actor=_login(data.get("user")),
            created_at=_time(data, "created_at"),
        )
