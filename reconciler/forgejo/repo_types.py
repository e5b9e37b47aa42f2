"""Frozen models of labels (and the label specs the gateway ensures), users, repositories and
permissions, webhooks, API limits and pages, parsed from Forgejo's JSON.
``reconciler.forgejo.types`` re-exports them with the other wire models.

This module imports neither pyforgejo nor httpx on purpose: it is safe to import anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from pydantic import field_validator

from reconciler.forgejo.parsing import (
    MalformedResponse,
    _bool,
    _Frozen,
    _login,
    _mapping,
    _opt_int,
    _req_int,
    _req_str,
    _str,
    _strings,
)

_COLOR = re.compile(r"^[0-9a-f]{6}$")


def normalize_color(color: str) -> str:
    """``#E11D21`` / ``e11d21`` → ``e11d21``: the form Forgejo's API answers with."""
    value = color.strip().lstrip("#").lower()
    if not _COLOR.match(value):
        raise ValueError(f"label colour must be six hex digits like 'e11d21', got {color!r}")
    return value


def label_scope(name: str, *, exclusive: bool) -> str | None:
    """Forgejo's scope rule: text before the *last* ``/`` of an exclusive label, if any.

    ``kind/bug`` → ``kind``; ``a/b/c`` → ``a/b``; no scope when the label is not exclusive or the
    last ``/`` is the first or the last character (``models/issues/label.go``).
    """
    if not exclusive:
        return None
    cut = name.rfind("/")
    if cut <= 0 or cut == len(name) - 1:
        return None
    return name[:cut]


class LabelSpec(_Frozen):
    """A label agent-fleet wants to exist in a repository (input of ``ensure_labels``)."""

    name: str
    color: str
    description: str = ""
    exclusive: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("label name must not be blank")
        return value

    @field_validator("color")
    @classmethod
    def _color_is_hex(cls, value: str) -> str:
        return normalize_color(value)


class Label(_Frozen):
    """A repository label."""

    id: int
    name: str
    color: str
    description: str = ""
    exclusive: bool = False
    is_archived: bool = False

    @property
    def scope(self) -> str | None:
        """The exclusive scope this label belongs to (``status`` for ``status/done``), if any."""
        return label_scope(self.name, exclusive=self.exclusive)

    def matches(self, spec: LabelSpec) -> bool:
        """True when colour, description and exclusivity are already what ``spec`` asks for."""
        return (
            self.color.lstrip("#").lower() == spec.color
            and self.description == spec.description
            and self.exclusive == spec.exclusive
        )

    @classmethod
    def from_api(cls, raw: object) -> Label:
        data = _mapping(raw, "label")
        return cls(
            id=_req_int(data, "id", "label"),
            name=_req_str(data, "name", "label"),
            color=_str(data, "color").lstrip("#").lower(),
            description=_str(data, "description"),
            exclusive=_bool(data, "exclusive"),
            is_archived=_bool(data, "is_archived"),
        )


class User(_Frozen):
    """A Forgejo account."""

    id: int | None
    login: str
    full_name: str = ""
    email: str = ""
    is_admin: bool = False

    @classmethod
    def from_api(cls, raw: object) -> User:
        data = _mapping(raw, "user")
        login = _login(data)
        if not login:
            raise MalformedResponse(f"user: neither 'login' nor 'username' in {sorted(data)}")
        return cls(
            id=_opt_int(data, "id"),
            login=login,
            full_name=_str(data, "full_name"),
            email=_str(data, "email"),
            is_admin=_bool(data, "is_admin"),
        )


