"""Forgejo's JSON shapes (Forgejo v16 ``modules/structs``) for the sandbox's objects.

``api`` renders REST responses with these functions and ``hooks`` renders webhook payloads
with the same ones, as Forgejo does. Every function takes the forge's ``app_url`` (with a
trailing slash, like Forgejo's ``ROOT_URL``) because objects carry absolute links. The field sets
are the spec's definitions, plus ``username`` on users, which Forgejo adds when marshalling.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.sandbox.commits import Commit, FileChange
from reconciler.sandbox.state import (
    STATUS_PRIORITY,
    Access,
    Comment,
    CommitStatus,
    ForgeState,
    Hook,
    Issue,
    Label,
    Repo,
    Review,
    StatusState,
    User,
)

JSON = dict[str, Any]
ZERO_TIME = "0001-01-01T00:00:00Z"
VERSION = "16.0.0+gitea-1.22.0"


def timestamp(moment: datetime | None) -> str | None:
    """RFC 3339 with zone, as Go marshals ``time.Time`` (UTC written as ``Z``)."""
    if moment is None:
        return None
    if moment.utcoffset() == UTC.utcoffset(None):
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.isoformat()


def user(app_url: str, account: User) -> JSON:
    """structs.User."""
    return {
        "id": account.id,
        "login": account.login,
        "login_name": "",
        "source_id": 0,
        "full_name": "",
        "email": account.email,
        "avatar_url": f"{app_url}avatars/{account.id}",
        "html_url": f"{app_url}{account.login}",
        "language": "",
        "is_admin": account.is_admin,
        "last_login": ZERO_TIME,
        "created": timestamp(account.created),
        "restricted": False,
        "active": True,
        "prohibit_login": False,
        "location": "",
        "pronouns": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        # Forgejo's User.MarshalJSON adds this duplicate of login for old clients.
        "username": account.login,
    }


def repository(app_url: str, state: ForgeState, repo: Repo, *, viewer: User | None) -> JSON:
    """structs.Repository, with ``permissions`` for the viewer when there is one."""
    open_issues = sum(1 for i in repo.issues.values() if not i.is_pull and i.state == "open")
    open_pulls = sum(1 for i in repo.issues.values() if i.is_pull and i.state == "open")
    html = f"{app_url}{repo.full_name}"
    host = app_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    shape: JSON = {
        "id": repo.id,
        "owner": user(app_url, repo.owner),
        "name": repo.name,
        "full_name": repo.full_name,
        "description": repo.description,
        "empty": not repo.git.branches,
        "private": repo.private,
        "fork": False,
        "template": False,
        "parent": None,
        "mirror": False,
        "size": 0,
        "language": "",
        "languages_url": f"{app_url}api/v1/repos/{repo.full_name}/languages",
        "html_url": html,
        "url": f"{app_url}api/v1/repos/{repo.full_name}",
        "link": "",
        "ssh_url": f"git@{host}:{repo.full_name}.git",
        "clone_url": f"{html}.git",
        "original_url": "",
        "website": "",
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": open_issues,
        "open_pr_counter": open_pulls,
        "release_counter": 0,
        "default_branch": repo.default_branch,
        "archived": False,
        "created_at": timestamp(repo.created_at),
        "updated_at": timestamp(repo.updated_at),
        "archived_at": "1970-01-01T00:00:00Z",
        "has_issues": True,
        "internal_tracker": {
            "enable_time_tracker": True,
            "allow_only_contributors_to_track_time": True,
            "enable_issue_dependencies": True,
        },
        "has_wiki": True,
        "wiki_branch": repo.default_branch,
        "globally_editable_wiki": False,
        "has_wiki_contents": False,
        "has_pull_requests": True,
        "has_projects": True,
        "has_releases": True,
        "has_packages": True,
        "has_actions": True,
        "ignore_whitespace_conflicts": False,
        "allow_merge_commits": True,
        "allow_rebase": True,
        "allow_rebase_explicit": True,
        "allow_squash_merge": True,
        "allow_fast_forward_only_merge": True,
        "allow_rebase_update": True,
        "default_delete_branch_after_merge": False,
        "default_merge_style": "merge",
        "default_update_style": "merge",
        "default_allow_maintainer_edit": False,
        "avatar_url": "",
        "internal": False,
        "mirror_interval": "",
        "object_format_name": "sha1",
        "mirror_updated": ZERO_TIME,
        "repo_transfer": None,
        "topics": None,
    }
    if viewer is not None:
        access = state.access(repo, viewer)
        shape["permissions"] = {
            "admin": access >= Access.ADMIN,
            "push": access >= Access.WRITE,
            "pull": access >= Access.READ,
        }
    return shape


def label(app_url: str, repo: Repo, item: Label) -> JSON:
    """structs.Label."""
    return {
        "id": item.id,
        "name": item.name,
        "exclusive": item.exclusive,
        "is_archived": item.is_archived,
        "color": item.color,
        "description": item.description,
        "url": f"{app_url}api/v1/repos/{repo.full_name}/labels/{item.id}",
    }


def _issue_html(app_url: str, issue: Issue) -> str:
    kind = "pulls" if issue.is_pull else "issues"
    return f"{app_url}{issue.repo.full_name}/{kind}/{issue.number}"


def issue(app_url: str, state: ForgeState, item: Issue) -> JSON:
    """structs.Issue; pull requests carry ``pull_request`` meta, plain issues null."""
    repo = item.repo
    pull_meta = None
    if item.pull is not None:
        pull_meta = {
            "merged": item.pull.merged,
            "merged_at": timestamp(item.pull.merged_at),
            "draft": False,
            "html_url": _issue_html(app_url, item),
        }
    return {
        "id": item.id,
        "url": f"{app_url}api/v1/repos/{repo.full_name}/issues/{item.number}",
        "html_url": _issue_html(app_url, item),
        "number": item.number,
        "user": user(app_url, item.user),
        "original_author": "",
        "original_author_id": 0,
        "title": item.title,
        "body": item.body,
        "ref": "",
        "assets": [],
        "labels": [label(app_url, repo, x) for x in item.labels],
        "milestone": None,
        "assignee": user(app_url, item.assignees[0]) if item.assignees else None,
        "assignees": [user(app_url, a) for a in item.assignees] or None,
        "state": item.state,
        "is_locked": False,
        "comments": len(item.comments),
        "created_at": timestamp(item.created_at),
        "updated_at": timestamp(item.updated_at),
        "closed_at": timestamp(item.closed_at),
        "due_date": None,
        "pull_request": pull_meta,
        "repository": {
            "id": repo.id,
            "name": repo.name,
            "owner": repo.owner.login,
            "full_name": repo.full_name,
        },
        "pin_order": 0,
    }


def comment(app_url: str, item: Comment) -> JSON:
    """structs.Comment."""
    html = _issue_html(app_url, item.issue)
    return {
        "id": item.id,
        "html_url": f"{html}#issuecomment-{item.id}",
        "pull_request_url": html if item.issue.is_pull else "",
        "issue_url": "" if item.issue.is_pull else html,
        "user": user(app_url, item.user),
        "original_author": "",
        "original_author_id": 0,
        "body": item.body,
        "assets": [],
        "created_at": timestamp(item.created_at),
        "updated_at": timestamp(item.updated_at),
    }


def _branch_info(
    app_url: str, state: ForgeState, repo: Repo, ref: str, sha: str, *, gone_ref: str = ""
) -> JSON:
    # Forgejo (services/convert/pull.go): ``label`` is the branch name; ``ref`` is the branch
    # while it exists, else the PR's own ref ``refs/pull/N/head`` (``gone_ref``).
    return {
        "label": ref,
        "ref": gone_ref if gone_ref and ref not in repo.git.branches else ref,
        "sha": sha,
        "repo_id": repo.id,
        "repo": repository(app_url, state, repo, viewer=None),
    }


def pull_request(app_url: str, state: ForgeState, item: Issue) -> JSON:
    """structs.PullRequest."""
    pull = item.pull
    assert pull is not None
    repo = item.repo
    html = _issue_html(app_url, item)
    files = state.pull_files(repo, item)
    head_sha = state.pull_head_sha(repo, item)
    base_sha = repo.git.resolve(pull.base) or pull.merge_base
    return {
        "id": pull.id,
        "url": html,
        "number": item.number,
        "user": user(app_url, item.user),
        "title": item.title,
        "body": item.body,
        "labels": [label(app_url, repo, x) for x in item.labels],
        "milestone": None,
        "assignee": user(app_url, item.assignees[0]) if item.assignees else None,
        "assignees": [user(app_url, a) for a in item.assignees] or None,
        # The sandbox has no review requests; Forgejo sends an empty list for none.
        "requested_reviewers": [],
        "requested_reviewers_teams": None,
        "state": item.state,
        "draft": False,
        "is_locked": False,
        "comments": len(item.comments),
        "review_comments": 0,
        "additions": sum(f.additions for f in files),
        "deletions": sum(f.deletions for f in files),
        "changed_files": len(files),
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "mergeable": state.is_mergeable(repo, item),
        "merged": pull.merged,
        "merged_at": timestamp(pull.merged_at),
        "merge_commit_sha": pull.merge_commit_sha,
        "merged_by": user(app_url, pull.merged_by) if pull.merged_by else None,
        "allow_maintainer_edit": False,
        "base": _branch_info(app_url, state, repo, pull.base, base_sha),
        "head": _branch_info(
            app_url, state, repo, pull.head, head_sha, gone_ref=f"refs/pull/{item.number}/head"
        ),
        "merge_base": state.pull_base_sha(repo, item),
        "due_date": None,
        "created_at": timestamp(item.created_at),
        "updated_at": timestamp(item.updated_at),
        "closed_at": timestamp(item.closed_at),
        "pin_order": 0,
        "flow": 0,
    }


def review(app_url: str, item: Issue, entry: Review) -> JSON:
    """structs.PullReview."""
    html = _issue_html(app_url, item)
    return {
        "id": entry.id,
        "user": user(app_url, entry.user),
        "team": None,
        "state": entry.state.value,
        "body": entry.body,
        "commit_id": entry.commit_id,
        "stale": False,
        "official": entry.state != "COMMENT",
        "dismissed": False,
        "comments_count": 0,
        "submitted_at": timestamp(entry.submitted_at),
        "updated_at": timestamp(entry.submitted_at),
        "html_url": f"{html}#issuecomment-{entry.id}",
        "pull_request_url": html,
    }


def payload_commit(app_url: str, repo: Repo, item: Commit) -> JSON:
    """structs.PayloadCommit: used in push payloads and branch answers."""
    signer = {"name": item.author.name, "email": item.author.email, "username": item.author.login}
    return {
        "id": item.sha,
        "message": item.message,
        "url": f"{app_url}{repo.full_name}/commit/{item.sha}",
        "author": signer,
        "committer": signer,
        "verification": None,
        "timestamp": timestamp(item.when),
        "added": [c.filename for c in item.changes if c.kind == "added"],
        "removed": [c.filename for c in item.changes if c.kind == "removed"],
        "modified": [c.filename for c in item.changes if c.kind == "modified"],
    }


def branch(app_url: str, repo: Repo, name: str, head: Commit) -> JSON:
    """structs.Branch (no branch protection in the sandbox)."""
    return {
        "name": name,
        "commit": payload_commit(app_url, repo, head),
        "protected": False,
        "required_approvals": 0,
        "enable_status_check": False,
        "status_check_contexts": [],
        "user_can_push": True,
        "user_can_merge": True,
        "effective_branch_protection_name": "",
    }


def commit(app_url: str, state: ForgeState, repo: Repo, item: Commit) -> JSON:
    """structs.Commit with stats and files, as ``/git/commits/{sha}`` and logs answer."""
    api = f"{app_url}api/v1/repos/{repo.full_name}/git/commits/"
    who = {"name": item.author.name, "email": item.author.email, "date": timestamp(item.when)}
    author = state.users.get(item.author.login)
    additions = sum(c.additions for c in item.changes)
    deletions = sum(c.deletions for c in item.changes)
    return {
        "url": api + item.sha,
        "sha": item.sha,
        "created": timestamp(item.when),
        "html_url": f"{app_url}{repo.full_name}/commit/{item.sha}",
        "commit": {
            "url": api + item.sha,
            "author": who,
            "committer": who,
            "message": item.message,
            "tree": {
                "url": f"{app_url}api/v1/repos/{repo.full_name}/git/trees/{item.sha}",
                "sha": item.sha,
                "created": timestamp(item.when),
            },
            "verification": {
                "verified": False,
                "reason": "gpg.error.not_signed_commit",
                "signature": "",
                "signer": None,
                "payload": "",
            },
        },
        "author": user(app_url, author) if author else None,
        "committer": user(app_url, author) if author else None,
        "parents": [
            {
                "url": api + parent,
                "sha": parent,
                "created": timestamp(repo.git.commits[parent].when),
            }
            for parent in item.parents
        ],
        "files": [{"filename": c.filename, "status": c.kind.value} for c in item.changes],
        "stats": {"total": additions + deletions, "additions": additions, "deletions": deletions},
    }


def changed_file(app_url: str, repo: Repo, head_sha: str, change: FileChange) -> JSON:
    """structs.ChangedFile, for ``/pulls/{index}/files``."""
    return {
        "filename": change.filename,
        "previous_filename": "",
        "status": change.kind.value,
        "additions": change.additions,
        "deletions": change.deletions,
        "changes": change.additions + change.deletions,
        "html_url": f"{app_url}{repo.full_name}/src/commit/{head_sha}/{change.filename}",
        "contents_url": (
            f"{app_url}api/v1/repos/{repo.full_name}/contents/{change.filename}?ref={head_sha}"
        ),
        "raw_url": f"{app_url}{repo.full_name}/raw/commit/{head_sha}/{change.filename}",
    }


def commit_status(app_url: str, repo: Repo, item: CommitStatus) -> JSON:
    """structs.CommitStatus."""
    return {
        "id": item.id,
        "status": item.state.value,
        "target_url": item.target_url,
        "description": item.description,
        "url": f"{app_url}api/v1/repos/{repo.full_name}/statuses/{item.sha}",
        "context": item.context,
        "creator": user(app_url, item.creator),
        "created_at": timestamp(item.created_at),
        "updated_at": timestamp(item.updated_at),
    }


def combined_state(statuses: list[CommitStatus]) -> StatusState:
    """The worst of the latest statuses; pending when there are none."""
    if not statuses:
        return StatusState.PENDING
    return min((s.state for s in statuses), key=lambda s: STATUS_PRIORITY[s])


def combined_status(
    app_url: str, state: ForgeState, repo: Repo, sha: str, latest: list[CommitStatus]
) -> JSON:
    """structs.CombinedStatus over the newest status of each context."""
    api = f"{app_url}api/v1/repos/{repo.full_name}"
    return {
        "state": combined_state(latest).value,
        "sha": sha,
        "total_count": len(latest),
        "statuses": [commit_status(app_url, repo, s) for s in latest],
        "repository": repository(app_url, state, repo, viewer=None),
        "commit_url": f"{api}/commits/{sha}",
        "url": f"{api}/commits/{sha}/status",
    }


def empty_combined_status() -> JSON:
    """What Forgejo answers for a commit without statuses: ``api.CombinedStatus{}``."""
    return {
        "state": "",
        "sha": "",
        "total_count": 0,
        "statuses": None,
        "repository": None,
        "commit_url": "",
        "url": "",
    }


def hook(app_url: str, repo: Repo, item: Hook, *, events: list[str]) -> JSON:
    """structs.Hook (services/webhook ToHook); the secret is never shown."""
    return {
        "id": item.id,
        "type": item.type,
        "branch_filter": item.branch_filter,
        "url": f"{app_url}{repo.full_name}/settings/hooks/{item.id}",
        "config": {"url": item.url, "content_type": item.content_type},
        "events": events,
        "authorization_header": item.authorization_header,
        "active": item.active,
        "content_type": item.content_type,
        "metadata": None,
        "updated_at": timestamp(item.updated_at),
        "created_at": timestamp(item.created_at),
    }


def permission(app_url: str, account: User, access: Access) -> JSON:
    """structs.RepoCollaboratorPermission."""
    return {"permission": access.word, "role_name": access.word, "user": user(app_url, account)}
