"""Shared knowledge: notes agents share about a topic, kept on the repository's Forgejo wiki.

An agent run shares a note through its MCP server (the ``share`` tool → ``POST
/api/v1/tasks/{id}/notes``) and reads a topic's notes back (``context`` → ``GET …/notes``).
Forgejo holds the knowledge: one wiki page per topic, titled ``fleet-notes-<topic>``, each note
a marked block saying who wrote it (agent, role, task, issue) and when. The HTTP handlers never
call Forgejo, so the daemon's part is in two writers:

* :class:`KnowledgeBook` (the handlers): a shared note is queued durably in the store's outbox
  (topic ``knowledge``, the note's id as the message id) and the topic's key is handed to the
  loop; ``context`` answers from what the daemon last read of the page plus the notes still
  queued.
* the knowledge controller (``controllers/knowledge.py``): reads the page, appends the queued
  notes the page does not hold yet (by id, so a write repeated after a crash or a lost answer
  adds nothing twice), records what the page now says (:func:`record_page`, the store's
  ``knowledge:<repo>`` metadata) and only then acknowledges the notes.

Trust: a note is agent-written text. ``context`` labels each one with its author, task and
whether it is trusted: only when its writer's role is in ``mcp.trusted_roles``. The rest of the
page (its heading and anything people wrote outside note blocks) is trusted when every person
who edited the page, other than agent-fleet itself, is a trusted author; a trusted maintainer
adopts a note by removing its marker lines, which makes its text part of the page. Notes are
never put into a task's prompt.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.errors import ConflictError, ForgejoError, RefusedError, StoreError
from reconciler.fleet.knowledge_api import (
    PAGE_PREFIX,
    ContextAnswer,
    ContextQuery,
    Note,
    NoteView,
    ShareAnswer,
    ShareRequest,
    TopicSummary,
    is_topic,
    knowledge_key,
    page_title,
    topic_of_page,
    topic_of_web_path,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key
from reconciler.models import Task
from reconciler.settings import Settings
from reconciler.store import Store
from reconciler.text import describe_error

log = structlog.get_logger(__name__)

OUTBOX_TOPIC = "knowledge"
_META = "knowledge:"
_BEGIN = "<!-- fleet-note "
_END = "<!-- /fleet-note -->"
_BLOCK = re.compile(
    r"^<!-- fleet-note (?P<meta>\{.*?\}) -->\n(?P<body>.*?)^<!-- /fleet-note -->\n?",
    re.MULTILINE | re.DOTALL,
)


# --- the page --------------------------------------------------------------------------------


def page_heading(topic: str) -> str:
    """What a new topic page starts with."""
    return (
        f"# Fleet notes: {topic}\n\n"
        "Notes that agent-fleet's agents shared about this topic. Each note is agent-written "
        "text, marked with who wrote it; a trusted maintainer adopts a note by removing its "
        "two marker lines.\n"
    )


def render_note(note: Note) -> str:
    """A note's block on the page: a hidden marker with its record, then its text quoted."""
    meta = {
        "id": note.id,
        "agent": note.agent_id,
        "role": note.role,
        "task": note.task_id,
        "issue": note.issue_number,
        "at": note.at.isoformat(),
    }
    role = f", role {note.role}" if note.role else ""
    header = (
        f"> **Agent-written note** by `{note.agent_id}`{role}, for #{note.issue_number} "
        f"(task {note.task_id}), {note.at.strftime('%Y-%m-%d %H:%M UTC')}:"
    )
    quoted = "\n".join(f"> {line}".rstrip() for line in note.text.split("\n"))
    return f"{_BEGIN}{json.dumps(meta, separators=(',', ':'))} -->\n{header}\n>\n{quoted}\n{_END}\n"


def append_notes(content: str | None, topic: str, notes: Sequence[Note]) -> str:
    """The page with ``notes`` appended (a new page when ``content`` is None)."""
    text = page_heading(topic) if content is None else content
    for note in notes:
        text = text.rstrip("\n") + "\n\n" + render_note(note)
    return text


def parse_page(content: str, topic: str) -> tuple[str, tuple[Note, ...]]:
    """(the page's text outside note blocks, its notes) — a block that does not parse is left
    in the text, so nothing a person wrote is lost or mistaken for a note."""
    notes: list[Note] = []
    kept: list[str] = []
    position = 0
    for block in _BLOCK.finditer(content):
        note = _note_of(block.group("meta"), block.group("body"), topic)
        if note is None or any(n.id == note.id for n in notes):
            continue  # not a note after all, or a copy of one: left as text
        kept.append(content[position : block.start()])
        position = block.end()
        notes.append(note)
    kept.append(content[position:])
    return "".join(kept).strip() + "\n", tuple(notes)


