"""The assignment controller's part in questions and decisions agents ask (docs/mcp.md).

A run records a question on its task through the daemon's API (``Fleet.ask``). For an issue
whose task has questions, :func:`observe_questions` reads what Forgejo holds about them: the
question issues already opened (found by the marker ending their body, so an issue whose
creation answer was lost is found, not opened twice), whether the task's issue depends on
them, and the answers of those that are closed. :func:`plan_questions` then opens what is not
open yet (:class:`OpenQuestion`), links what is not linked (:class:`LinkQuestion`), and records
the answers on the task; :func:`question_hold` keeps the task waiting while any question is
unanswered. The rules themselves (limits, markers, whose words answer) are
``reconciler/fleet/questions.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from reconciler.engine.reconcile import ActContext, Action
from reconciler.errors import ForgejoNotFound
from reconciler.fleet.holds import Hold
from reconciler.fleet.questions import (
    Answer,
    answered,
    marker,
    parse_marker,
    question_body,
    question_labels,
    question_title,
    read_answer,
    unanswered,
    waiting_reason,
)
from reconciler.fleet.vocabulary import role_spec
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue, IssueState, LabelSpec
from reconciler.keys import issue_key
from reconciler.models import RECONCILER_ACTOR, Question, Task, TaskEvent, TaskState, task_id_for
from reconciler.settings import Settings
from reconciler.store import Store

log = structlog.get_logger(__name__)

QUESTION_HOLD = "question"
"""The hold kind of a task waiting for the answers to its questions."""


@dataclass(frozen=True)
class QuestionFacts:
    """What Forgejo holds about a task's questions (the defaults: nothing was read)."""

    found: Mapping[int, int] = field(default_factory=dict)
    """Question number → the issue opened for it, for questions the task has not recorded."""
    linked: frozenset[int] = frozenset()
    """Issues of this repository the task's issue depends on (read when a question needs it)."""
    answers: Mapping[int, Answer] = field(default_factory=dict)
    """Question number → its answer, for questions whose issue is closed."""
    dependencies: tuple[Issue, ...] | None = None
    """The task's issue's dependencies, when they were read (the holds use them too)."""


def observe_questions(
    gateway: ForgejoGateway,
    store: Store,
    task: Task,
    *,
    settings: Settings,
    trusted: Callable[[str], bool],
) -> QuestionFacts:
    """Read what the plan needs about ``task``'s unanswered questions (none: no reads)."""
    waiting = unanswered(task)
    if not waiting:
        return QuestionFacts()
    repo, bot = task.repo, gateway.bot_login()
    found: dict[int, int] = {}
    unopened = [q for q in waiting if q.issue_number is None]
    for label in dict.fromkeys(question_labels(q, settings.labels)[0] for q in unopened):
        for candidate in gateway.list_issues(repo, state="all", labels=(label,), kind="issues"):
            mark = parse_marker(candidate, bot_login=bot)
            if mark is not None and mark.task_id == task.id:
                found.setdefault(mark.number, candidate.number)
    numbers = {q.number: q.issue_number or found.get(q.number) for q in waiting}
    if not any(numbers.values()):
        return QuestionFacts(found=found)
    listed = gateway.list_dependencies(repo, task.issue_number)
    dependencies = {dep.number: dep for dep in listed if (dep.repo or repo) == repo}
    answers: dict[int, Answer] = {}
    for question in waiting:
        number = numbers[question.number]
        if number is None:
            continue
        issue = dependencies.get(number)
        if issue is None:
            try:
                issue = gateway.get_issue(repo, number)
            except ForgejoNotFound:
                answers[question.number] = Answer(
                    text=f"(the question's issue #{number} was deleted without an answer; "
                    "decide yourself and say so in your summary)",
                    by="",
                )
                continue
        if issue.state is not IssueState.CLOSED:
            continue
        comments = gateway.list_comments(repo, number)
        answering = store.find_task(task_id_for(repo, number))
        answers[question.number] = read_answer(
            question,
            [c for c in comments if c.author.casefold() != bot.casefold()],
            trusted=trusted,
            agent_answer=_agent_answer(store, answering, question, settings=settings),
            resolved_by=(
                answering.pr_number
                if answering is not None and answering.state is TaskState.COMPLETED
                else None
            ),
        )
    return QuestionFacts(
        found=found, linked=frozenset(dependencies), answers=answers, dependencies=listed
    )


