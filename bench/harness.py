"""What the benchmark scripts in bench/ share: the forked load client, connection threads that
start together, agents registered through the API, percentiles, and the PASS/MISS table with
its notes.

Imported by ``bench/webhook.py``, ``bench/heartbeat.py``, ``bench/dispatch.py``,
``bench/resync.py`` and ``bench/store.py``; nothing outside bench/ uses it.

Importing this module also takes bench/ off ``sys.path``. A script run as
``python bench/webhook.py`` has bench/ as ``sys.path[0]``, which is how it finds this module —
and how its own name would shadow the ``webhook`` package it measures. So each script imports
the harness before any of the project's modules: the one import finds the harness through
bench/ and, as it runs, drops bench/, and every import after it resolves to the installed
packages. The module object stays in ``sys.modules`` (and in the forked load client, which
inherits it), so nothing needs bench/ on the path again. This module imports only the
standard library, so nothing it imports can be shadowed either. An import sorter keeps the
order: ``harness`` sorts as a third-party name, before the project's first-party packages.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import resource
import statistics
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Generic, TypeVar

BENCH = Path(__file__).resolve().parent
# Every entry naming bench/, not only the first: "" (the working directory) may be bench/ too.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]

JobT = TypeVar("JobT")
RunT = TypeVar("RunT")

# One table row: measure, result, target, and PASS/MISS (empty for rows reported for information).
Row = tuple[str, str, str, str]


# --- the load client (a forked process) ---------------------------------------------------


def _serve_jobs(conn: Connection, drive: Callable[[JobT], RunT]) -> None:
    """The client process: run each job sent, answer with what ``drive`` measured; stop on None."""
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(drive(job))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadClient(Generic[JobT, RunT]):
    """A client process forked at start, which runs ``drive(job)`` for each job it is sent.

    Create it before any server thread starts: a fork copies only the forking thread, and a
    server's threads (or a lock one of them held) must not be copied half-way. Client and
    server then share no interpreter lock. Jobs and what ``drive`` returns cross a pipe, so
    both must pickle.
    """

    def __init__(self, drive: Callable[[JobT], RunT], *, name: str) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_jobs, args=(child, drive), name=name, daemon=True
        )
        self._process.start()
        child.close()

    def run(self, job: JobT, *, timeout: float) -> tuple[RunT, float]:
        """Run ``job``; what it measured, and the CPU seconds this process spent meanwhile.

        This process is the one serving, so that CPU time is the server's cost of the run.
        ``timeout`` bounds the wait for the answer: a stuck server ends the bench.
        """
        before = _cpu_seconds()
        self._conn.send(job)
        if not self._conn.poll(timeout):
            raise SystemExit("the load client did not answer; is the server stuck?")
        run: RunT = self._conn.recv()
        return run, _cpu_seconds() - before

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass  # the process is gone already
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)


class ConnectionThreads:
    """One thread per client connection, all released at the same instant by a barrier.

    Each connection thread calls ``ready()`` once it is set up (its keep-alive connection open
    and warmed up), and reads ``started`` after that; ``run`` starts the threads, completes the
    barrier and waits for them. A thread that fails before it is ready must still call
    ``ready()`` (from a ``finally``), or the others wait until the barrier breaks.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.started = 0.0
        self._barrier = threading.Barrier(count + 1)

    def ready(self) -> None:
        self._barrier.wait()

    def run(
        self, connection: Callable[[int], None], *, timeout: float, lead: float | None = None
    ) -> float:
        """Run ``connection(n)`` for each connection; the ``perf_counter`` time they started.

        ``lead`` None: the start is when the last thread became ready (closed-loop runs time
        from there). Else the start is ``lead`` seconds after the threads were launched, set
        before they are released, so runs on a schedule all count from the same instant.
        """
        threads = [
            threading.Thread(target=connection, args=(n,), daemon=True) for n in range(self.count)
        ]
        for thread in threads:
            thread.start()
        if lead is not None:
            self.started = time.perf_counter() + lead
        self._barrier.wait()
        if lead is None:
            self.started = time.perf_counter()
        for thread in threads:
            thread.join(timeout)
        return self.started


# --- the agent API ----------------------------------------------------------------------

AGENT_REGISTER_PATH = "/api/v1/agents/register"


def register_agents(
    port: int, registrations: Iterable[Mapping[str, object]], *, enrolment: str
) -> list[tuple[str, str]]:
    """Register agents on the loopback server on ``port``, one request each; their (id, token).

    ``registrations`` are the request bodies; ``enrolment`` is the secret the server enrols
    agents with. A refused registration ends the bench.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    agents = []
    try:
        for n, body in enumerate(registrations):
            conn.request(
                "POST",
                AGENT_REGISTER_PATH,
                body=json.dumps(body),
                headers={
                    "Authorization": f"Bearer {enrolment}",
                    "Content-Type": "application/json",
                },
            )
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 201:
                raise SystemExit(f"registering agent {n} failed: {response.status} {answer}")
            agents.append((answer["agent_id"], answer["token"]))
    finally:
        conn.close()
    return agents


# --- reporting ------------------------------------------------------------------------------


def percentile_ms(samples: Iterable[float], q: int) -> float:
    """The ``q``-th percentile of ``samples`` (seconds) in milliseconds; NaN with none."""
    values = [s * 1000 for s in samples]
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def print_table(rows: list[Row]) -> None:
    """The results table: a header, a rule under the first three columns, a row per measure."""
    header = ("measure", "result", "target", "")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths[:3]))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def machine_speed_ms() -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (a million additions),
    the best of five: CPU times and latencies measured here scale with it, so two runs'
    figures compare once each is read beside its own."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for step in range(1_000_000):
            total += step
        best = min(best, time.perf_counter() - started)
    return best * 1000


def speed_note(before: float, after: float) -> str:
    """The note that says how fast the machine was around the run (``machine_speed_ms``)."""
    return (
        f"Machine speed: a fixed pure-Python loop (a million additions, best of five) took "
        f"{before:.0f} ms before the run and {after:.0f} ms after it; CPU per task and "
        "latencies grow with it, so runs on a slower (or busier) machine of the same kind "
        "read higher."
    )


def print_notes(notes: Iterable[str]) -> None:
    """The notes under the table, after a blank line, each wrapped to 96 columns."""
    print("\n" + "\n".join(textwrap.fill(note, width=96) for note in notes))
