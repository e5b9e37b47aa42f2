"""Prometheus metrics for the daemon, rendered at ``GET /metrics``.

One :class:`Metrics` object per process (no global registry, so tests get their own). The
loop, the webhook receiver and the Forgejo gateway's ``on_call`` hook feed it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# A sample, HELP or TYPE line of a ``…_created`` series.
_CREATED = re.compile(rb"^(?:# (?:HELP|TYPE) )?agent_fleet_\w+_created[\s{]")


@dataclass(frozen=True)
class SpendToday:
    """What one repository or agent spent this UTC day (``kind``: ``repo`` or ``agent``)."""

    kind: str
    name: str
    usd: float
    tokens: int


class _SpendCollector(Collector):
    """The day's spend per repository and per agent, read at scrape time."""

    def __init__(self, read: Callable[[], Iterable[SpendToday]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        rows = list(self._read())
        for kind in ("repo", "agent"):
            usd = GaugeMetricFamily(
                f"agent_fleet_{kind}_spend_today_usd",
                f"US dollars spent this UTC day by {kind} (reported or estimated costs).",
                labels=[kind],
            )
            tokens = GaugeMetricFamily(
                f"agent_fleet_{kind}_spend_today_tokens",
                f"Tokens used this UTC day by {kind}.",
                labels=[kind],
            )
            for row in rows:
                if row.kind == kind:
                    usd.add_metric([row.name], row.usd)
                    tokens.add_metric([row.name], float(row.tokens))
            yield usd
            yield tokens


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(
            "agent_fleet_queue_depth",
            "Keys waiting in the work queue (ready and scheduled).",
            registry=r,
        )
        self.queue_processing = Gauge(
            "agent_fleet_queue_processing", "Keys being reconciled right now.", registry=r
        )
        self.reconciles = Counter(
            "agent_fleet_reconciles",
            "Reconciles by controller and outcome (ok, requeued, waiting, stalled, error).",
            ["controller", "outcome"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "agent_fleet_reconcile_duration_seconds",
            "Time one reconcile took, by controller.",
            ["controller"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "agent_fleet_webhook_deliveries",
            "Forgejo webhook deliveries by event and result.",
            ["event", "result"],
            registry=r,
        )
        self.forgejo_calls = Counter(
            "agent_fleet_forgejo_api_calls",
            "Forgejo API calls by operation and HTTP status (0: no response).",
            ["operation", "status"],
            registry=r,
        )
        self.last_resync = Gauge(
            "agent_fleet_last_resync_timestamp_seconds",
            "Unix time of the last completed resync, by kind (incremental, full).",
            ["kind"],
            registry=r,
        )
        self.agents = Gauge(
            "agent_fleet_agents", "Registered agents by status.", ["status"], registry=r
        )

    def bind_queue(self, depth: Callable[[], float], processing: Callable[[], float]) -> None:
        """Read the queue's sizes at scrape time rather than tracking every change."""
        self.queue_depth.set_function(depth)
        self.queue_processing.set_function(processing)

    def bind_spend(self, read: Callable[[], Iterable[SpendToday]]) -> None:
        """Report the day's spend per repository and agent, read at scrape time."""
        self.registry.register(_SpendCollector(read))

    def count_forgejo_call(self, operation: str, status: int) -> None:
        self.forgejo_calls.labels(operation=operation, status=str(status)).inc()

    def count_webhook(self, event: str, result: str) -> None:
        self.webhook_deliveries.labels(event=event or "unknown", result=result).inc()

    def render(self) -> bytes:
        """The text exposition without the ``*_created`` series prometheus_client adds to
        every counter and histogram: they double the output and no alert reads them."""
        return b"".join(
            line
            for line in generate_latest(self.registry).splitlines(keepends=True)
            if not _CREATED.match(line)
        )
