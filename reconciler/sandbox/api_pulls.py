"""The sandbox forge's REST routes for pull requests, reviews, branches, commits, statuses and
webhooks, in Forgejo's JSON shapes. ``ForgeApi`` (``api.py``) adds them to its app with
``add_pull_routes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox import hooks, shapes
from reconciler.sandbox.rest import (
    Body,
    empty_response,
    json_response,
)
from reconciler.sandbox.state import (
    Access,
    Invalid,
    NotFound,
    Repo,
    User,
)

if TYPE_CHECKING:
    from reconciler.sandbox.api import ForgeApi


def add_pull_routes(api: ForgeApi) -> None:
    """Route pull requests, reviews, branches, commits, statuses and hooks on ``api``'s app."""
    state = api.state
    route = api.route

    # -- pull requests --

    def pull_json(issue: Any) -> Any:
        return shapes.pull_request(api.base, state, issue)

    @route("GET", "/repos/<owner>/<repo>/pulls")
    def list_pulls(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        query = bottle.request.query
        wanted = query.get("state") or "open"
        pulls = state.list_pulls(
            found, state=wanted, head=query.get("head") or None, base=query.get("base") or None
        )
        return api.listing(pulls, pull_json)

    @route("POST", "/repos/<owner>/<repo>/pulls")
    def create_pull(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        assignees = body.assignees()
        issue = state.create_pull(
            found,
            actor,
            head=body.text("head", required=True),
            base=body.text("base"),
            title=body.text("title", required=True),
            body=body.text("body"),
            label_ids=body.ids("labels"),
            assignees=assignees,
        )
        return json_response(pull_json(issue), 201)

    @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>")
    def get_pull(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        return json_response(pull_json(state.pull(found, index)))

    @route("PATCH", "/repos/<owner>/<repo>/pulls/<index:int>")
    def edit_pull(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        state.pull(found, index)
        body = Body(bottle.request)
        assignees: list[str] | None = None
        if "assignees" in body.data or "assignee" in body.data:
            assignees = body.strings("assignees")
            if body.text("assignee"):
                assignees = [body.text("assignee"), *assignees]
        if body.has("base"):
            raise Invalid("the sandbox does not implement changing a pull request's base")
        if "labels" in body.data:
            state.replace_labels(found, actor, index, body.ids("labels"))
        issue = state.edit_issue(
            found,
            actor,
            index,
            title=body.optional_text("title"),
            body=body.optional_text("body"),
            state=body.optional_text("state"),
            assignees=assignees,
        )
        # Forgejo answers a pull request edit with 201.
        return json_response(pull_json(issue), 201)

    @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/commits")
    def pull_commits(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        commits = state.pull_commits(found, state.pull(found, index))
        return api.listing(
            commits, lambda c: shapes.commit(api.base, state, found, c), commit_headers=True
        )

    @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/files")
    def pull_files(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        issue = state.pull(found, index)
        head = state.pull_head_sha(found, issue)
        return api.listing(
            state.pull_files(found, issue),
            lambda f: shapes.changed_file(api.base, found, head, f),
            commit_headers=True,
        )

    @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/merge")
    def is_merged(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        issue = state.pull(api.repo(actor, owner, repo), index)
        assert issue.pull is not None
        if not issue.pull.merged:
            raise NotFound("pull request has not been merged")
        return empty_response()

    @route("POST", "/repos/<owner>/<repo>/pulls/<index:int>/merge")
    def merge(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        if body.flag("merge_when_checks_succeed"):
            raise Invalid("the sandbox does not implement merge_when_checks_succeed")
        title = body.text("MergeTitleField")
        message = body.text("MergeMessageField")
        state.merge_pull(
            found,
            actor,
            index,
            style=body.text("Do", required=True),
            message=f"{title}\n\n{message}".strip() if message else title,
            head_commit_id=body.text("head_commit_id"),
            delete_branch=body.flag("delete_branch_after_merge"),
        )
        return empty_response(200)

    @route("GET", "/repos/<owner>/<repo>/pulls/<index:int>/reviews")
    def list_reviews(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        issue = state.pull(api.repo(actor, owner, repo), index)
        assert issue.pull is not None
        return api.listing(issue.pull.reviews, lambda r: shapes.review(api.base, issue, r))

    @route("POST", "/repos/<owner>/<repo>/pulls/<index:int>/reviews")
    def create_review(actor: User, owner: str, repo: str, index: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        if body.data.get("comments"):
            raise Invalid("the sandbox does not implement line comments in reviews")
        review = state.create_review(
            found,
            actor,
            index,
            event=body.text("event", required=True),
            body=body.text("body"),
            commit_id=body.text("commit_id"),
        )
        return json_response(shapes.review(api.base, state.pull(found, index), review))

    @route("GET", "/repos/<owner>/<repo>/pulls/<base>/<head:path>")
    def pull_by_branches(
        actor: User, owner: str, repo: str, base: str, head: str
    ) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        return json_response(pull_json(state.pull_by_branches(found, base=base, head=head)))

    # -- branches, commits, statuses --

    @route("GET", "/repos/<owner>/<repo>/branches")
    def list_branches(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        names = sorted(found.git.branches)
        return api.listing(
            names, lambda n: shapes.branch(api.base, found, n, state.branch_head(found, n))
        )

    @route("GET", "/repos/<owner>/<repo>/branches/<branch:path>")
    def get_branch(actor: User, owner: str, repo: str, branch: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        head = state.branch_head(found, branch)
        return json_response(shapes.branch(api.base, found, branch, head))

    @route("GET", "/repos/<owner>/<repo>/commits")
    def list_commits(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        if not found.git.branches:
            return json_response(
                {"message": "Git Repository is empty.", "url": f"{api.base}api/swagger"},
                409,
            )
        ref = bottle.request.query.get("sha") or found.default_branch
        head = state.commit_at(found, ref)
        return api.listing(
            found.git.log(head.sha),
            lambda c: shapes.commit(api.base, state, found, c),
            commit_headers=True,
        )

    @route("GET", "/repos/<owner>/<repo>/git/commits/<sha>")
    def get_commit(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        return json_response(shapes.commit(api.base, state, found, state.commit_at(found, sha)))

    def status_list(found: Repo, ref: str) -> bottle.HTTPResponse:
        return api.listing(
            state.statuses(found, ref), lambda s: shapes.commit_status(api.base, found, s)
        )

    @route("POST", "/repos/<owner>/<repo>/statuses/<sha>")
    def create_status(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        status = state.create_status(
            found,
            actor,
            sha,
            state=body.text("state", required=True),
            context=body.text("context"),
            description=body.text("description"),
            target_url=body.text("target_url"),
        )
        return json_response(shapes.commit_status(api.base, found, status), 201)

    @route("GET", "/repos/<owner>/<repo>/statuses/<sha>")
    def list_statuses(actor: User, owner: str, repo: str, sha: str) -> bottle.HTTPResponse:
        return status_list(api.repo(actor, owner, repo), sha)

    @route("GET", "/repos/<owner>/<repo>/commits/<ref:path>/statuses")
    def list_ref_statuses(actor: User, owner: str, repo: str, ref: str) -> bottle.HTTPResponse:
        return status_list(api.repo(actor, owner, repo), ref)

    @route("GET", "/repos/<owner>/<repo>/commits/<ref:path>/status")
    def combined_status(actor: User, owner: str, repo: str, ref: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        sha = state.commit_at(found, ref).sha
        latest = state.latest_statuses(found, ref)
        if not latest:
            # Forgejo answers the zero value of api.CombinedStatus, without a count header.
            return json_response(shapes.empty_combined_status(), 200)
        return json_response(
            shapes.combined_status(api.base, state, found, sha, latest),
            200,
            {
                "X-Total-Count": str(len(latest)),
                "Access-Control-Expose-Headers": "X-Total-Count",
            },
        )

    # -- hooks --

    def hook_json(repo: Repo, hook: Any) -> Any:
        events = hooks.subscribed_events(hook.events)
        return shapes.hook(api.base, repo, hook, events=events)

    @route("GET", "/repos/<owner>/<repo>/hooks")
    def list_hooks(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        state.require(found, actor, Access.ADMIN)
        return api.listing(
            sorted(found.hooks.values(), key=lambda h: h.id),
            lambda h: hook_json(found, h),
            link=False,
        )

    @route("POST", "/repos/<owner>/<repo>/hooks")
    def create_hook(actor: User, owner: str, repo: str) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        config = body.mapping("config")
        if config is None:
            raise Invalid("[Config]: Required")
        hook = state.create_hook(
            found,
            actor,
            type=body.text("type", required=True),
            config=config,
            events=body.strings("events"),
            active=body.flag("active"),
            branch_filter=body.text("branch_filter"),
            authorization_header=body.text("authorization_header"),
        )
        return json_response(hook_json(found, hook), 201)

    @route("GET", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
    def get_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        state.require(found, actor, Access.ADMIN)
        return json_response(hook_json(found, state.hook(found, hook_id)))

    @route("PATCH", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
    def edit_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
        found = api.repo(actor, owner, repo)
        body = Body(bottle.request)
        hook = state.edit_hook(
            found,
            actor,
            hook_id,
            config=body.mapping("config"),
            events=body.strings("events") if "events" in body.data else None,
            active=body.flag("active") if body.has("active") else None,
            branch_filter=body.optional_text("branch_filter"),
            authorization_header=body.optional_text("authorization_header"),
        )
        return json_response(hook_json(found, hook))

    @route("DELETE", "/repos/<owner>/<repo>/hooks/<hook_id:int>")
    def delete_hook(actor: User, owner: str, repo: str, hook_id: int) -> bottle.HTTPResponse:
        state.delete_hook(api.repo(actor, owner, repo), actor, hook_id)
        return empty_response()