def _note_of(meta_text: str, body: str, topic: str) -> Note | None:
    try:
        meta = json.loads(meta_text)
        lines = body.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        # The generated header and the blank quoted line after it are not the note's text.
        text = "\n".join(_unquote(line) for line in lines[2:])
        return Note(
            id=meta["id"],
            topic=topic,
            text=text,
            agent_id=meta["agent"],
            role=meta.get("role"),
            task_id=meta["task"],
            issue_number=meta["issue"],
            at=datetime.fromisoformat(meta["at"]),
        )
    except (ValueError, KeyError, TypeError, ValidationError):
        return None


def _unquote(line: str) -> str:
    if line.startswith("> "):
        return line[2:]
    return line.removeprefix(">")


# --- what the daemon last read of the wiki ----------------------------------------------------


class PageRecord(BaseModel):
    """What the knowledge controller last read of one topic's page."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    title: str
    url: str = ""
    text: str = ""
    text_trusted: bool = False
    editors: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()
    read_at: datetime


def _meta_name(repo: str) -> str:
    return f"{_META}{repo.lower()}"


def read_pages(store: Store, repo: str) -> dict[str, PageRecord]:
    """The pages the daemon last read for ``repo``, by topic."""
    raw = store.get_meta(_meta_name(repo))
    if not isinstance(raw, Mapping):
        return {}
    pages: dict[str, PageRecord] = {}
    for topic, doc in raw.items():
        try:
            pages[str(topic)] = PageRecord.model_validate(doc)
        except ValidationError as exc:
            raise StoreError(f"metadata {_meta_name(repo)}/{topic} is invalid: {exc}") from exc
    return pages


# The pages of a repository share one metadata record, and the loop may reconcile two topics
# of one repository at once: each read-modify-write of it holds this lock (one process owns
# the store).
_RECORDS = threading.Lock()


def record_page(store: Store, repo: str, page: PageRecord) -> None:
    """Remember what a topic's page says now. Written by the knowledge controller only."""
    with _RECORDS:
        pages = read_pages(store, repo)
        pages[page.topic] = page
        _write_pages(store, repo, pages)


def _write_pages(store: Store, repo: str, pages: Mapping[str, PageRecord]) -> None:
    store.set_meta(
        _meta_name(repo), {t: p.model_dump(mode="json") for t, p in sorted(pages.items())}
    )


def forget_page(store: Store, repo: str, topic: str) -> None:
    """Forget a topic's page (deleted on the wiki). Written by the knowledge controller only."""
    with _RECORDS:
        pages = read_pages(store, repo)
        if pages.pop(topic, None) is not None:
            _write_pages(store, repo, pages)


def pending_notes(store: Store, repo: str, topic: str | None = None) -> list[tuple[str, Note]]:
    """(outbox message id, note) for each note of ``repo`` not yet on the wiki, oldest first."""
    found: list[tuple[str, Note]] = []
    for message in store.pending(topic=OUTBOX_TOPIC):
        payload: dict[str, Any] = dict(message.payload)
        if str(payload.get("repo", "")).lower() != repo.lower():
            continue
        note = Note.model_validate(payload["note"])
        if topic is None or note.topic == topic:
            found.append((message.id, note))
    return found


def pending_topics(store: Store) -> set[tuple[str, str]]:
    """(repo, topic) of every note still queued."""
    return {
        (str(m.payload.get("repo", "")), str(dict(m.payload.get("note") or {}).get("topic", "")))
        for m in store.pending(topic=OUTBOX_TOPIC)
    }


class KnowledgeTopics:
    """The topics a full resync hands to the knowledge controller, per repository: the pages
    recorded (people may have edited them) and the topics of notes still queued; the wiki's
    own page list is read once per process, so a store rebuilt from nothing learns its topics
    there."""

    def __init__(self, gateway: ForgejoGateway, store: Store) -> None:
        self._gateway = gateway
        self._store = store
        self._listed: set[str] = set()

    def __call__(self, repo: str) -> list[Key]:
        topics = set(read_pages(self._store, repo))
        topics |= {t for r, t in pending_topics(self._store) if r.lower() == repo.lower()}
        if repo.lower() not in self._listed:
            try:
                pages = self._gateway.list_wiki_pages(repo)
            except ForgejoError as exc:
                # Listed at the next full resync; the topics already known are enqueued anyway.
                log.warning("knowledge.wiki_unreadable", repo=repo, error=describe_error(exc))
            else:
                self._listed.add(repo.lower())
                topics |= {t for t in (topic_of_page(p.title) for p in pages) if t is not None}
        return [knowledge_key(repo, t) for t in sorted(topics) if is_topic(t)]


# --- the handlers' side -----------------------------------------------------------------------


