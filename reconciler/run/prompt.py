"""The prompt an agent CLI receives for a task, built from the issue and cleaned of hidden text.

The executors (ssh push and the pull worker's dispatch) call :func:`build_prompt` with the
issue, its comments and a trust predicate; the assignment controller decides who is trusted
with :func:`is_trusted_author` (write access to the repository, or a configured login).

Only text by trusted authors reaches the agent: the issue's title and body only if its author
is trusted, comments only from trusted authors (agent-fleet's own comments, recognised by their
hidden marker, never). Review feedback is passed in already filtered by the caller. Every text
goes through :func:`sanitize`, which removes what a reader of the issue in Forgejo does not
see but an agent would: HTML comments (agent-fleet's markers among them), Markdown comment
lines (``[//]: # (…)``), terminal escape sequences and invisible or direction-changing
characters. That is prompt-injection hygiene, not a guarantee: a trusted author can still
write anything.

The issue body's headed sections (``## Goal``, ``## Constraints``, ``## Validation`` and their
usual synonyms) become the prompt's goal, constraints and validation steps; without such
headings the whole body is the goal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.errors import FleetError, StalledError
from reconciler.fleet.budgets import Budget, budget_prompt_line
from reconciler.fleet.questions import answers_prompt
from reconciler.forgejo.types import Comment, Issue, RepoPermission
from reconciler.models import Question, Task
from reconciler.text import sanitize

if TYPE_CHECKING:
    from reconciler.forgejo.gateway import ForgejoGateway

# Linux refuses a single argv element over 128 KiB (MAX_ARG_STRLEN); the prompt is one.
MAX_PROMPT_BYTES = 96 * 1024
# agent-fleet's own comments carry this hidden marker (reconciler.forgejo.gateway).
_OWN_MARKER = "<!-- agent-fleet:"


# --- trust --------------------------------------------------------------------------------


def is_trusted_author(
    login: str, permission: RepoPermission | None, *, allow: AbstractSet[str] = frozenset()
) -> bool:
    """Whether text by ``login`` may go into a prompt.

    Trusted: a login in ``allow`` (compared case-insensitively, as Forgejo compares logins), or
    an author whose ``permission`` on the repository is write, admin or owner. ``permission``
    is None when Forgejo knows no permission for the login (not a collaborator, deleted user).
    """
    if not login:
        return False
    folded = login.casefold()
    if folded in {name.casefold() for name in allow}:
        return True
    if permission is None:
        return False
    if permission.login.casefold() != folded:
        raise ValueError(f"permission of {permission.login!r} given for author {login!r}")
    return permission.can_push


# --- the issue's sections -------------------------------------------------------------------


@dataclass(frozen=True)
class IssueSections:
    """The parts of an issue body the prompt uses; empty strings when absent."""

    goal: str
    constraints: str
    validation: str


_SECTION_NAMES: dict[str, tuple[str, ...]] = {
    "goal": (
        "goal", "goals", "objective", "objectives", "summary", "description", "task",
        "problem", "motivation", "background", "context", "overview", "what", "what to do",
        "what to build", "user story",
    ),
    "constraints": (
        "constraints", "constraint", "requirements", "limitations", "limits", "rules",
        "non goals", "nongoals", "out of scope", "do not", "dont",
    ),
    "validation": (
        "validation", "validate", "acceptance", "acceptance criteria", "acceptance tests",
        "testing", "tests", "test plan", "how to test", "how to verify", "verification",
        "definition of done", "done when", "success criteria", "checks",
    ),
}  # fmt: skip
_SECTION_OF = {name: section for section, names in _SECTION_NAMES.items() for name in names}
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _section_name(heading: str) -> str | None:
    words = re.sub(r"[^a-z]+", " ", heading.casefold()).split()
    return _SECTION_OF.get(" ".join(words))


def split_sections(body: str) -> IssueSections:
    """Goal, constraints and validation from the body's ATX headings (``## Goal``).

    Text before the first heading and sections with other headings stay in the goal (with
    their heading); headings inside fenced code blocks are not headings. Without any known
    heading the whole body is the goal.
    """
    parts: dict[str, list[str]] = {"goal": [], "constraints": [], "validation": []}
    current = "goal"
    fence: str | None = None
    found = False
    for line in body.split("\n"):
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
        heading = _HEADING.match(line) if fence is None and not fence_match else None
        if heading:
            known = _section_name(heading.group(2))
            # A blank line keeps the pieces that meet in one section apart.
            if known is not None:
                found = True
                current = known
                parts[current].append("")
                continue
            current = "goal"
            parts["goal"] += ["", f"### {heading.group(2)}"]
            continue
        parts[current].append(line)
    if not found:
        return IssueSections(goal=body.strip(), constraints="", validation="")
    text = {name: "\n".join(lines).strip() for name, lines in parts.items()}
    return IssueSections(
        goal=text["goal"], constraints=text["constraints"], validation=text["validation"]
    )


# --- the prompt -----------------------------------------------------------------------------


def build_prompt(
    *,
    issue: Issue,
    comments: Sequence[Comment],
    trusted: Callable[[str], bool],
    repo: str,
    branch: str,
    review_feedback: Sequence[str] = (),
    attempt: int = 1,
    budget: Budget | None = None,
    questions: Sequence[Question] = (),
) -> str:
    """The prompt for one run of the task born from ``issue``; a ``budget`` with a limit is
    stated in it, so the agent knows what it may spend.

    ``trusted(login)`` says whose text may go in; ``comments`` are the issue's comments,
    oldest first; ``review_feedback`` holds the review comments that asked for this rerun,
    from trusted reviewers only; ``questions`` are the task's questions, whose answers (trusted
    text only: ``fleet/questions.py``) are given. Raises ``StalledError`` when no trusted text says what to do
    (the issue's author is not trusted and no trusted comment or review exists): the task
    waits until a maintainer writes one.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    author_trusted = trusted(issue.author)
    discussion = [
        (comment.author, sanitize(comment.body))
        for comment in comments
        if _OWN_MARKER not in comment.body and trusted(comment.author)
    ]
    discussion = [(author, body) for author, body in discussion if body]
    feedback = [text for text in (sanitize(item) for item in review_feedback) if text]
    if not author_trusted and not discussion and not feedback:
        raise StalledError(
            f"issue #{issue.number} was opened by {issue.author or 'an unknown user'}, who is "
            "not trusted, and no trusted comment says what to do; a maintainer's comment is "
            "needed before an agent can work on it"
        )
    sections = split_sections(sanitize(issue.body)) if author_trusted else None
    title = sanitize(issue.title) if author_trusted else ""
    answers = answers_prompt(
        [
            q.model_copy(update={"text": sanitize(q.text), "answer": sanitize(q.answer)})
            for q in questions
            if q.answer is not None
        ]
    )
    for dropped in range(len(discussion) + 1):
        prompt = _render(
            issue=issue,
            title=title,
            sections=sections,
            discussion=discussion[dropped:],
            dropped=dropped,
            feedback=feedback,
            repo=repo,
            branch=branch,
            attempt=attempt,
            budget=budget,
            answers=answers,
        )
        if len(prompt.encode()) <= MAX_PROMPT_BYTES:
            return prompt
    return _shortened(prompt, issue=issue)


def _render(
    *,
    issue: Issue,
    title: str,
    sections: IssueSections | None,
    discussion: Sequence[tuple[str, str]],
    dropped: int,
    feedback: Sequence[str],
    repo: str,
    branch: str,
    attempt: int,
    budget: Budget | None,
    answers: Sequence[str] = (),
) -> str:
    where = f"{repo}#{issue.number}"
    out = [f"# Task: {title}" if title else f"# Task: issue {where}", ""]
    out.append(
        f"You are working on issue {where}" + (f" ({issue.html_url})." if issue.html_url else ".")
    )
    out.append(
        f"Your working directory is a git worktree of {repo} with the branch `{branch}` "
        "checked out."
    )
    if attempt > 1:
        out.append(
            f"This is attempt {attempt}: the branch may already hold commits from an earlier "
            "attempt; build on them."
        )
    out += ["", "## Goal", ""]
    if sections is None:
        out.append(
            "The issue was opened by someone without write access to the repository, so its "
            "text is left out. Do what the maintainers ask below."
        )
    else:
        out.append(sections.goal or f"{title}\n\n(The issue has no further description.)")
        if sections.constraints:
            out += ["", "## Constraints", "", sections.constraints]
        if sections.validation:
            out += [
                "",
                "## Validation",
                "",
                "Before you finish, check that:",
                "",
                sections.validation,
            ]
    if discussion or dropped:
        out += ["", "## Discussion", "", "Comments on the issue by maintainers, oldest first."]
        if dropped:
            out.append(f"({dropped} earlier comments are left out to keep the prompt short.)")
        for author, body in discussion:
            out += ["", f"### {author} wrote", "", body]
    if feedback:
        out += [
            "",
            "## Review feedback",
            "",
            "A review of the previous attempt asked for changes. Address every point:",
        ]
        for number, text in enumerate(feedback, start=1):
            out += ["", f"### Review comment {number}", "", text]
    if answers:
        out += ["", *answers]
    budget_line = budget_prompt_line(budget) if budget is not None else None
    if budget_line is not None:
        out += ["", "## Budget", "", budget_line]
    out += [
        "",
        "## When you are done",
        "",
        f"- Commit your work on the branch `{branch}`; say what changed and why in each message.",
        "- Stay on this branch: create or switch no branches, rewrite no commits already on it.",
        f"- Do not push: agent-fleet pushes `{branch}` and opens the pull request.",
        "- End with a short summary of what you changed and how you checked it.",
    ]
    return "\n".join(out) + "\n"


def _shortened(prompt: str, *, issue: Issue) -> str:
    """A prompt still too long without any comment: cut its middle, say where the rest is."""
    note = (
        "\n\n[… the issue is too long for a prompt; this part is left out"
        + (f"; read it at {issue.html_url}" if issue.html_url else "")
        + " …]\n\n"
    )
    data = prompt.encode()
    keep = (MAX_PROMPT_BYTES - len(note.encode())) // 2
    head = data[:keep].decode("utf-8", errors="ignore")
    tail = data[-keep:].decode("utf-8", errors="ignore")
    return head + note + tail


def prompt_for_task(
    gateway: ForgejoGateway,
    task: Task,
    *,
    attempt: int,
    allow: AbstractSet[str] = frozenset(),
) -> str:
    """The task's prompt from its issue as Forgejo shows it now, trusted authors only.

    Used by the ssh executor and the pull worker alike. Each author's permission is asked for
    once per prompt; ``allow`` names logins trusted regardless (``forgejo.trusted_authors``).
    A rerun after a review carries the review's text the daemon kept on the task.
    """
    issue = gateway.get_issue(task.repo, task.issue_number)
    comments = gateway.list_comments(task.repo, task.issue_number)
    verdicts: dict[str, bool] = {}

    def trusted(login: str) -> bool:
        if login not in verdicts:
            try:
                permission: RepoPermission | None = gateway.get_permission(task.repo, login)
            except FleetError:
                permission = None
            verdicts[login] = is_trusted_author(login, permission, allow=allow)
        return verdicts[login]

    return build_prompt(
        issue=issue,
        comments=comments,
        trusted=trusted,
        repo=task.repo,
        branch=task.branch,
        review_feedback=task.review_feedback,
        attempt=attempt,
        budget=Budget(usd=task.budget_usd, tokens=task.budget_tokens),
        questions=task.questions,
    )
