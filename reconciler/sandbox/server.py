"""``ForgejoSandbox``: an in-memory Forgejo served over HTTP, with webhooks and git.

Tests drive it through the real pyforgejo client (over loopback, or in process with httpx's
``WSGITransport(app=sandbox.app)``) and ``agent-fleet demo`` embeds one on loopback. Besides the
REST API it offers the things a person does (``push``, ``create_issue``, ...), which fire the
same webhooks as the API does. Once started it also serves every repository to ``git clone`` and
``git push`` at ``{url}/{owner}/{repo}.git``, from bare repositories in a temporary directory
that ``stop()`` removes.
"""

from __future__ import annotations

import re
import socketserver
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import links
from reconciler.sandbox.api import ForgeApi
from reconciler.sandbox.githttp import GitHttp
from reconciler.sandbox.gitstore import GitStorage
from reconciler.sandbox.hooks import Delivery, QueuedWebhook, WebhookDispatcher
from reconciler.sandbox.state import ForgeEvent, ForgeState, Repo, User

# Forgejo's default ROOT_URL, used for links while the sandbox is not listening anywhere.
UNSTARTED_APP_URL = "http://localhost:3000/"
# Requests for a repository's git endpoints; everything else is the REST API's.
_GIT_REQUEST = re.compile(r"^/[^/]+/[^/]+\.git/")


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with one thread per request, so a slow client blocks no one."""

    daemon_threads = True
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not print an access log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        return


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ForgejoSandbox:
    """An in-memory Forgejo: REST API (``app``), git over HTTP, users and tokens, webhooks,
    person helpers."""

    def __init__(
        self, *, clock: Callable[[], datetime] | None = None, admin_login: str = "fleet-admin"
    ) -> None:
        self.url = ""
        self._server: _ThreadingServer | None = None
        self._serving: threading.Thread | None = None
        self._dispatcher = WebhookDispatcher(app_url=lambda: self.app_url, state=lambda: self.state)
        self._storage = GitStorage()
        self.state = ForgeState(
            clock=clock or _utc_now, on_event=self._announce, storage=self._storage
        )
        self._api = ForgeApi(self.state, app_url=lambda: self.app_url)
        self.app: bottle.Bottle = self._api.app
        self._git = GitHttp(self.state, self._storage)
        self.admin_login = admin_login
        self.admin_token = self.create_user(admin_login, admin=True)

    def _announce(self, event: ForgeEvent) -> None:
        self._dispatcher.announce(event)

    @property
    def app_url(self) -> str:
        """The forge's ROOT_URL (with trailing slash) that links in answers start with."""
        return f"{self.url}/" if self.url else UNSTARTED_APP_URL

    # -- serving --

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the API on a background thread; returns the base URL (no ``/api/v1``)."""
        if self._server is not None:
            return self.url
        server = make_server(
            host, port, self._serve, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._server = server
        self.url = f"http://{host}:{server.server_port}"
        self._serving = threading.Thread(
            # A short poll interval so stop() returns promptly.
            target=server.serve_forever,
            args=(0.05,),
            name="sandbox-forgejo",
            daemon=True,
        )
        self._serving.start()
        self._dispatcher.resume()
        return self.url

    def _serve(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The served WSGI application: git's endpoints next to the REST API."""
        wanted = self._git.app if _GIT_REQUEST.match(environ.get("PATH_INFO", "")) else self.app
        answer: Iterable[bytes] = wanted(environ, start_response)
        return answer

    def stop(self) -> None:
        """Stop serving and delivering webhooks, remove the git repositories.

        Safe to call more than once. The REST API and the helpers that touch no git history
        keep working in process (new webhooks wait in ``pending_webhooks()``); creating a
        repository, ``push`` and merging are refused from then on.
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._serving is not None:
            self._serving.join(timeout=5)
            self._serving = None
        self._dispatcher.stop()
        with self.state.lock:
            self._storage.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- users and repositories --

    def create_user(self, login: str, *, admin: bool = False) -> str:
        """Create a user; returns a new API token for it."""
        with self.state.lock:
            _, token = self.state.create_user(login, admin=admin)
            return token

    def create_repo(
        self,
        full_name: str,
        *,
        default_branch: str = "main",
        auto_init: bool = True,
        private: bool = False,
        description: str = "",
    ) -> None:
        """Create ``owner/name`` for an existing user, with an initial commit by default."""
        owner, _, name = full_name.partition("/")
        with self.state.lock:
            self.state.create_repo(
                self.state.user_named(owner),
                name,
                description=description,
                private=private,
                default_branch=default_branch,
                auto_init=auto_init,
            )

    def clone_url(self, repo: str, *, token: str | None = None) -> str:
        """The URL ``git clone`` takes for ``owner/name`` (the REST ``clone_url``).

        With ``token`` the URL carries the token's owner and the token as Basic credentials,
        so git authenticates without asking. The sandbox must be started: git talks HTTP.
        """
        if not self.url:
            raise RuntimeError("start() the sandbox first: git reaches it over HTTP only")
        with self.state.lock:
            found = self._repo(repo, self._person(None))
            if token is None:
                return f"{self.app_url}{found.full_name}.git"
            user = self.state.user_by_token(token)
        scheme, _, rest = self.app_url.partition("://")
        credentials = f"{urllib.parse.quote(user.login)}:{urllib.parse.quote(token)}"
        return f"{scheme}://{credentials}@{rest}{found.full_name}.git"

    def git_path(self, repo: str) -> Path:
        """The bare git repository of ``owner/name`` on disk (removed by ``stop()``)."""
        with self.state.lock:
            return self._repo(repo, self._person(None)).bare.materialize()

    def _person(self, login: str | None) -> User:
        return self.state.user_named(login or self.admin_login)

    def _repo(self, full_name: str, person: User) -> Repo:
        return self.state.repo(full_name, person)

    # -- what people and git do --

    def push(
        self,
        repo: str,
        branch: str,
        *,
        files: Mapping[str, str | None],
        message: str,
        author: str | None = None,
        base: str | None = None,
    ) -> str:
        """Commit ``files`` (path -> content, None deletes) on ``branch`` and return the sha.

        A missing branch is created from ``base`` or the default branch. Fires ``push``, and
        ``pull_request`` ``synchronized`` for each open pull request with that head branch.
        """
        with self.state.lock:
            person = self._person(author)
            commit = self.state.push(
                self._repo(repo, person), person, branch, files=files, message=message, base=base
            )
            return commit.sha

    def create_issue(
        self,
        repo: str,
        title: str,
        *,
        body: str = "",
        labels: Sequence[str] = (),
        author: str | None = None,
    ) -> int:
        """Open an issue with labels given by name; returns its number."""
        with self.state.lock:
            person = self._person(author)
            found = self._repo(repo, person)
            label_ids = [label.id for label in self.state.labels_named(found, labels)]
            missing = set(labels) - {label.name for label in found.labels.values()}
            if missing:
                raise ValueError(f"{repo} has no label(s) {sorted(missing)}")
            return self.state.create_issue(
                found, person, title=title, body=body, label_ids=label_ids
            ).number

    def create_label(
        self,
        repo: str,
        name: str,
        *,
        color: str = "ededed",
        exclusive: bool = False,
        description: str = "",
    ) -> int:
        """Create a repository label; returns its id."""
        with self.state.lock:
            person = self._person(None)
            return self.state.create_label(
                self._repo(repo, person),
                person,
                name=name,
                color=color,
                exclusive=exclusive,
                description=description,
            ).id

    def add_labels(
        self, repo: str, number: int, names: Sequence[str], *, author: str | None = None
    ) -> None:
        """Add labels (by name) to an issue as ``author`` would in the web UI."""
        with self.state.lock:
            person = self._person(author)
            self.state.add_labels(self._repo(repo, person), person, number, list(names))

    def remove_label(self, repo: str, number: int, name: str, *, author: str | None = None) -> None:
        """Remove a label (by name) from an issue as ``author`` would in the web UI."""
        with self.state.lock:
            person = self._person(author)
            self.state.remove_label(self._repo(repo, person), person, number, name)

    def set_issue_state(
        self, repo: str, number: int, state: str, *, author: str | None = None
    ) -> None:
        """Close (``"closed"``) or reopen (``"open"``) an issue."""
        with self.state.lock:
            person = self._person(author)
            self.state.set_issue_state(self._repo(repo, person), person, number, state)

    def add_dependency(
        self,
        repo: str,
        number: int,
        *,
        on: int,
        on_repo: str | None = None,
        author: str | None = None,
    ) -> None:
        """Make ``repo#number`` depend on ``on_repo#on`` (default: the same repository)."""
        with self.state.lock:
            person = self._person(author)
            issue = self.state.issue(self._repo(repo, person), number)
            blocker = self.state.issue(self._repo(on_repo or repo, person), on)
            links.add_dependency(self.state, person, issue, blocker)

    def comment(self, repo: str, number: int, body: str, *, author: str | None = None) -> int:
        """Comment on an issue or pull request; returns the comment id."""
        with self.state.lock:
            person = self._person(author)
            return self.state.create_comment(self._repo(repo, person), person, number, body=body).id

    def open_pull(
        self,
        repo: str,
        head: str,
        *,
        title: str,
        body: str = "",
        base: str | None = None,
        author: str | None = None,
    ) -> int:
        """Open a pull request from ``head``; returns its number."""
        with self.state.lock:
            person = self._person(author)
            found = self._repo(repo, person)
            return self.state.create_pull(
                found,
                person,
                head=head,
                base=base or found.default_branch,
                title=title,
                body=body,
            ).number

    def review(
        self, repo: str, number: int, event: str, *, body: str = "", author: str | None = None
    ) -> int:
        """Submit a review (APPROVED, REQUEST_CHANGES, COMMENT); returns its id."""
        with self.state.lock:
            person = self._person(author)
            return self.state.create_review(
                self._repo(repo, person), person, number, event=event, body=body
            ).id

    def merge(
        self, repo: str, number: int, *, style: str = "merge", author: str | None = None
    ) -> str:
        """Merge a pull request; returns the merge commit's sha."""
        with self.state.lock:
            person = self._person(author)
            issue = self.state.merge_pull(self._repo(repo, person), person, number, style=style)
            assert issue.pull is not None and issue.pull.merge_commit_sha is not None
            return issue.pull.merge_commit_sha

    # -- webhooks --

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery attempt so far (and every dropped one), oldest first."""
        return self._dispatcher.deliveries

    def pending_webhooks(self) -> list[QueuedWebhook]:
        """Webhook requests queued and not yet attempted."""
        return self._dispatcher.pending()

    def flush_webhooks(self, timeout: float = 5.0) -> None:
        """Block until every queued webhook has been attempted (TimeoutError past timeout)."""
        self._dispatcher.flush(timeout)

    @property
    def webhooks_enabled(self) -> bool:
        """False drops every new webhook (recorded as dropped), like a lost delivery."""
        return self._dispatcher.enabled

    @webhooks_enabled.setter
    def webhooks_enabled(self, enabled: bool) -> None:
        self._dispatcher.enabled = enabled
