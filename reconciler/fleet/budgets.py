"""Budgets, decided by pure rules: a task's budget (its role's default in ``[budgets]``,
overridden by a budget label such as ``budget/5usd`` or ``budget/200k``), the usage a run has
reported so far as its output streams (:class:`UsageMeter`), whether it is over budget, and the
daily cap hold that stops dispatch for a repository (or agent) whose day's spend reached its
cap until the next 00:00 UTC.

The assignment controller asks :func:`task_budget` and :func:`daily_cap_hold`; the run's output
reader feeds a :class:`UsageMeter` line by line and stops the run when :meth:`UsageMeter.over`
says so. Nothing here reads the clock; only :func:`read_spend_today` reads (the store). See
``docs/budgets.md``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from reconciler.engine.metrics import SpendToday
from reconciler.fleet.holds import Hold, HoldKind
from reconciler.models import Task, TaskEvent
from reconciler.settings import BudgetsSettings, LabelsSettings
from reconciler.store import Store

MeterFormat = Literal["claude-json", "codex-jsonl", "raw"]

_USD = re.compile(r"^(?:\$)?(\d+(?:\.\d+)?)\s*(?:usd|\$)?$", re.IGNORECASE)
_TOKENS = re.compile(r"^(\d+(?:\.\d+)?)\s*([km]?)$", re.IGNORECASE)
_TOKEN_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class Budget:
    """A task's limit: US dollars and/or tokens; neither set means no limit."""

    usd: float | None = None
    tokens: int | None = None

    @property
    def limited(self) -> bool:
        """Whether there is any limit at all."""
        return self.usd is not None or self.tokens is not None

    def describe(self) -> str:
        """``$5.00 and 200,000 tokens``, ``no limit``."""
        parts = []
        if self.usd is not None:
            parts.append(format_usd(self.usd))
        if self.tokens is not None:
            parts.append(f"{self.tokens:,} tokens")
        return " and ".join(parts) or "no limit"

    def raised_from(self, before: Budget) -> bool:
        """Whether this budget allows more than ``before`` in some limit and less in none."""
        pairs = ((self.usd, before.usd), (self.tokens, before.tokens))
        more = False
        for now, was in pairs:
            if was is None and now is None:
                continue
            if now is None:
                more = True
            elif was is None or now < was:
                return False
            elif now > was:
                more = True
        return more


def format_usd(amount: float) -> str:
    """``$0.0032`` for small amounts, ``$5.00`` otherwise."""
    return f"${amount:.4f}" if 0 < amount < 0.01 else f"${amount:.2f}"


def parse_budget_label(name: str, prefix: str) -> Budget | None:
    """The budget a label names: ``budget/5usd`` or ``budget/$5`` (dollars), ``budget/200k``,
    ``budget/2m`` or ``budget/50000`` (tokens); None when it is not a valid budget label."""
    if not name.startswith(prefix):
        return None
    amount = name[len(prefix) :].strip()
    if amount.lower().endswith("usd") or amount.startswith("$") or amount.endswith("$"):
        usd = _USD.match(amount)
        if usd is None or float(usd.group(1)) <= 0:
            return None
        return Budget(usd=float(usd.group(1)))
    tokens = _TOKENS.match(amount)
    if tokens is None:
        return None
    count = int(float(tokens.group(1)) * _TOKEN_SCALE[tokens.group(2).lower()])
    return Budget(tokens=count) if count > 0 else None


def task_budget(
    role: str | None,
    labels: Iterable[str],
    budgets: BudgetsSettings,
    vocabulary: LabelsSettings,
) -> Budget:
    """The task's budget: its role's (or the default) from ``[budgets]``; a budget label
    replaces the limit it names (dollars or tokens), the smallest when several name one."""
    base = budgets.roles.get(role, budgets.default) if role else budgets.default
    usd, tokens = base.usd, base.tokens
    from_labels = [parse_budget_label(name, vocabulary.budget_prefix) for name in labels]
    label_usd = [b.usd for b in from_labels if b is not None and b.usd is not None]
    label_tokens = [b.tokens for b in from_labels if b is not None and b.tokens is not None]
    if label_usd:
        usd = min(label_usd)
    if label_tokens:
        tokens = min(label_tokens)
    return Budget(usd=usd, tokens=tokens)


