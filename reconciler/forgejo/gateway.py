"""The Forgejo gateway: every call agent-fleet makes to the Forgejo REST API goes through here.

Controllers, the loop, the CLI and the resync bench hold one ``ForgejoGateway`` and call its
named operations (``list_issues``, ``add_labels``, ``upsert_marker_comment`` …). This module
holds the repository, issue, label and webhook operations and assembles the gateway from the
rest of ``reconciler/forgejo/``: ``http.py`` (the one request path, retries with
``Retry-After``, paging, error mapping), ``comments.py`` (comments and the bot's marker
comments), ``pulls.py`` (pull requests, reviews, commits, statuses, branches, files),
``links.py`` (dependencies, timelines) and ``wiki.py`` (wiki pages).

Only the modules of ``reconciler/forgejo/`` import pyforgejo or httpx.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal

from reconciler.errors import ForgejoNotFound, ForgejoServerError
from reconciler.forgejo.comments import CommentOps, has_marker, marker_tag
from reconciler.forgejo.http import (
    PAGE_SIZE,
    WRITE_OPERATIONS,
    IssueKind,
    ListState,
    WriteOutcome,
    repo_path,
    rfc3339,
    seg,
    unique_names,
)
from reconciler.forgejo.links import LinkOps
from reconciler.forgejo.pulls import MergeStyle, PullOps
from reconciler.forgejo.types import (
    Hook,
    Issue,
    Label,
    LabelSpec,
    Page,
    Repo,
    RepoPermission,
    list_body,
)
from reconciler.forgejo.wiki import WikiOps

__all__ = [
    "PAGE_SIZE",
    "WRITE_OPERATIONS",
    "ForgejoGateway",
    "IssueKind",
    "ListState",
    "MergeStyle",
    "WriteOutcome",
    "has_marker",
    "marker_tag",
    "webhook_events_drifted",
]


PERMISSIONS_KEPT = 4096
"""Permission reads ``get_permission`` keeps at most (``permission_cache``)."""


class ForgejoGateway(CommentOps, PullOps, LinkOps, WikiOps):
    """Typed, retrying, paginating access to one Forgejo instance with one token.

    ``transport`` is an optional httpx transport (tests pass ``httpx.WSGITransport``);
    ``on_call(operation, status)`` runs after every HTTP attempt (status 0 when no response
    came); ``sleep`` and ``clock`` are injected so retry waits can be tested without waiting.
    One gateway serves every worker thread of a process (see ``ForgejoHttp``).
    """

    # --- repositories ------------------------------------------------------------------------

    def get_repo(self, repo: str) -> Repo:
        """One repository; ``ForgejoNotFound`` if it does not exist or is hidden from the token."""
        return self._get("get_repo", repo_path(repo), Repo.from_api)

    def create_repo(
        self,
        name: str,
        *,
        owner: str | None = None,
        default_branch: str = "main",
        auto_init: bool = True,
        private: bool = False,
        description: str = "",
    ) -> Repo:
        """Create a repository for the token's user, or in organisation ``owner``.

        Not retried: a retry after a lost response would answer 409 for the repo just made.
        """
        body = {
            "name": name,
            "default_branch": default_branch,
            "auto_init": auto_init,
            "private": private,
            "description": description,
        }
        path = "user/repos" if owner is None else f"orgs/{seg(owner)}/repos"
        return self._write("create_repo", "POST", path, Repo.from_api, body=body)

    def get_permission(self, repo: str, login: str) -> RepoPermission:
        """What ``login`` may do in ``repo`` (``read``, ``write``, ``admin``, ``owner``, ``none``).

        A permission read less than ``permission_cache`` seconds ago is answered from memory
        (the trust checks of a burst of issues by one author read it once); errors are not
        kept, and ``add_collaborator`` through this gateway forgets the login's entry.
        """
        key = (repo.lower(), login.casefold())
        now = self._clock()
        with self._doubt_lock:
            kept = self._permissions.get(key)
        if kept is not None and now - kept[0] < self.permission_cache:
            return kept[1]
        permission = self._get(
            "get_permission",
            f"{repo_path(repo)}/collaborators/{seg(login)}/permission",
            lambda raw: RepoPermission.from_api(raw, login=login),
        )
        if self.permission_cache > 0:
            with self._doubt_lock:
                # Oldest read first: stale entries go, then the oldest beyond the bound.
                self._permissions.pop(key, None)
                self._permissions[key] = (now, permission)
                while True:  # ends at the entry just kept at the latest: it is fresh
                    first = next(iter(self._permissions))
                    fresh = now - self._permissions[first][0] < self.permission_cache
                    if fresh and len(self._permissions) <= PERMISSIONS_KEPT:
                        break
                    del self._permissions[first]
        return permission

    def add_collaborator(self, repo: str, login: str, *, permission: str = "write") -> None:
        """Give ``login`` ``permission`` (read, write, admin) on ``repo``. A PUT: idempotent,
        so retried like a read."""
        with self._doubt_lock:
            self._permissions.pop((repo.lower(), login.casefold()), None)
        self._request(
            "add_collaborator",
            "PUT",
            f"{repo_path(repo)}/collaborators/{seg(login)}",
            body={"permission": permission},
            idempotent=True,
        )

    # --- issues ------------------------------------------------------------------------------

    def _issue_params(
        self,
        *,
        state: ListState,
        since: datetime | None,
        labels: Iterable[str],
        kind: IssueKind | None,
    ) -> dict[str, str | int]:
        if state not in ("open", "closed", "all"):
            raise ValueError(f"state must be open, closed or all, got {state!r}")
        if kind not in (None, "issues", "pulls"):
            raise ValueError(f"kind must be None, 'issues' or 'pulls', got {kind!r}")
        params: dict[str, str | int] = {"state": state}
        if kind is not None:
            params["type"] = kind
        names = [name for name in labels]
        if any("," in name for name in names):
            raise ValueError(f"label names in a filter cannot contain ',': {names!r}")
        if names:
            params["labels"] = ",".join(names)
        if since is not None:
            params["since"] = rfc3339(since)
        return params

    def list_issues(
        self,
        repo: str,
        *,
        state: ListState = "open",
        since: datetime | None = None,
        labels: Iterable[str] = (),
        kind: IssueKind | None = None,
    ) -> tuple[Issue, ...]:
        """Every issue matching the filters, all pages.

        ``labels`` keeps issues carrying ALL the given names, and Forgejo silently drops names
        that are not labels of the repo (if none exist, the filter disappears and every issue
        matches). Callers that need ANY of several labels list without ``labels`` and filter
        client-side. ``kind=None`` includes pull requests (``Issue.is_pull``). ``since`` compares
        with the issue's ``updated_at`` (>=, whole seconds).
        """
        params = self._issue_params(state=state, since=since, labels=labels, kind=kind)
        return self._list("list_issues", f"{repo_path(repo)}/issues", Issue.from_api, params=params)

    def list_issues_page(
        self,
        repo: str,
        *,
        page: int = 1,
        limit: int = PAGE_SIZE,
        state: ListState = "open",
        since: datetime | None = None,
        labels: Iterable[str] = (),
        kind: IssueKind | None = None,
    ) -> Page[Issue]:
        """One page of ``list_issues``, with the paging facts the server sent."""
        params = self._issue_params(state=state, since=since, labels=labels, kind=kind)
        return self._page(
            "list_issues",
            f"{repo_path(repo)}/issues",
            Issue.from_api,
            params=params,
            page=page,
            limit=limit,
        )

    def get_issue(self, repo: str, number: int, *, kept: bool = False) -> Issue:
        """One issue (or the issue view of a pull request); its ``updated_at`` is noted in
        ``seen``.

        With ``kept``, the issue as last read is answered from memory, with the labels our
        own label writes (``AddLabels``/``RemoveLabels``) left since, as long as nothing else
        may have changed it: ``seen.invalidate`` drops the copy — the daemon's work queue
        calls it for every issue key added for a fresh look (a webhook that is not an echo,
        the resync, a person's command), and every other write of ours on the issue (a
        comment, an edit, a label not written by a reconcile) calls it too. A change whose
        webhook is still on its way is read when that webhook enqueues the issue.
        """
        return self._get_item(
            "get_issue", f"{repo_path(repo)}/issues/{number}", Issue, repo, number, kept=kept
        )

    def create_issue(
        self, repo: str, *, title: str, body: str = "", labels: Iterable[str] = ()
    ) -> Issue:
        """Open an issue; label names are resolved to ids (unknown names are an error).

        Not retried: a retry after a lost response would open a second issue.
        """
        if not title.strip():
            raise ValueError("an issue needs a title")
        payload: dict[str, object] = {"title": title, "body": body}
        names = unique_names(labels)
        if names:
            payload["labels"] = self._label_ids(repo, names, operation="create_issue")
        return self._write(
            "create_issue", "POST", f"{repo_path(repo)}/issues", Issue.from_api, body=payload
        )

    def create_issue_once(
        self,
        repo: str,
        *,
        key: str,
        title: str,
        body: str = "",
        labels: Iterable[str] = (),
    ) -> Issue:
        """``create_issue`` for an issue the caller finds again by ``key`` (a marker in its
        body) and has just looked for: when an earlier create of it ended with an unknown
        outcome, it may still land, so no second create is sent until ``settle_after`` seconds
        have passed since (``WaitingError`` says when to look again); the error of a create
        whose outcome is unknown is raised after marking it so."""
        doubt = (repo.lower(), 0, key)
        sent = self._doubt_sent(doubt, what=f"the issue {key!r} in {repo}")
        started = self._clock()
        try:
            return self.create_issue(repo, title=title, body=body, labels=labels)
        except ForgejoServerError as exc:
            if exc.outcome_unknown:
                with self._doubt_lock:
                    self._in_doubt[doubt] = started
                sent = None  # this doubt is the one that stands now
            raise
        finally:
            if sent is not None:
                with self._doubt_lock:
                    if self._in_doubt.get(doubt) == sent:
                        del self._in_doubt[doubt]

    def edit_issue(
        self,
        repo: str,
        number: int,
        *,
        state: Literal["open", "closed"] | None = None,
        title: str | None = None,
        body: str | None = None,
        assignees: Sequence[str] | None = None,
    ) -> Issue:
        """Change an issue's state, title, body or assignees (the whole set: ``[]`` clears it,
        as Forgejo takes it). Retried: a PATCH to fixed values is idempotent."""
        payload: dict[str, object] = {}
        if assignees is not None:
            payload["assignees"] = list(assignees)
        if state is not None:
            if state not in ("open", "closed"):
                raise ValueError(f"state must be 'open' or 'closed', got {state!r}")
            payload["state"] = state
        if title is not None:
            payload["title"] = title
        if body is not None:
            payload["body"] = body
        if not payload:
            raise ValueError("edit_issue needs at least one of state, title, body, assignees")
        self.seen.invalidate(repo, number)
        return self._write(
            "edit_issue",
            "PATCH",
            f"{repo_path(repo)}/issues/{number}",
            Issue.from_api,
            body=payload,
            idempotent=True,
        )

    # --- labels ------------------------------------------------------------------------------

    def list_labels(self, repo: str) -> tuple[Label, ...]:
        """All labels of the repository; refreshes the gateway's label cache for it."""
        labels = self._list("list_labels", f"{repo_path(repo)}/labels", Label.from_api)
        self._labels[repo] = {label.name: label for label in labels}
        return labels

    def get_label(self, repo: str, label_id: int) -> Label:
        """One label by id."""
        return self._get("get_label", f"{repo_path(repo)}/labels/{label_id}", Label.from_api)

    def ensure_labels(self, repo: str, specs: Iterable[LabelSpec]) -> tuple[Label, ...]:
        """Make the repository's labels match ``specs``; returns all the repo's labels after.

        One list call, then a create for each missing label and an edit for each whose colour,
        description or exclusivity drifted; labels not in ``specs`` are left alone. Neither write
        is retried by the gateway: a create is not idempotent and the caller's next pass fixes
        what a failed edit left.
        """
        wanted = list(specs)
        names = [spec.name for spec in wanted]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names in specs: {sorted(names)}")
        current = {label.name: label for label in self.list_labels(repo)}
        for spec in wanted:
            have = current.get(spec.name)
            if have is None:
                current[spec.name] = self._write(
                    "create_label",
                    "POST",
                    f"{repo_path(repo)}/labels",
                    Label.from_api,
                    body=_label_body(spec, name=True),
                )
            elif not have.matches(spec):
                current[spec.name] = self._write(
                    "edit_label",
                    "PATCH",
                    f"{repo_path(repo)}/labels/{have.id}",
                    Label.from_api,
                    body=_label_body(spec, name=False),
                    idempotent=True,
                )
        self._labels[repo] = dict(current)
        return tuple(current.values())

    def _label_ids(self, repo: str, names: Sequence[str], *, operation: str) -> list[int]:
        cache = self._labels.get(repo)
        if cache is None or any(name not in cache for name in names):
            # A label made since the last look (by a person or another pass): look once more.
            self.list_labels(repo)
            cache = self._labels[repo]
        missing = [name for name in names if name not in cache]
        if missing:
            raise ForgejoNotFound(
                f"{operation}: {repo} has no label named {', '.join(map(repr, missing))}",
                operation=operation,
            )
        return [cache[name].id for name in names]

    def add_labels(
        self,
        repo: str,
        number: int,
        names: Iterable[str],
        *,
        current: Iterable[str] | None = None,
        echo: bool = False,
    ) -> tuple[str, ...]:
        """Add labels to an issue or PR; returns the label names it carries afterwards.

        When ``current`` (the labels the caller observed on the issue) is given, only names not
        already there are sent, and nothing at all when none are new. Forgejo applies exclusive
        scopes itself: adding ``status/doing`` removes ``status/todo``, which the returned names
        show. Retried on 5xx: adding labels twice leaves the same set. With ``echo`` (a
        reconcile's own write, whose webhook needs no reconcile), the labels the write will
        leave are expected in ``seen`` before it is sent, so a delivery that overtakes its
        answer is known for an echo.
        """
        wanted = unique_names(names)
        present = None if current is None else tuple(current)
        to_send = [name for name in wanted if present is None or name not in present]
        if not to_send:
            if present is None:
                raise ValueError("add_labels needs at least one label name")
            return present
        ids = self._label_ids(repo, to_send, operation="add_labels")
        if echo:
            self._expect_added(repo, number, to_send)
        else:
            self.seen.invalidate(repo, number)  # not recorded in seen by the caller
        result = self._send_labels("add_labels", "POST", repo, number, ids)
        if any(name not in result for name in to_send):
            # A name missing from the answer may mean our cached id is stale (the label was
            # deleted and made again); Forgejo ignores unknown ids. Refresh once and resend.
            stale = self._labels.get(repo, {})
            fresh = {label.name: label for label in self.list_labels(repo)}
            if any(n in fresh and n in stale and fresh[n].id != stale[n].id for n in to_send):
                ids = self._label_ids(repo, to_send, operation="add_labels")
                result = self._send_labels("add_labels", "POST", repo, number, ids)
        return result

    def _expect_added(self, repo: str, number: int, names: Sequence[str]) -> None:
        """Tell ``seen`` what adding ``names`` will leave on a known item: the labels last seen
        or written, the new ones, and not the others of an exclusive scope a new one is in."""
        item = self.seen.get(repo, number)
        cache = self._labels.get(repo, {})
        if item is None:
            return
        scopes = {
            scope
            for name in names
            if (label := cache.get(name)) is not None
            and label.exclusive
            and (scope := label.scope) is not None
        }
        kept = {
            name
            for name in item.labels
            if not ((label := cache.get(name)) is not None and label.scope in scopes)
        }
        self.seen.expect_labels(repo, number, kept | set(names))

    def replace_labels(self, repo: str, number: int, names: Iterable[str]) -> tuple[str, ...]:
        """Set an issue's labels to exactly ``names``; returns what it carries afterwards.

        Retried on 5xx: a PUT of a fixed set is idempotent.
        """
        wanted = unique_names(names)
        self.seen.invalidate(repo, number)
        ids = self._label_ids(repo, wanted, operation="replace_labels") if wanted else []
        return self._send_labels("replace_labels", "PUT", repo, number, ids)

    def remove_label(self, repo: str, number: int, name: str) -> None:
        """Remove one label from an issue or PR. Removing an absent label is not an error.

        Retried on 5xx: deleting a label that is already gone answers 204 again.
        """
        cache = self._labels.get(repo)
        if cache is None or name not in cache:
            self.list_labels(repo)
            cache = self._labels[repo]
        label = cache.get(name)
        if label is None:
            return  # no such label in the repo, so it cannot be on the issue
        self.seen.invalidate(repo, number)
        self._request(
            "remove_label",
            "DELETE",
            f"{repo_path(repo)}/issues/{number}/labels/{label.id}",
            idempotent=True,
        )

    def _send_labels(
        self, operation: str, method: str, repo: str, number: int, ids: list[int]
    ) -> tuple[str, ...]:
        return self._write(
            operation,
            method,
            f"{repo_path(repo)}/issues/{number}/labels",
            lambda raw: tuple(Label.from_api(item).name for item in list_body(raw, "labels")),
            body={"labels": ids},
            idempotent=True,
        )

    # --- webhooks ----------------------------------------------------------------------------

    def list_hooks(self, repo: str) -> tuple[Hook, ...]:
        """Every webhook of the repository."""
        return self._list("list_hooks", f"{repo_path(repo)}/hooks", Hook.from_api)

    def ensure_webhook(
        self,
        repo: str,
        *,
        url: str,
        secret: str,
        events: Iterable[str],
        content_type: Literal["json", "form"] = "json",
        rewrite_secret: bool = False,
    ) -> tuple[Hook, WriteOutcome]:
        """Make sure one active Forgejo webhook posts ``events`` to ``url``.

        Finds the first hook with that URL; creates it if missing, edits it when its events,
        content type or active flag drifted, and otherwise makes no write. Forgejo never returns
        a hook's secret, so a changed secret cannot be seen: pass ``rewrite_secret=True`` (for
        example once at start-up) to write it regardless.
        """
        if not secret:
            raise ValueError("a webhook secret is required: deliveries are verified with it")
        wanted_events = unique_names(events)
        if not wanted_events:
            raise ValueError("a webhook needs at least one event")
        hook = next((h for h in self.list_hooks(repo) if h.url == url), None)
        config = {"url": url, "content_type": content_type, "secret": secret}
        if hook is None:
            created = self._write(
                "create_hook",
                "POST",
                f"{repo_path(repo)}/hooks",
                Hook.from_api,
                body={"type": "forgejo", "config": config, "events": wanted_events, "active": True},
            )
            return created, "created"
        drifted = (
            webhook_events_drifted(hook.events, wanted_events)
            or hook.content_type != content_type
            or not hook.active
        )
        if not drifted and not rewrite_secret:
            return hook, "unchanged"
        edited = self._write(
            "edit_hook",
            "PATCH",
            f"{repo_path(repo)}/hooks/{hook.id}",
            Hook.from_api,
            body={"config": config, "events": wanted_events, "active": True},
            idempotent=True,
        )
        return edited, "edited"


