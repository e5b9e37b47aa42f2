"""The knowledge controller (key: a topic of a repository): writes shared notes to the wiki.

Key: ``("knowledge", "owner/name", "<topic>")``. The notes endpoint enqueues it when an agent
shares a note (the note is already queued durably in the store's outbox,
``reconciler/fleet/knowledge.py``); the full resync enqueues it for every topic the wiki, the
store or the outbox knows, so notes queued before a restart are written and people's edits of
a page are read.

A pass observes the topic's wiki page (``fleet-notes-<topic>``), who edited it and whether they
are trusted, and the queued notes; :func:`plan` appends the queued notes the page does not hold
yet — a note is found on the page by its id, so a write repeated after a crash (written, not
yet acknowledged) or after a lost answer adds nothing twice — then records what the page says
(what ``context`` answers from) and only then acknowledges the notes. A page write is the whole
page (Forgejo's wiki API has no append), so a write whose outcome is unknown is not followed by
another before ``settle_after`` has passed: a write held up on its way could otherwise land
after the next one and take its notes away. A wiki Forgejo refuses to write (switched off, or
the bot lacks access) stalls the key until the next note or full resync, the notes kept queued
(``context`` still shows them); so does a page whose content is not UTF-8 text (until a person
edits it). A second pass over an unchanged page writes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from reconciler.bounded import remember
from reconciler.engine.reconcile import ActContext, Action, Actuator, Result
from reconciler.errors import (
    ForgejoError,
    ForgejoForbidden,
    ForgejoNotFound,
    ForgejoServerError,
    StalledError,
    WaitingError,
)
from reconciler.fleet.knowledge import (
    Note,
    PageRecord,
    append_notes,
    forget_page,
    is_topic,
    page_title,
    parse_page,
    pending_notes,
    read_pages,
    record_page,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.wiki import PageNotText, WikiPage, wiki_web_path
from reconciler.keys import KNOWLEDGE, Key
from reconciler.run.prompt import is_trusted_author
from reconciler.settings import Settings
from reconciler.store import Store

__all__ = ["KnowledgeController", "KnowledgeObserved", "PublishNotes", "plan"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KnowledgeObserved:
    """One topic's page as Forgejo shows it, and what the store holds for it."""

    repo: str
    topic: str
    page: WikiPage | None
    editors: tuple[str, ...]
    """Who edited the page, agent-fleet's own account aside, newest first."""
    editors_trusted: bool
    pending: tuple[tuple[str, Note], ...]
    """(outbox id, note) of the notes still queued for the page."""
    recorded: PageRecord | None


@dataclass(frozen=True)
class PublishNotes(Action):
    """Write the page (when ``content`` is set), record what it says, acknowledge notes."""

    repo: str
    topic: str
    content: str | None
    create: bool
    web_path: str
    record: PageRecord
    ack: tuple[str, ...]
    written: tuple[str, ...]
    """Ids of the notes the write adds."""
    doubts: _Doubts

    def describe(self) -> str:
        what = f"{self.repo}: wiki page {page_title(self.topic)}"
        if self.content is not None:
            return f"{what}: {'create' if self.create else 'append'} {len(self.written)} note(s)"
        return f"{what}: record {len(self.record.notes)} note(s)"

    def apply(self, ctx: ActContext) -> None:
        record = self.record
        if self.content is not None:
            page = self.doubts.write(ctx.gateway, self)
            record = record.model_copy(update={"url": page.html_url})
            log.info("knowledge.written", repo=self.repo, topic=self.topic, notes=len(self.written))
        record_page(ctx.store, self.repo, record)
        for message_id in self.ack:
            ctx.store.ack(message_id)


@dataclass(frozen=True)
class ForgetPage(Action):
    """The page is gone (a person deleted it) and nothing is queued: forget its record."""

    repo: str
    topic: str

    def describe(self) -> str:
        return f"{self.repo}: forget wiki page {page_title(self.topic)} (deleted)"

    def apply(self, ctx: ActContext) -> None:
        forget_page(ctx.store, self.repo, self.topic)


