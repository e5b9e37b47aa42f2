"""The ``[budgets]`` section: how much a task may spend (per role, overridden per issue by a
budget label) and how much a repository, and optionally an agent, may spend per UTC day.

Read through ``reconciler/fleet/budgets.py`` (the pure budget rules); see ``docs/budgets.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, PositiveFloat, PositiveInt

from reconciler.settings.values import RoleName, Section


class TaskBudget(Section):
    """A task's limit: US dollars and/or tokens (input, cached included, plus output)."""

    usd: PositiveFloat | None = Field(
        default=None, description="Most a task may cost in US dollars; unset: no dollar limit."
    )
    tokens: PositiveInt | None = Field(
        default=None, description="Most tokens a task may use; unset: no token limit."
    )


class BudgetsSettings(Section):
    """Spending limits per task and per UTC day (docs/budgets.md)."""

    default: TaskBudget = Field(
        default_factory=TaskBudget,
        description="The budget of a task whose role has none of its own in budgets.roles.",
    )
    roles: Mapping[RoleName, TaskBudget] = Field(
        default_factory=dict,
        description="Budget per role, one [budgets.roles.<role>] table each; a budget label on "
        "the issue overrides it.",
    )
    repo_daily_usd: PositiveFloat | None = Field(
        default=None,
        description="Most a repository's tasks may spend per UTC day in US dollars; once spent, "
        "its waiting tasks are held until 00:00 UTC (running ones finish); unset: no cap.",
    )
    repo_daily_usd_by_repo: Mapping[str, PositiveFloat] = Field(
        default_factory=dict,
        description='Daily cap per repository (`"org/repo" = 20`), instead of repo_daily_usd.',
    )
    agent_daily_usd: PositiveFloat | None = Field(
        default=None,
        description="Most one agent's tasks may spend per UTC day in US dollars; once spent, "
        "tasks are not placed on it until 00:00 UTC; unset: no cap.",
    )