# --- helpers private to the gateway -----------------------------------------------------------


def _label_body(spec: LabelSpec, *, name: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "color": f"#{spec.color}",
        "description": spec.description,
        "exclusive": spec.exclusive,
    }
    if name:
        body["name"] = spec.name
    return body


# What a subscription name implies (Forgejo routers/api/v1/utils/hook.go): a hook created with
# "issues" is listed back with every issue sub-event, "pull_request" with every PR one.
_IMPLIED_EVENTS: Mapping[str, frozenset[str]] = {
    "issues": frozenset({"issue_assign", "issue_label", "issue_milestone", "issue_comment"}),
    "pull_request": frozenset(
        {
            "pull_request_assign",
            "pull_request_label",
            "pull_request_milestone",
            "pull_request_comment",
            "pull_request_review_approved",
            "pull_request_review_rejected",
            "pull_request_review_comment",
            "pull_request_review_request",
            "pull_request_sync",
        }
    ),
    "pull_request_review": frozenset(
        {
            "pull_request_review_approved",
            "pull_request_review_rejected",
            "pull_request_review_comment",
        }
    ),
}


def webhook_events_drifted(have: Sequence[str], wanted: Sequence[str]) -> bool:
    """True unless the hook covers every wanted event and lists nothing those do not imply.

    A group name (``pull_request_review``) may be listed back only as its sub-events, so it
    counts as covered when any of them is there; the table errs wide so that a server listing
    an implied event this table forgot does not look like drift on every pass.
    """
    listed = set(have)
    implied = set(wanted).union(*(_IMPLIED_EVENTS.get(name, frozenset()) for name in wanted))
    missing = [
        name
        for name in wanted
        if name not in listed and not (_IMPLIED_EVENTS.get(name, frozenset()) & listed)
    ]
    return bool(missing) or bool(listed - implied)
