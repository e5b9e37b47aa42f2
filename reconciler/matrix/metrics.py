"""The Matrix metrics, registered on the process's Prometheus registry.

Built by the daemon (``webhook/daemon.py``) on ``Metrics.registry`` and fed by the Matrix
thread: outbox depth (read at scrape time), deliveries by result, commands by name and outcome.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class MatrixMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outbox_depth = Gauge(
            "agent_fleet_matrix_outbox_depth",
            "Matrix messages waiting in the outbox.",
            registry=registry,
        )
        self.deliveries = Counter(
            "agent_fleet_matrix_deliveries",
            "Matrix outbox deliveries by result (delivered, skipped, failed, rate_limited, dropped).",
            ["result"],
            registry=registry,
        )
        self.commands = Counter(
            "agent_fleet_matrix_commands",
            "!fleet commands by name and outcome (ok, refused, usage, error).",
            ["command", "outcome"],
            registry=registry,
        )

    def bind_depth(self, depth: Callable[[], float]) -> None:
        self.outbox_depth.set_function(depth)

    def count_delivery(self, result: str) -> None:
        self.deliveries.labels(result=result).inc()

    def count_command(self, command: str, outcome: str) -> None:
        self.commands.labels(command=command, outcome=outcome).inc()
