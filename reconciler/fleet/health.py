"""The health of an agent's runs: failed runs counted, and the automatic drain.

Pure functions over an :class:`~reconciler.models.Agent`, called by the registry service
(``reconciler/fleet/agents.py``) under the agent's lock when a run is reported failed (a pull
agent's failure report, an ssh run's failure) and when a run succeeds (a receipt accepted, in
``reconciler/fleet/queue.py``), and when an operator ends a drain.

Every failed run counts one error in the agent's stats and one more run in its failing streak;
at ``api.drain_after_failed_runs`` failed runs in a row the agent is drained automatically — it
keeps its tasks, takes no new ones, and its status says why. A successful run, or an operator's
undrain, ends the streak and the automatic drain. A drain a person or the agent asked for is
never ended by a success.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.fleet.records import with_status
from reconciler.models import Agent, AgentStatus, ExecutionMode

REASON_MAX = 200


def auto_drain_reason(runs: int, last: str) -> str:
    """What an automatically drained agent's status says."""
    last = " ".join(last.split())[:REASON_MAX]
    return f"drained automatically: {runs} runs failed in a row (last: {last})"


def count_run_failure(agent: Agent, *, reason: str, drain_after: int, now: datetime) -> Agent:
    """``agent`` after one more failed run: an error counted, the streak longer, and drained
    when the streak reaches ``drain_after`` (0: never)."""
    runs = agent.failing_runs + 1
    stats = agent.stats.model_copy(update={"errors": agent.stats.errors + 1})
    changed = agent.model_copy(update={"stats": stats, "failing_runs": runs})
    pull = agent.mode is ExecutionMode.PULL  # ssh hosts have their health checks instead
    if pull and drain_after and runs >= drain_after and not agent.drain_requested:
        changed = changed.model_copy(update={"drain_requested": True, "auto_drained": True})
        if agent.status is AgentStatus.ONLINE:
            changed = with_status(
                changed, AgentStatus.DRAINING, reason=auto_drain_reason(runs, reason), now=now
            )
    elif agent.auto_drained and agent.status is AgentStatus.DRAINING:
        changed = changed.model_copy(update={"status_reason": auto_drain_reason(runs, reason)})
    return changed


def count_run_success(agent: Agent, *, now: datetime) -> Agent:
    """``agent`` after a successful run: the streak over, an automatic drain ended."""
    if not agent.failing_runs and not agent.auto_drained:
        return agent
    changed = agent.model_copy(update={"failing_runs": 0})
    if agent.auto_drained:
        changed = end_auto_drain(changed, now=now)
    return changed


def end_auto_drain(agent: Agent, *, now: datetime) -> Agent:
    """``agent`` with its automatic drain (if any) and failing streak cleared."""
    changed = agent.model_copy(update={"failing_runs": 0})
    if not agent.auto_drained:
        return changed
    changed = changed.model_copy(update={"auto_drained": False, "drain_requested": False})
    if agent.status is AgentStatus.DRAINING:
        changed = with_status(changed, AgentStatus.ONLINE, reason="", now=now)
    return changed


__all__ = [
    "auto_drain_reason",
    "count_run_failure",
    "count_run_success",
    "end_auto_drain",
]
