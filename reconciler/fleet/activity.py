"""What the fleet got done and what it cost, over recent hours and days: the fleet page's charts.

``webhook/dashboard.py`` calls :func:`read_activity` on every update of the fleet page. It reads
the live tasks, their events and their receipts from the store (one writer each: the
controllers and the pull queue; this module only reads) and sums them with the pure
:func:`summarise`: tasks finished per hour (completed, failed) and spend per day (the cost
and tokens the agents' receipts report).

Only tasks still in the live store count (finished tasks move to the archive after
``store.archive_after``, a week by default), so a window longer than that undercounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from reconciler.models import Receipt, Task, TaskEvent, TaskState
from reconciler.store import Store

DEFAULT_HOURS = 12
DEFAULT_DAYS = 7


@dataclass(frozen=True)
class HourCount:
    """Tasks that finished in the hour starting at ``start`` (UTC)."""

    start: datetime
    completed: int
    failed: int


@dataclass(frozen=True)
class DaySpend:
    """What receipts handed in on ``day`` (UTC) say the agents spent."""

    day: date
    cost_usd: float
    tokens: int


@dataclass(frozen=True)
class Activity:
    """Throughput per hour (oldest first, the current hour last) and spend per day."""

    hours: tuple[HourCount, ...]
    days: tuple[DaySpend, ...]

    @property
    def completed(self) -> int:
        return sum(h.completed for h in self.hours)

    @property
    def cost_usd(self) -> float:
        return sum(d.cost_usd for d in self.days)


def _hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def summarise(
    events: Iterable[TaskEvent],
    receipts: Iterable[Receipt],
    *,
    now: datetime,
    hours: int = DEFAULT_HOURS,
    days: int = DEFAULT_DAYS,
) -> Activity:
    """Count transitions to completed/failed per hour over the last ``hours`` hours and sum
    receipts' cost and tokens per day over the last ``days`` days (pure: ``now`` is given)."""
    if hours < 1 or days < 1:
        raise ValueError("hours and days must be at least 1")
    current = _hour_of(now)
    starts = [current - timedelta(hours=hours - 1 - i) for i in range(hours)]
    completed = dict.fromkeys(starts, 0)
    failed = dict.fromkeys(starts, 0)
    for event in events:
        if event.kind != "transition":
            continue
        bucket = _hour_of(event.at)
        if event.to_state is TaskState.COMPLETED and bucket in completed:
            completed[bucket] += 1
        elif event.to_state is TaskState.FAILED and bucket in failed:
            failed[bucket] += 1
    today = now.astimezone(UTC).date()
    day_list = [today - timedelta(days=days - 1 - i) for i in range(days)]
    cost = dict.fromkeys(day_list, 0.0)
    tokens = dict.fromkeys(day_list, 0)
    for receipt in receipts:
        day = receipt.submitted_at.astimezone(UTC).date()
        if day in cost:
            cost[day] += receipt.cost_usd
            tokens[day] += receipt.tokens
    return Activity(
        hours=tuple(HourCount(s, completed[s], failed[s]) for s in starts),
        days=tuple(DaySpend(d, cost[d], tokens[d]) for d in day_list),
    )


def read_activity(
    store: Store,
    tasks: Sequence[Task],
    *,
    now: datetime,
    hours: int = DEFAULT_HOURS,
    days: int = DEFAULT_DAYS,
) -> Activity:
    """:func:`summarise` over the events and receipts of ``tasks`` (the live tasks, as
    :meth:`~reconciler.fleet.agents.Fleet.tasks` lists them) touched within the window."""
    since = now - max(timedelta(hours=hours), timedelta(days=days))
    recent = [t for t in tasks if t.updated_at >= since]
    events = [e for t in recent for e in store.events_for(t.id)]
    receipts = [r for t in recent for r in store.receipts_for(t.id)]
    return summarise(events, receipts, now=now, hours=hours, days=days)


__all__ = ["Activity", "DaySpend", "HourCount", "read_activity", "summarise"]
