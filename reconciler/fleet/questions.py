"""Questions and decisions agents ask through the fleet's tools: the rules, with no I/O.

A run asks through its MCP server (``ask``/``decide``, docs/mcp.md); the daemon records the
:class:`~reconciler.models.Question` on the task (:func:`check_ask` says whether it may), and
the run ends. The assignment controller opens the question as an issue the task depends on
(:func:`question_issue`), found again after a crash by the hidden marker in its body
(:func:`parse_marker`); the task waits on that dependency like on any other. When a person
closes the issue, :func:`read_answer` takes the answer from the comments, trusted text only,
and the task is requeued with it in its prompt (:func:`answers_prompt`).

Trust: the question's text is the agent's. The issue says so in a visible line and in its
marker; a question opened for a role is a fleet task whose text is agent-written, so it waits
for a trusted person's approval label unless the asking agent holds a role of
``mcp.trusted_roles`` (:func:`needs_approval`). Only trusted users' comments — or, for a
question asked of a trusted role, that role's agent's result — become an answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.errors import ConflictError
from reconciler.forgejo.types import Comment, Issue
from reconciler.models import Question, QuestionKind, Task
from reconciler.settings import LabelsSettings, McpSettings
from reconciler.text import one_line

QUESTION_MAX = 4000
"""Longest question text, in characters."""
OPTION_MAX = 300
OPTIONS_MAX = 10


_MARKER = re.compile(
    r"<!-- agent-fleet:question task=(?P<task>\d+-[0-9a-f]{8}) n=(?P<n>\d+) "
    r"depth=(?P<depth>\d+) trusted=(?P<trusted>yes|no) -->\s*\Z"
)


@dataclass(frozen=True)
class QuestionMark:
    """What a question issue's marker says: whose question it is and how deep it sits."""

    task_id: str
    number: int
    depth: int
    asker_trusted: bool


def marker(task: Task, question: Question, *, asker_trusted: bool) -> str:
    """The hidden line that ends a question issue's body (``parse_marker`` reads it)."""
    trusted = "yes" if asker_trusted else "no"
    return (
        f"<!-- agent-fleet:question task={task.id} n={question.number} "
        f"depth={task.question_depth + 1} trusted={trusted} -->"
    )


def parse_marker(issue: Issue, *, bot_login: str) -> QuestionMark | None:
    """The marker of a question issue agent-fleet opened (its author is the bot, and the
    marker ends the body: an agent's own text cannot hold one, see :func:`quoted`)."""
    if not bot_login or issue.author.casefold() != bot_login.casefold():
        return None
    found = _MARKER.search(issue.body or "")
    if found is None:
        return None
    return QuestionMark(
        task_id=found["task"],
        number=int(found["n"]),
        depth=int(found["depth"]),
        asker_trusted=found["trusted"] == "yes",
    )


def needs_approval(issue: Issue, *, bot_login: str) -> bool:
    """A question issue whose agent-written text no trusted role vouches for: its task waits
    for a trusted person's approval label, as an untrusted author's issue does."""
    mark = parse_marker(issue, bot_login=bot_login)
    return mark is not None and not mark.asker_trusted


def quoted(text: str) -> str:
    """Agent-written text made safe to put in an issue body: HTML comments cannot open (so
    no marker can be forged) and every line is a quote."""
    safe = text.replace("<!--", "&lt;!--").replace("-->", "--&gt;")
    return "\n".join(f"> {line}" if line else ">" for line in safe.splitlines() or [""])


def check_ask(
    task: Task,
    *,
    kind: QuestionKind,
    role: str | None,
    options: Sequence[str],
    settings: McpSettings,
) -> None:
    """Refuse a question the guardrails do not allow, with :class:`ConflictError`."""
    if kind is QuestionKind.DECISION and len(options) < 2:
        raise ValueError("a decision needs at least two options")
    if kind is QuestionKind.QUESTION and options:
        raise ValueError("options are for decisions; a question has none")
    limit = settings.max_questions_per_task
    if len(task.questions) >= limit:
        raise ConflictError(
            "question_limit",
            f"task {task.id} has asked {len(task.questions)} of its {limit} questions "
            "(mcp.max_questions_per_task); decide yourself and say why in your summary",
        )
    if task.question_depth + 1 > settings.max_question_depth:
        raise ConflictError(
            "question_depth",
            f"task {task.id} answers a question {task.question_depth} level(s) deep, and "
            f"questions nest at most {settings.max_question_depth} (mcp.max_question_depth); "
            "answer with what you know",
        )
    if role is not None and task.question_depth > 0 and role == task.required_role:
        raise ConflictError(
            "own_role",
            f"task {task.id} is itself a question for role {role}: it cannot pass the "
            "question on to its own role; answer it, or ask the maintainers (no role)",
        )
    if task.budget_usd is not None and task.spent_usd >= task.budget_usd:
        raise ConflictError(
            "over_budget",
            f"task {task.id} has spent ${task.spent_usd:.2f} of its ${task.budget_usd:.2f} "
            "budget: a question would resume it past its budget",
        )
    if task.budget_tokens is not None and task.spent_tokens >= task.budget_tokens:
        raise ConflictError(
            "over_budget",
            f"task {task.id} has used {task.spent_tokens} of its {task.budget_tokens} "
            "tokens: a question would resume it past its budget",
        )


