"""The wire models of the shared-notes endpoints (``share`` and ``context``) and the naming of
topics, their wiki pages and keys, apart from ``reconciler/fleet/knowledge.py``: the run's MCP
server, the agent client and the webhook's event mapping import them without the store and
the Forgejo gateway (``agent-fleet mcp`` starts quickly).
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from reconciler.fleet.api import Answer, Query, Request
from reconciler.keys import KNOWLEDGE, Key

TOPIC_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
MAX_TOPIC = 64
PAGE_PREFIX = "fleet-notes-"
_TOPIC = re.compile(TOPIC_PATTERN)


def knowledge_key(repo: str, topic: str) -> Key:
    """The knowledge controller's key for one topic of one repository."""
    return Key(KNOWLEDGE, repo, topic)


def is_topic(name: str) -> bool:
    """Whether ``name`` is a topic: lowercase words of letters and digits joined by dashes."""
    return len(name) <= MAX_TOPIC and bool(_TOPIC.match(name))


def page_title(topic: str) -> str:
    """The wiki page of a topic: ``fleet-notes-<topic>``."""
    return f"{PAGE_PREFIX}{topic}"


def topic_of_web_path(web_path: str) -> str | None:
    """The topic of the page at ``web_path`` (a wiki event's ``page``), or None for a page
    that is not the fleet's. Forgejo marks a title that keeps its dashes with ``.-``."""
    if web_path.endswith(".-"):
        title = urllib.parse.unquote_plus(web_path[: -len(".-")])
    else:
        title = urllib.parse.unquote_plus(web_path.replace("-", " "))
    return topic_of_page(title)


def topic_of_page(title: str) -> str | None:
    """The topic a wiki page holds, or None for a page that is not the fleet's."""
    if not title.startswith(PAGE_PREFIX):
        return None
    topic = title[len(PAGE_PREFIX) :]
    return topic if is_topic(topic) else None


class ShareRequest(Request):
    """``POST /api/v1/tasks/{id}/notes``: a note for the repository's shared knowledge."""

    topic: str = Field(
        min_length=1,
        max_length=MAX_TOPIC,
        pattern=TOPIC_PATTERN,
        description="What the note is about: lowercase words joined by dashes, e.g. build-cache.",
    )
    note: str = Field(
        min_length=1,
        description="The note, Markdown; at most mcp.max_note_bytes bytes, no HTML comments.",
    )


class ContextQuery(Query):
    """``GET /api/v1/tasks/{id}/notes``: one topic's notes, or (no topic) the list of topics."""

    topic: str | None = Field(
        default=None, max_length=MAX_TOPIC, pattern=TOPIC_PATTERN, description="The topic."
    )


class Note(BaseModel):
    """A note as recorded: what an agent shared, and who it was."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    topic: str
    text: str
    agent_id: str
    role: str | None = None
    task_id: str
    issue_number: int
    at: datetime


class NoteView(Answer):
    """A note as ``context`` shows it, labelled with its author and whether it is trusted."""

    id: str
    text: str
    author: str = Field(description="`agent:<id>`: agent-written text.")
    role: str | None
    task_id: str
    issue_number: int
    at: datetime
    trusted: bool = Field(description="The writer's role is one of mcp.trusted_roles.")
    on_wiki: bool = Field(description="Written to the wiki page (False: still queued).")


class TopicSummary(Answer):
    """One topic of the repository's shared knowledge."""

    topic: str
    page: str = Field(description="The wiki page's title.")
    notes: int = Field(description="Notes on the page and still queued for it.")


class ShareAnswer(Answer):
    """The note, queued for its topic's wiki page."""

    note_id: str
    topic: str
    page: str
    notes_left: int = Field(description="Notes this task may still share.")


class ContextAnswer(Answer):
    """A topic's shared knowledge, or the repository's topics."""

    repo: str
    topic: str | None
    topics: tuple[TopicSummary, ...] = ()
    page_url: str = ""
    page_text: str = Field(
        default="", description="The page's text outside note blocks (people's, and headings)."
    )
    page_text_trusted: bool = Field(
        default=False,
        description="Everyone who edited the page, agent-fleet aside, is a trusted author.",
    )
    page_editors: tuple[str, ...] = ()
    notes: tuple[NoteView, ...] = ()


__all__ = [
    "MAX_TOPIC",
    "PAGE_PREFIX",
    "TOPIC_PATTERN",
    "ContextAnswer",
    "ContextQuery",
    "Note",
    "NoteView",
    "ShareAnswer",
    "ShareRequest",
    "TopicSummary",
    "is_topic",
    "knowledge_key",
    "page_title",
    "topic_of_page",
    "topic_of_web_path",
]
