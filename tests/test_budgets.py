"""Budget rules: budget labels, role defaults, the streaming usage meter, and the daily cap
hold that lifts at the next 00:00 UTC (time injected)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from reconciler.fleet.budgets import (
    Budget,
    UsageMeter,
    budget_prompt_line,
    daily_cap_hold,
    next_day_start,
    parse_budget_label,
    spent_on,
    task_budget,
)
from reconciler.fleet.holds import HoldKind
from reconciler.settings import BudgetsSettings, LabelsSettings, TaskBudget

VOCAB = LabelsSettings()


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("budget/5usd", Budget(usd=5.0)),
        ("budget/2.5USD", Budget(usd=2.5)),
        ("budget/$3", Budget(usd=3.0)),
        ("budget/200k", Budget(tokens=200_000)),
        ("budget/2m", Budget(tokens=2_000_000)),
        ("budget/1.5M", Budget(tokens=1_500_000)),
        ("budget/50000", Budget(tokens=50_000)),
        ("budget/0usd", None),
        ("budget/lots", None),
        ("budget/-5usd", None),
        ("fleet/5usd", None),
    ],
)
def test_budget_labels_name_dollars_or_tokens(label: str, expected: Budget | None) -> None:
    """`budget/5usd` is dollars, `budget/200k` and `budget/2m` are tokens; junk is no budget."""
    assert parse_budget_label(label, VOCAB.budget_prefix) == expected


def test_a_budget_label_overrides_the_role_default_for_the_limit_it_names() -> None:
    """The role's budget applies; a dollar label replaces only the dollar limit."""
    budgets = BudgetsSettings(
        default=TaskBudget(usd=1.0),
        roles={"developer": TaskBudget(usd=10.0, tokens=500_000)},
    )
    assert task_budget("developer", [], budgets, VOCAB) == Budget(usd=10.0, tokens=500_000)
    assert task_budget("review", [], budgets, VOCAB) == Budget(usd=1.0)
    assert task_budget(None, ["budget/3usd"], budgets, VOCAB) == Budget(usd=3.0)
    assert task_budget("developer", ["budget/3usd", "budget/5usd"], budgets, VOCAB) == Budget(
        usd=3.0, tokens=500_000
    )


def test_raising_a_budget_is_more_in_one_limit_and_less_in_none() -> None:
    """Only a raise (which requeues an over-budget task) counts as raised."""
    assert Budget(usd=10).raised_from(Budget(usd=5))
    assert Budget(usd=None).raised_from(Budget(usd=5))
    assert not Budget(usd=5).raised_from(Budget(usd=5))
    assert not Budget(usd=10, tokens=1).raised_from(Budget(usd=5, tokens=2))