def question_labels(question: Question, vocabulary: LabelsSettings) -> tuple[str, ...]:
    """A question's issue labels: the question or decision label, and for a role the fleet
    trigger and the role's label, so an agent of that role takes it as a task."""
    kind = vocabulary.decision if question.kind is QuestionKind.DECISION else vocabulary.question
    if question.role is None:
        return (kind,)
    return (kind, vocabulary.trigger, f"{vocabulary.role_prefix}{question.role}")


def question_title(task: Task, question: Question) -> str:
    what = "Decision" if question.kind is QuestionKind.DECISION else "Question"
    first = one_line(question.text, limit=90)
    return f"{what} for #{task.issue_number}: {first}"


def question_body(task: Task, question: Question, *, asker_trusted: bool) -> str:
    """The question issue's body: who asks and why, the agent's text quoted, how to answer."""
    who = "the maintainers" if question.role is None else f"role `{question.role}`"
    out = [
        (
            f"Agent **{question.asked_by}**, working on #{task.issue_number} ({task.title}), "
            f"asks {who}:"
        ),
        "",
        quoted(question.text),
        "",
    ]
    if question.kind is QuestionKind.DECISION:
        out += ["Options:", ""]
        out += [f"{n}. {one_line(option, limit=OPTION_MAX)}" for n, option in
                enumerate(question.options, start=1)]  # fmt: skip
        out += [
            "",
            (
                "**To decide:** a maintainer comments the option's number (or its text) and "
                f"closes this issue; #{task.issue_number} then resumes with that decision."
            ),
        ]
    else:
        out += [
            (
                "**To answer:** a maintainer comments the answer and closes this issue; "
                f"#{task.issue_number} then resumes with it."
            ),
        ]
    out += [
        "",
        "<sub>agent-fleet · the quoted text is agent-written"
        + ("" if asker_trusted else "; an agent takes this up only once a maintainer approves it")
        + "</sub>",
        "",
        marker(task, question, asker_trusted=asker_trusted),
    ]
    return "\n".join(out)


@dataclass(frozen=True)
class Answer:
    text: str
    by: str
    chosen: int | None = None


_CHOICE = re.compile(r"^\s*(?:option\s*)?(\d{1,2})\b", re.IGNORECASE)


def chosen_option(text: str, options: Sequence[str]) -> int | None:
    """The option (from 1) a decision's comment states: its number first, else the one
    option whose text it contains (the longest, when several do)."""
    match = _CHOICE.match(text)
    if match and 1 <= int(match[1]) <= len(options):
        return int(match[1])
    lowered = text.casefold()
    named = [(len(o), n) for n, o in enumerate(options, start=1) if o.casefold() in lowered]
    return max(named)[1] if named else None


def read_answer(
    question: Question,
    comments: Sequence[Comment],
    *,
    trusted: Callable[[str], bool],
    agent_answer: str | None = None,
    resolved_by: int | None = None,
) -> Answer:
    """The answer to a closed question: the last comment by a trusted user (pass the comments
    without agent-fleet's own: its comments quote agents), or ``agent_answer`` (the result of a trusted role's agent, passed only
    when the asked role is trusted); else a note that none was given."""
    for comment in reversed(comments):
        if not comment.body.strip():
            continue
        if trusted(comment.author):
            text = comment.body.strip()
            chosen = (
                chosen_option(text, question.options)
                if question.kind is QuestionKind.DECISION
                else None
            )
            return Answer(text=text, by=comment.author, chosen=chosen)
    if agent_answer:
        text = agent_answer.strip()
        chosen = (
            chosen_option(text, question.options)
            if question.kind is QuestionKind.DECISION
            else None
        )
        return Answer(text=text, by=f"role {question.role}", chosen=chosen)
    if resolved_by is not None:
        return Answer(
            text=f"The question was resolved by pull request #{resolved_by}, merged: read its "
            "changes on the default branch.",
            by=f"pull request #{resolved_by}",
        )
    return Answer(
        text="(the question was closed without an answer from a trusted user; decide "
        "yourself and say so in your summary)",
        by="",
    )


def answered(question: Question, answer: Answer) -> Question:
    """``question`` with its answer recorded."""
    return question.model_copy(
        update={"answer": answer.text, "answered_by": answer.by, "chosen": answer.chosen}
    )


def unanswered(task: Task) -> tuple[Question, ...]:
    return tuple(q for q in task.questions if q.answer is None)


def waiting_reason(task: Task) -> str:
    """Why a task with open questions waits (empty: it has none)."""
    open_ = unanswered(task)
    if not open_:
        return ""
    opened = [f"#{q.issue_number}" for q in open_ if q.issue_number is not None]
    if len(opened) < len(open_):
        return "opening the question its agent asked"
    return f"waiting for the answer to {', '.join(opened)}"


def answers_prompt(questions: Sequence[Question]) -> list[str]:
    """The prompt's lines for the answered questions (empty: none)."""
    done = [q for q in questions if q.answer is not None]
    if not done:
        return []
    out = [
        "## Answers to your questions",
        "",
        (
            "Earlier you asked questions; the run stopped until they were answered. Continue with "
            "these answers:"
        ),
    ]
    for q in done:
        what = "Decision" if q.kind is QuestionKind.DECISION else "Question"
        where = f" (#{q.issue_number})" if q.issue_number is not None else ""
        out += ["", f"### {what} {q.number}{where}", "", one_line(q.text, limit=500), ""]
        if q.kind is QuestionKind.DECISION and q.chosen is not None:
            out.append(f"Chosen: option {q.chosen}, {q.options[q.chosen - 1]}")
            out.append("")
        by = f" ({q.answered_by})" if q.answered_by else ""
        out += [f"Answer{by}:", "", q.answer or ""]
    return out