def _agent_answer(
    store: Store, answering: Task | None, question: Question, *, settings: Settings
) -> str | None:
    """What the agent that took a question for a trusted role handed in, if it did."""
    if question.role is None or question.role not in settings.mcp.trusted_roles:
        return None
    if answering is None or answering.state is not TaskState.COMPLETED:
        return None
    receipts = store.receipts_for(answering.id)
    return receipts[-1].summary if receipts and receipts[-1].summary.strip() else None


@dataclass(frozen=True)
class OpenQuestion(Action):
    """Open a question's issue and make the asking task's issue depend on it."""

    repo: str
    number: int
    """The asking task's issue."""
    title: str
    body: str
    labels: tuple[str, ...]
    role_label: LabelSpec | None
    """The role's label, made if the repository lacks it (a question for a role)."""
    key: str
    """The marker that ends the body: how the issue is found again."""

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: open the question {self.title!r}"

    def apply(self, ctx: ActContext) -> None:
        # Not repeated blindly: the observe before this found no issue with its marker; a
        # create whose answer is lost fails the reconcile, whose next observe finds it, and
        # one that may still land is not sent again until it has settled.
        if self.role_label is not None:
            ctx.gateway.ensure_labels(self.repo, [self.role_label])
        opened = ctx.gateway.create_issue_once(
            self.repo, key=self.key, title=self.title, body=self.body, labels=self.labels
        )
        ctx.gateway.add_dependency(self.repo, self.number, on=opened.number)
        log.info("question.opened", repo=self.repo, issue=self.number, question=opened.number)
        if ctx.enqueue is not None:  # the task records the issue it was given
            ctx.enqueue(issue_key(self.repo, self.number))


@dataclass(frozen=True)
class LinkQuestion(Action):
    """Make the asking task's issue depend on its question's issue (a crash came between)."""

    repo: str
    number: int
    on: int

    def describe(self) -> str:
        return f"{self.repo}#{self.number}: depend on its question #{self.on}"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.add_dependency(self.repo, self.number, on=self.on)


def plan_questions(
    task: Task, facts: QuestionFacts, *, now: datetime, settings: Settings
) -> tuple[Task, list[Action], list[TaskEvent]]:
    """The task with what was found recorded, the writes its questions need, and events."""
    actions: list[Action] = []
    events: list[TaskEvent] = []
    if not unanswered(task):
        return task, actions, events
    questions: list[Question] = []
    for question in task.questions:
        if question.answer is not None:
            questions.append(question)
            continue
        number = question.issue_number or facts.found.get(question.number)
        if number is None:
            actions.append(
                OpenQuestion(
                    task.repo,
                    task.issue_number,
                    title=question_title(task, question),
                    body=question_body(task, question, asker_trusted=question.asker_trusted),
                    labels=question_labels(question, settings.labels),
                    role_label=(
                        role_spec(settings.labels, question.role) if question.role else None
                    ),
                    key=marker(task, question, asker_trusted=question.asker_trusted),
                )
            )
            questions.append(question)
            continue
        answer = facts.answers.get(question.number)
        if answer is not None:
            question = answered(question.model_copy(update={"issue_number": number}), answer)
            who = f" by {answer.by}" if answer.by else ""
            events.append(
                TaskEvent(
                    task_id=task.id,
                    at=now,
                    actor=RECONCILER_ACTOR,
                    kind="answer",
                    reason=f"question {question.number} (#{number}) answered{who}",
                    data={"question": question.number, "issue": number},
                )
            )
        else:
            # Linked once, when found: a crash came between opening and linking. A dependency a
            # person removed later stays removed (closing the question is how to release it).
            if question.issue_number is None and number not in facts.linked:
                actions.append(LinkQuestion(task.repo, task.issue_number, on=number))
            question = question.model_copy(update={"issue_number": number})
        questions.append(question)
    changed = tuple(questions)
    if changed != task.questions:
        task = task.changed(now=now, questions=changed)
    return task, actions, events


def question_hold(task: Task) -> Hold | None:
    """A task whose questions are not all answered waits for them."""
    reason = waiting_reason(task)
    return Hold(QUESTION_HOLD, reason) if reason else None


__all__ = [
    "QUESTION_HOLD",
    "LinkQuestion",
    "OpenQuestion",
    "QuestionFacts",
    "observe_questions",
    "plan_questions",
    "question_hold",
]