@dataclass
class UsageMeter:
    """Usage a run has reported so far, read from its output line by line as it streams.

    Claude Code's ``stream-json`` carries each assistant message's ``usage`` (one message may
    be printed once per content block with the same id: counted once) and, at the end, the
    result's ``total_cost_usd``; Codex's JSON lines carry ``usage`` on each ``turn.completed``
    — Codex can therefore only be measured, and stopped, at the end of a turn. When the CLI
    reports no cost, the cost is ``tokens × price_per_million / 1e6`` and marked estimated.
    """

    format: MeterFormat
    price_per_million: float | None = None
    tokens: int = 0
    reported_cost_usd: float | None = None
    _seen_messages: set[str] = field(default_factory=set)

    def feed(self, line: str) -> None:
        """Count one line of output; anything that is not a usage event is ignored."""
        if self.format == "raw" or not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if self.format == "claude-json":
            self._feed_claude(kind, event)
        elif kind == "turn.completed":
            # Codex: input_tokens already includes the cached ones.
            self.tokens += _usage_tokens(event.get("usage"), ("input_tokens", "output_tokens"))

    def _feed_claude(self, kind: object, event: Mapping[str, object]) -> None:
        if kind == "assistant":
            message = event.get("message")
            if not isinstance(message, dict):
                return
            ident = message.get("id")
            if isinstance(ident, str):
                if ident in self._seen_messages:
                    return
                self._seen_messages.add(ident)
            self.tokens += _usage_tokens(message.get("usage"), _CLAUDE_USAGE_KEYS)
        elif kind == "result":
            cost = event.get("total_cost_usd")
            if isinstance(cost, int | float) and math.isfinite(cost) and cost >= 0:
                self.reported_cost_usd = float(cost)
            total = _usage_tokens(event.get("usage"), _CLAUDE_USAGE_KEYS)
            self.tokens = max(self.tokens, total)

    @property
    def cost_estimated(self) -> bool:
        """The cost is estimated from tokens: the CLI reported none."""
        return self.reported_cost_usd is None

    @property
    def cost_usd(self) -> float | None:
        """The CLI's reported cost, else tokens × price, else None (no price known)."""
        if self.reported_cost_usd is not None:
            return self.reported_cost_usd
        if self.price_per_million is None:
            return None
        return self.tokens * self.price_per_million / 1_000_000

    def over(self, budget: Budget) -> str | None:
        """``over budget: spent X of Y`` once usage passes a limit of ``budget``, else None."""
        if budget.tokens is not None and self.tokens > budget.tokens:
            return f"over budget: spent {self.tokens:,} of {budget.tokens:,} tokens"
        cost = self.cost_usd
        if budget.usd is not None and cost is not None and cost > budget.usd:
            estimated = " (estimated)" if self.cost_estimated else ""
            return f"over budget: spent {format_usd(cost)}{estimated} of {format_usd(budget.usd)}"
        return None


_CLAUDE_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


def _usage_tokens(usage: object, keys: Iterable[str]) -> int:
    if not isinstance(usage, dict):
        return 0
    total = 0
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            total += int(value)
    return total


# --- daily caps -----------------------------------------------------------------------------


