"""Frozen models of issues and comments, and the issue state, parsed from Forgejo's JSON.
``reconciler.forgejo.types`` re-exports them with the other wire models.

This module imports neither pyforgejo nor httpx on purpose: it is safe to import anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

from reconciler.forgejo.parsing import (
    _Frozen,
    _int,
    _login,
    _mapping,
    _objects,
    _opt_int,
    _opt_str,
    _req_int,
    _req_str,
    _req_time,
    _str,
    _time,
)
from reconciler.forgejo.repo_types import Label


class IssueState(StrEnum):
    """The state of an issue or pull request as Forgejo reports it."""

    OPEN = "open"
    CLOSED = "closed"


class Issue(_Frozen):
    """An issue, or the issue half of a pull request (``is_pull``)."""

    id: int | None
    number: int
    title: str
    body: str
    state: IssueState
    labels: tuple[str, ...]
    author: str
    assignees: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    is_pull: bool
    html_url: str
    repo: str | None = None
    comments: int = 0

    @classmethod
    def from_api(cls, raw: object) -> Issue:
        data = _mapping(raw, "issue")
        what = "issue"
        assignees = tuple(_login(user) for user in _objects(data, "assignees"))
        if not assignees and isinstance(data.get("assignee"), Mapping):
            assignees = (_login(data.get("assignee")),)
        repository = data.get("repository")
        return cls(
            id=_opt_int(data, "id"),
            number=_req_int(data, "number", what),
            title=_str(data, "title"),
            body=_str(data, "body"),
            state=IssueState(_req_str(data, "state", what)),
            labels=tuple(Label.from_api(label).name for label in _objects(data, "labels")),
            author=_login(data.get("user")),
            assignees=tuple(login for login in assignees if login),
            created_at=_req_time(data, "created_at", what),
            updated_at=_req_time(data, "updated_at", what),
            closed_at=_time(data, "closed_at"),
            # Issue lists without ``type=`` include pull requests, marked by this object.
            is_pull=isinstance(data.get("pull_request"), Mapping),
            html_url=_str(data, "html_url"),
            repo=_opt_str(repository, "full_name") if isinstance(repository, Mapping) else None,
            comments=_int(data, "comments"),
        )


class Comment(_Frozen):
    """A comment on an issue or pull request."""

    id: int
    body: str
    author: str
    created_at: datetime | None
    updated_at: datetime | None
    html_url: str | None

    @classmethod
    def from_api(cls, raw: object) -> Comment:
        data = _mapping(raw, "comment")
        return cls(
            id=_req_int(data, "id", "comment"),
            body=_str(data, "body"),
            author=_login(data.get("user")),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
            html_url=_opt_str(data, "html_url"),
        )