def _claude_assistant(msg_id: str, inp: int, out: int) -> str:
    usage = {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": 0}
    return json.dumps({"type": "assistant", "message": {"id": msg_id, "usage": usage}})


def test_meter_counts_claude_stream_usage_once_per_message_and_stops_past_tokens() -> None:
    """A message repeated per content block is counted once; passing the limit says so."""
    meter = UsageMeter("claude-json")
    meter.feed(json.dumps({"type": "system", "subtype": "init"}))
    meter.feed(_claude_assistant("m1", 100, 20))
    meter.feed(_claude_assistant("m1", 100, 20))
    assert meter.tokens == 120
    assert meter.over(Budget(tokens=150)) is None
    meter.feed(_claude_assistant("m2", 30, 10))
    assert meter.over(Budget(tokens=150)) == "over budget: spent 160 of 150 tokens"


def test_meter_prefers_claudes_reported_cost_over_an_estimate() -> None:
    """The result's total_cost_usd is the cost, not estimated."""
    meter = UsageMeter("claude-json", price_per_million=6.0)
    meter.feed(_claude_assistant("m1", 1_000_000, 0))
    assert meter.cost_estimated and meter.cost_usd == pytest.approx(6.0)
    meter.feed(json.dumps({"type": "result", "total_cost_usd": 0.5, "usage": {}}))
    assert not meter.cost_estimated and meter.cost_usd == 0.5
    assert meter.over(Budget(usd=0.25)) == "over budget: spent $0.50 of $0.25"


def test_meter_reads_codex_usage_at_turn_ends_and_estimates_cost() -> None:
    """Codex reports tokens per turn and no cost: the cost is tokens × price, estimated."""
    meter = UsageMeter("codex-jsonl", price_per_million=2.5)
    meter.feed(json.dumps({"type": "turn.started"}))
    meter.feed("not json")
    assert meter.tokens == 0
    usage = {"input_tokens": 300_000, "cached_input_tokens": 100_000, "output_tokens": 100_000}
    meter.feed(json.dumps({"type": "turn.completed", "usage": usage}))
    assert meter.tokens == 400_000
    assert meter.over(Budget(usd=0.5)) == "over budget: spent $1.00 (estimated) of $0.50"


def test_meter_without_a_price_never_stops_on_dollars() -> None:
    """With no reported cost and no price, a dollar limit cannot be judged (tokens still can)."""
    meter = UsageMeter("codex-jsonl")
    meter.feed(json.dumps({"type": "turn.completed", "usage": {"input_tokens": 10**9}}))
    assert meter.cost_usd is None
    assert meter.over(Budget(usd=0.01)) is None


def test_daily_cap_holds_once_spent_and_says_when_it_resumes() -> None:
    """Spend at the cap holds the repository's tasks, saying why and until when."""
    budgets = BudgetsSettings(repo_daily_usd=50, repo_daily_usd_by_repo={"org/cheap": 5})
    assert daily_cap_hold("org/repo", spent_today=49.99, budgets=budgets) is None
    hold = daily_cap_hold("org/repo", spent_today=50.0, budgets=budgets)
    assert hold is not None and hold.kind == HoldKind.BUDGET
    assert hold.reason == "daily budget of $50.00 for org/repo spent; resumes at 00:00 UTC"
    assert daily_cap_hold("org/cheap", spent_today=5.0, budgets=budgets) is not None
    assert daily_cap_hold("org/x", spent_today=1e9, budgets=BudgetsSettings()) is None


def test_the_days_spend_resets_at_the_utc_day_boundary() -> None:
    """Spend from yesterday does not count today, so the hold lifts at 00:00 UTC."""
    evening = datetime(2026, 12, 5, 23, 59, tzinfo=UTC)
    spends = [(datetime(2026, 12, 5, 10, tzinfo=UTC), 60.0)]
    budgets = BudgetsSettings(repo_daily_usd=50)
    assert next_day_start(evening) == datetime(2026, 12, 6, tzinfo=UTC)
    today = spent_on(evening, spends)
    assert daily_cap_hold("org/repo", spent_today=today, budgets=budgets) is not None
    tomorrow = spent_on(next_day_start(evening), spends)
    assert tomorrow == 0
    assert daily_cap_hold("org/repo", spent_today=tomorrow, budgets=budgets) is None


def test_the_prompt_line_states_the_budget() -> None:
    """The agent is told its budget; no budget, no line."""
    assert budget_prompt_line(Budget()) is None
    line = budget_prompt_line(Budget(usd=5, tokens=200_000))
    assert line is not None and "$5.00 and 200,000 tokens" in line


def test_the_prompt_tells_the_agent_its_budget() -> None:
    """build_prompt states the task's budget in a section of its own; no budget, no section."""
    from reconciler.forgejo.types import Issue, IssueState
    from reconciler.run.prompt import build_prompt

    at = datetime(2026, 12, 5, tzinfo=UTC)
    issue = Issue(id=1, number=3, title="Add notes", body="## Goal\nAdd notes.",
                  state=IssueState.OPEN, labels=("fleet/task",), author="alice", assignees=(),
                  created_at=at, updated_at=at, closed_at=None, is_pull=False, html_url="")  # fmt: skip

    def prompt(budget: Budget | None) -> str:
        return build_prompt(issue=issue, comments=(), trusted={"alice"}.__contains__,
                            repo="acme/tool", branch="task/3-x", budget=budget)  # fmt: skip

    stated = prompt(Budget(usd=5.0, tokens=200_000))
    assert "## Budget" in stated and "at most $5.00 and 200,000 tokens" in stated
    assert "## Budget" not in prompt(Budget())
    assert "## Budget" not in prompt(None)