def day_start(at: datetime) -> datetime:
    """00:00 UTC of the day ``at`` falls in."""
    utc = at.astimezone(UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def next_day_start(at: datetime) -> datetime:
    """The next 00:00 UTC after ``at``: when a daily cap lifts."""
    return day_start(at) + timedelta(days=1)


def repo_daily_cap(repo: str, budgets: BudgetsSettings) -> float | None:
    """The repository's daily cap in US dollars, or None (no cap)."""
    return budgets.repo_daily_usd_by_repo.get(repo, budgets.repo_daily_usd)


def daily_cap_hold(repo: str, *, spent_today: float, budgets: BudgetsSettings) -> Hold | None:
    """The repository's tasks wait once its day's spend reached its cap, until 00:00 UTC."""
    cap = repo_daily_cap(repo, budgets)
    if cap is None or spent_today < cap:
        return None
    return Hold(
        HoldKind.BUDGET,
        f"daily budget of {format_usd(cap)} for {repo} spent; resumes at 00:00 UTC",
    )


def agent_over_daily_cap(spent_today: float, budgets: BudgetsSettings) -> bool:
    """Whether an agent's day's spend reached ``agent_daily_usd`` (it takes no new task)."""
    cap = budgets.agent_daily_usd
    return cap is not None and spent_today >= cap


def spent_on(day: datetime, spends: Iterable[tuple[datetime, float]]) -> float:
    """The sum of the ``(when, usd)`` spends that fall on ``day``'s UTC date."""
    start = day_start(day)
    end = start + timedelta(days=1)
    return sum(usd for at, usd in spends if start <= at.astimezone(UTC) < end)


def budget_prompt_line(budget: Budget) -> str | None:
    """What the agent is told about its budget, or None when it has none."""
    if not budget.limited:
        return None
    return (
        f"Budget: this task may spend at most {budget.describe()}; the run is stopped when its "
        "usage passes it, so work economically and finish within it."
    )


# --- spend records ----------------------------------------------------------------------------

SPENT_USD = "spent_usd"
SPENT_TOKENS = "spent_tokens"
"""Keys of a task event's ``data`` that record what a run spent: the receipt's note when a run
hands in its work, the failure's transition when a run fails. The event's time puts the spend
on its UTC day and its task on its repository; its actor is the agent."""


@dataclass(frozen=True)
class RunSpend:
    """What one run spent, as its output reported it (``UsageMeter``)."""

    cost_usd: float
    tokens: int
    estimated: bool
    over_budget: bool = False


def spend_data(cost_usd: float, tokens: int, *, estimated: bool) -> dict[str, object]:
    """The ``data`` entries that record a run's spend on its event."""
    return {SPENT_USD: round(cost_usd, 6), SPENT_TOKENS: tokens, "cost_estimated": estimated}


def spends(events: Iterable[TaskEvent]) -> list[tuple[datetime, str, float, int]]:
    """``(when, actor, usd, tokens)`` of every event that records a spend."""
    found = []
    for event in events:
        usd = event.data.get(SPENT_USD)
        if isinstance(usd, int | float):
            tokens = event.data.get(SPENT_TOKENS)
            count = tokens if isinstance(tokens, int) else 0
            found.append((event.at, event.actor, float(usd), count))
    return found


def with_spend(task: Task, cost_usd: float, tokens: int, *, estimated: bool) -> dict[str, object]:
    """The task's changes that add a run's spend to what it spent so far."""
    return {
        "spent_usd": round(task.spent_usd + cost_usd, 6),
        "spent_tokens": task.spent_tokens + tokens,
        "spent_estimated": task.spent_estimated or (estimated and cost_usd > 0),
    }


def read_spend_today(store: Store, *, now: datetime) -> list[SpendToday]:
    """What each repository and each agent spent on ``now``'s UTC day, from the spend recorded
    on the events of the tasks touched that day (the agent is the event's actor)."""
    start = day_start(now)
    by_repo: dict[str, list[float]] = {}
    by_agent: dict[str, list[float]] = {}
    for task in store.list_tasks():
        if task.updated_at < start:
            continue
        for at, actor, usd, tokens in spends(store.events_for(task.id)):
            if at < start:
                continue
            for table, name in ((by_repo, task.repo), (by_agent, actor.removeprefix("agent:"))):
                row = table.setdefault(name, [0.0, 0.0])
                row[0] += usd
                row[1] += tokens
    return [
        SpendToday(kind, name, round(usd, 6), int(tokens))
        for kind, table in (("repo", by_repo), ("agent", by_agent))
        for name, (usd, tokens) in sorted(table.items())
    ]


def agents_over_daily_cap(spent: Iterable[SpendToday], budgets: BudgetsSettings) -> frozenset[str]:
    """The agents whose day's spend reached ``budgets.agent_daily_usd``: they take no new task
    until 00:00 UTC."""
    return frozenset(
        row.name for row in spent if row.kind == "agent" and agent_over_daily_cap(row.usd, budgets)
    )


def agent_cap_reason(agents: Iterable[str], budgets: BudgetsSettings) -> str:
    """Why a task that only capped agents could take waits."""
    names = ", ".join(sorted(agents))
    cap = format_usd(budgets.agent_daily_usd or 0.0)
    return f"daily budget of {cap} per agent spent by {names}; resumes at 00:00 UTC"
