"""The wire models of the shared-notes endpoints (``share`` and ``context``), apart from
``reconciler/fleet/knowledge.py`` so that the run's MCP server and the agent client import
them without the store and the Forgejo gateway (``agent-fleet mcp`` starts quickly).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from reconciler.fleet.api import Answer, Query, Request

TOPIC_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
MAX_TOPIC = 64


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
    "TOPIC_PATTERN",
    "ContextAnswer",
    "ContextQuery",
    "Note",
    "NoteView",
    "ShareAnswer",
    "ShareRequest",
    "TopicSummary",
]