class Repo(_Frozen):
    """A repository. ``full_name`` is ``owner/name``, the form every gateway call takes."""

    id: int
    owner: str
    name: str
    full_name: str
    default_branch: str
    private: bool = False
    empty: bool = False
    archived: bool = False
    html_url: str = ""
    clone_url: str = ""
    can_admin: bool = False
    can_push: bool = False
    can_pull: bool = False

    @classmethod
    def from_api(cls, raw: object) -> Repo:
        data = _mapping(raw, "repository")
        name = _req_str(data, "name", "repository")
        owner = _login(data.get("owner"))
        full_name = _str(data, "full_name") or (f"{owner}/{name}" if owner else "")
        if not full_name:
            raise MalformedResponse("repository: no 'full_name' and no owner login")
        permissions = data.get("permissions")
        perms: Mapping[str, object] = permissions if isinstance(permissions, Mapping) else {}
        return cls(
            id=_req_int(data, "id", "repository"),
            owner=owner or full_name.split("/", 1)[0],
            name=name,
            full_name=full_name,
            default_branch=_str(data, "default_branch") or "main",
            private=_bool(data, "private"),
            empty=_bool(data, "empty"),
            archived=_bool(data, "archived"),
            html_url=_str(data, "html_url"),
            clone_url=_str(data, "clone_url"),
            can_admin=_bool(perms, "admin"),
            can_push=_bool(perms, "push"),
            can_pull=_bool(perms, "pull"),
        )


class RepoPermission(_Frozen):
    """What one user may do in one repository (``/collaborators/{login}/permission``)."""

    login: str
    permission: str
    role_name: str = ""

    @property
    def can_push(self) -> bool:
        """Write access or more: the bar for trusting an author's text in a prompt."""
        return self.permission in ("write", "admin", "owner")

    @classmethod
    def from_api(cls, raw: object, *, login: str) -> RepoPermission:
        data = _mapping(raw, "permission")
        return cls(
            login=_login(data.get("user")) or login,
            permission=_req_str(data, "permission", "permission"),
            role_name=_str(data, "role_name"),
        )


class Hook(_Frozen):
    """A repository webhook. Forgejo never returns the secret, so it is not here."""

    id: int
    type: str
    url: str
    content_type: str
    events: tuple[str, ...]
    active: bool
    branch_filter: str = ""

    @classmethod
    def from_api(cls, raw: object) -> Hook:
        data = _mapping(raw, "hook")
        config_raw = data.get("config")
        config: Mapping[str, object] = config_raw if isinstance(config_raw, Mapping) else {}
        return cls(
            id=_req_int(data, "id", "hook"),
            type=_str(data, "type"),
            url=_str(config, "url"),
            content_type=_str(config, "content_type"),
            events=_strings(data, "events"),
            active=_bool(data, "active"),
            branch_filter=_str(data, "branch_filter"),
        )


class ApiLimits(_Frozen):
    """The instance's paging limits (``/settings/api``)."""

    max_response_items: int
    default_paging_num: int
    default_git_trees_per_page: int | None = None
    default_max_blob_size: int | None = None

    @classmethod
    def from_api(cls, raw: object) -> ApiLimits:
        data = _mapping(raw, "api settings")
        return cls(
            max_response_items=_req_int(data, "max_response_items", "api settings"),
            default_paging_num=_req_int(data, "default_paging_num", "api settings"),
            default_git_trees_per_page=_opt_int(data, "default_git_trees_per_page"),
            default_max_blob_size=_opt_int(data, "default_max_blob_size"),
        )


ItemT = TypeVar("ItemT")


class Page(_Frozen, Generic[ItemT]):
    """One page of a list endpoint: its items and where the next page is, if any.

    ``total_count`` is ``X-Total-Count`` (``None`` if the server sent none); ``next_page`` is
    taken from the ``Link: rel="next"`` header, or inferred from the total when no Link came.
    """

    page: int
    limit: int
    items: tuple[ItemT, ...]
    total_count: int | None
    next_page: int | None


def list_body(raw: object, what: str) -> Sequence[object]:
    """The elements of a list body; ``null`` (seen on real servers) counts as an empty page."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MalformedResponse(f"expected a JSON list for {what}, got {type(raw).__name__}")
    # Forgejo's pull list documents ``null`` for entries that failed to load; skip them.
    return [item for item in raw if item is not None]