class KnowledgeBook:
    """Shares notes and reads them back for the notes endpoints; never calls Forgejo."""

    def __init__(
        self,
        store: Store,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue
        # Counting a task's notes and queueing one more is one step: two calls of one task at
        # once would otherwise both count below mcp.max_notes_per_task and both queue.
        self._sharing = threading.Lock()

    def _notes_of_task(self, task: Task) -> int:
        pages = read_pages(self._store, task.repo)
        written = {n.id for p in pages.values() for n in p.notes if n.task_id == task.id}
        queued = {n.id for _, n in pending_notes(self._store, task.repo) if n.task_id == task.id}
        return len(written | queued)

    def share(self, task: Task, request: ShareRequest) -> ShareAnswer:
        """Queue ``request``'s note for its topic's page, written by ``task``'s agent."""
        settings = self._settings().mcp
        text = request.note.replace("\r\n", "\n").replace("\r", "\n").strip()
        size = len(text.encode())
        if not text:
            raise RefusedError("empty_note", "the note is empty")
        if size > settings.max_note_bytes:
            raise RefusedError(
                "note_too_large",
                f"the note is {size} bytes; at most {settings.max_note_bytes} are allowed",
            )
        if "<!--" in text or "-->" in text:
            raise RefusedError("invalid_note", "a note may not hold HTML comments (<!-- or -->)")
        if task.agent_id is None:
            raise ConflictError("stale_lease", f"task {task.id} has no agent")
        with self._sharing:
            used = self._notes_of_task(task)
            if used >= settings.max_notes_per_task:
                raise ConflictError(
                    "note_limit_reached",
                    f"task {task.id} has shared {used} notes, "
                    "the most mcp.max_notes_per_task allows",
                )
            note = Note(
                id=uuid.uuid4().hex,
                topic=request.topic,
                text=text,
                agent_id=task.agent_id,
                role=task.required_role,
                task_id=task.id,
                issue_number=task.issue_number,
                at=self._clock(),
            )
            self._store.enqueue(
                OUTBOX_TOPIC,
                {"repo": task.repo, "note": note.model_dump(mode="json")},
                now=note.at,
                message_id=note.id,
            )
        if self._enqueue is not None:
            self._enqueue(knowledge_key(task.repo, note.topic))
        return ShareAnswer(
            note_id=note.id,
            topic=note.topic,
            page=page_title(note.topic),
            notes_left=settings.max_notes_per_task - used - 1,
        )

    def context(self, repo: str, topic: str | None) -> ContextAnswer:
        """A topic's notes (from the last read of its page, then the queued ones), or the
        repository's topics when ``topic`` is None."""
        pages = read_pages(self._store, repo)
        queued = pending_notes(self._store, repo)
        if topic is None:
            counts: dict[str, set[str]] = {t: {n.id for n in p.notes} for t, p in pages.items()}
            for _, note in queued:
                counts.setdefault(note.topic, set()).add(note.id)
            return ContextAnswer(
                repo=repo,
                topic=None,
                topics=tuple(
                    TopicSummary(topic=t, page=page_title(t), notes=len(ids))
                    for t, ids in sorted(counts.items())
                ),
            )
        trusted_roles = set(self._settings().mcp.trusted_roles)
        page = pages.get(topic)
        written = page.notes if page is not None else ()
        ids = {n.id for n in written}
        views = [_view(n, trusted_roles, on_wiki=True) for n in written]
        views += [
            _view(n, trusted_roles, on_wiki=False)
            for _, n in queued
            if n.topic == topic and n.id not in ids
        ]
        return ContextAnswer(
            repo=repo,
            topic=topic,
            page_url=page.url if page else "",
            page_text=page.text if page else "",
            page_text_trusted=page.text_trusted if page else False,
            page_editors=page.editors if page else (),
            notes=tuple(views),
        )


def _view(note: Note, trusted_roles: Iterable[str], *, on_wiki: bool) -> NoteView:
    return NoteView(
        id=note.id,
        text=note.text,
        author=f"agent:{note.agent_id}",
        role=note.role,
        task_id=note.task_id,
        issue_number=note.issue_number,
        at=note.at,
        trusted=note.role is not None and note.role in set(trusted_roles),
        on_wiki=on_wiki,
    )


__all__ = [
    "OUTBOX_TOPIC",
    "PAGE_PREFIX",
    "ContextAnswer",
    "ContextQuery",
    "KnowledgeBook",
    "KnowledgeTopics",
    "Note",
    "NoteView",
    "PageRecord",
    "ShareAnswer",
    "ShareRequest",
    "TopicSummary",
    "append_notes",
    "forget_page",
    "is_topic",
    "knowledge_key",
    "page_title",
    "parse_page",
    "pending_notes",
    "pending_topics",
    "read_pages",
    "record_page",
    "render_note",
    "topic_of_page",
    "topic_of_web_path",
]