class _Doubts:
    """Page writes whose outcome is unknown, by (repo, topic): when each was sent."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def check(self, gateway: ForgejoGateway, repo: str, topic: str) -> None:
        """Raise ``WaitingError`` while an earlier write of the page may still land."""
        with self._lock:
            sent = self._sent.get((repo.lower(), topic))
        if sent is None:
            return
        waited = self._clock() - sent
        if waited < gateway.settle_after:
            raise WaitingError(
                f"the last write of wiki page {page_title(topic)} in {repo} has an unknown "
                "outcome and may still land; the page is read again once that has settled",
                retry_after=gateway.settle_after - waited,
            )
        with self._lock:
            self._sent.pop((repo.lower(), topic), None)

    def write(self, gateway: ForgejoGateway, action: PublishNotes) -> WikiPage:
        assert action.content is not None
        started = self._clock()
        message = f"agent-fleet: {len(action.written)} note(s) on {action.topic}"
        try:
            if action.create:
                return gateway.create_wiki_page(
                    action.repo, page_title(action.topic), action.content, message=message
                )
            return gateway.edit_wiki_page(
                action.repo, action.web_path, action.content, message=message
            )
        except ForgejoServerError as exc:
            if exc.outcome_unknown:
                with self._lock:
                    self._sent[(action.repo.lower(), action.topic)] = started
            raise
        except (ForgejoForbidden, ForgejoNotFound) as exc:
            # The repository's wiki is switched off, or the bot may not write it: retrying
            # changes nothing; the next note shared (or the full resync) tries again.
            raise StalledError(
                f"cannot write wiki page {page_title(action.topic)} in {action.repo} (is the "
                f"wiki enabled, and may agent-fleet's account write it?): {exc}"
            ) from exc


def plan(observed: KnowledgeObserved, *, now: datetime, doubts: _Doubts) -> tuple[Action, ...]:
    """What makes the page hold every queued note, and the store what the page says."""
    page = observed.page
    if page is None and not observed.pending:
        return (ForgetPage(observed.repo, observed.topic),) if observed.recorded else ()
    text, on_page = parse_page(page.content, observed.topic) if page else ("", ())
    ids = {n.id for n in on_page}
    missing = [note for _, note in observed.pending if note.id not in ids]
    content = None
    notes = on_page
    if missing:
        content = append_notes(page.content if page else None, observed.topic, missing)
        text, notes = parse_page(content, observed.topic)
    record = PageRecord(
        topic=observed.topic,
        title=page_title(observed.topic),
        url=page.html_url if page else "",
        text=text,
        text_trusted=observed.editors_trusted,
        editors=observed.editors,
        notes=notes,
        read_at=now,
    )
    ack = tuple(message_id for message_id, _ in observed.pending)
    if content is None and not ack and _same(observed.recorded, record):
        return ()
    return (
        PublishNotes(
            repo=observed.repo,
            topic=observed.topic,
            content=content,
            create=page is None,
            web_path=page.sub_url if page else wiki_web_path(page_title(observed.topic)),
            record=record,
            ack=ack,
            written=tuple(n.id for n in missing),
            doubts=doubts,
        ),
    )


def _same(recorded: PageRecord | None, record: PageRecord) -> bool:
    if recorded is None:
        return False
    return recorded.model_copy(update={"read_at": record.read_at}) == record


EDITORS_KEPT = 1024
"""Page versions whose editors the knowledge controller keeps (the oldest go)."""


class KnowledgeController:
    """Writes the notes agents share to the repository's wiki, one page per topic."""

    name = KNOWLEDGE

    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._actuator = actuator
        self._settings = settings
        self._clock = clock
        self._doubts = _Doubts(lambda: self._clock().timestamp())
        self._editors: dict[tuple[str, str, str], tuple[str, ...]] = {}
        """Who other than the bot edited a page, by (repo, page, its last commit): a page's
        history up to a commit never changes, so it is read once per version of the page."""
        self._editors_lock = threading.Lock()

    def observe(self, key: Key) -> KnowledgeObserved:
        repo, topic = key.repo, key.id
        try:
            page = self._gateway.get_wiki_page(repo, wiki_web_path(page_title(topic)))
        except ForgejoError as exc:
            if not isinstance(exc.__cause__, PageNotText):
                raise
            # A page pushed over git may hold bytes that are not UTF-8: agent-fleet cannot
            # append to it without garbling them, and reading it again changes nothing until
            # a person edits it (the wiki event enqueues the topic) or the full resync.
            raise StalledError(
                f"wiki page {page_title(topic)} in {repo} cannot be read as text; the notes "
                f"stay queued until it is fixed: {exc}"
            ) from exc
        editors = self._editors_of(repo, page) if page is not None else ()
        return KnowledgeObserved(
            repo=repo,
            topic=topic,
            page=page,
            editors=editors,
            editors_trusted=all(self._trusted(repo, login) for login in editors),
            pending=tuple(pending_notes(self._store, repo, topic)),
            recorded=read_pages(self._store, repo).get(topic),
        )

    def _editors_of(self, repo: str, page: WikiPage) -> tuple[str, ...]:
        """The authors of the page's commits other than the bot, first seen first."""
        version = (repo.lower(), page.sub_url, page.last_commit.sha if page.last_commit else "")
        if version[2]:
            with self._editors_lock:
                known = self._editors.get(version)
            if known is not None:
                return known
        bot = self._gateway.bot_login()
        try:
            history = self._gateway.wiki_page_revisions(repo, page.sub_url)
        except ForgejoNotFound:
            history = ()
        seen: dict[str, None] = {}
        for commit in history:
            if commit.author and commit.author.casefold() != bot.casefold():
                seen.setdefault(commit.author, None)
        editors = tuple(seen)
        if version[2]:
            with self._editors_lock:
                remember(self._editors, version, editors, limit=EDITORS_KEPT)
        return editors

    def _trusted(self, repo: str, login: str) -> bool:
        allow = frozenset(self._settings().forgejo.trusted_authors)
        try:
            permission = self._gateway.get_permission(repo, login)
        except ForgejoNotFound:
            permission = None  # not a user's login (a full name in the commit): not trusted
        return is_trusted_author(login, permission, allow=allow)

    def reconcile(self, key: Key) -> Result:
        if not is_topic(key.id):
            log.warning("knowledge.bad_key", key=str(key))
            return Result()
        self._doubts.check(self._gateway, key.repo, key.id)
        observed = self.observe(key)
        self._actuator.apply(plan(observed, now=self._clock(), doubts=self._doubts))
        return Result()
