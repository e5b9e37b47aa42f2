"""The benchmarks in bench/ still run: each in its small ``--quick`` mode, as a user runs it.

Only that they finish and print their table is checked here; the numbers and their targets
are the benchmarks' own business (no timing assertion belongs in the suite).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A table row ends in its verdict; info rows have none.
VERDICT = re.compile(r"\s(PASS|MISS)$", re.MULTILINE)


def run_bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        cwd=ROOT,
        check=False,  # the exit status is asserted below, with the bench's error output
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def rows_of(output: str) -> dict[str, str]:
    """The table's rows by measure name (the first column, up to two spaces)."""
    lines = output.splitlines()
    assert lines[0].split() == ["measure", "result", "target"], output
    table = lines[2 : lines.index("")] if "" in lines else lines[2:]
    return {line.split("  ")[0]: line for line in table}


def test_webhook_bench_prints_latency_and_throughput_against_targets() -> None:
    """bench/webhook.py --quick serves both endpoints and prints each target with a verdict."""
    output = run_bench("webhook.py")
    rows = rows_of(output)
    assert "<= 5 ms" in rows["receiver, 2 conns: p99"]
    assert ">= 0.7x bare" in rows["receiver, 2 conns: throughput"]
    assert "receiver, 64 conns: p50 / p99" in rows
    assert len(VERDICT.findall(output)) == 2
    assert "1 key(s) waiting" in output  # every delivery was accepted and deduplicated


def test_webhook_bench_runs_with_the_payload_the_sandbox_renders() -> None:
    """Without a recorded payload (a fresh clone) the bench sends the sandbox's delivery."""
    output = run_bench("webhook.py", "--rendered")
    assert "rendered by the in-memory Forgejo" in output
    assert "receiver, 2 conns: p99" in rows_of(output)


def test_resync_bench_prints_call_counts_against_targets() -> None:
    """bench/resync.py --quick counts the calls of each resync and webhook reconcile."""
    output = run_bench("resync.py")
    rows = rows_of(output)
    assert "<= 25 calls" in rows[next(name for name in rows if name.startswith("full resync"))]
    assert "<= 2 calls" in rows["incremental resync, nothing changed"]
    unchanged = next(name for name in rows if name.startswith("full resync + its reconciles"))
    assert "<= 30 calls" in rows[unchanged]
    assert "<= 3 calls" in rows["webhook reconcile, new labelled issue (an agent online)"]
    assert any(name.startswith("webhook reconcile, settled") for name in rows)
    assert len(VERDICT.findall(output)) >= 7


def test_heartbeat_bench_prints_throughput_and_latency_against_targets() -> None:
    """bench/heartbeat.py --quick registers agents, heartbeats them and checks soft state."""
    output = run_bench("heartbeat.py")
    rows = rows_of(output)
    assert ">= 1,000/s" in rows["capacity, 4 conns back to back: heartbeats/s"]
    assert "<= 20 ms" in rows["open loop, 200/s offered: p99"]
    assert len(VERDICT.findall(output)) == 2
    assert "20 online, 0 stop orders, state file untouched" in output


def test_dispatch_bench_prints_dequeue_latency_doubles_and_webhook_to_assigned() -> None:
    """bench/dispatch.py --quick: pull agents dequeue (burst and polling), nothing is handed out
    twice, and a labelled issue's webhook is timed to its assignment on an ssh host."""
    output = run_bench("dispatch.py")
    rows = rows_of(output)
    assert "<= 20 ms" in rows["polling, 10 agents x 1/s: p99"]
    assert re.search(
        r"\s0 of \d+ tasks handed out", rows["double assignments (answers + event log)"]
    )
    assert "<= 50 ms" in rows["webhook -> assigned, labels written: p50"]
    assert len(VERDICT.findall(output)) == 3


def test_store_bench_prints_the_write_and_dequeue_curve_and_observe_against_targets() -> None:
    """bench/store.py --quick prints put_task p50 and dequeue p99 at each live size, the
    largest/smallest put_task ratio and observe(), each beside its target."""
    output = run_bench("store.py")
    rows = rows_of(output)
    for size in ("100", "300"):
        assert "<= 3 ms" in rows[f"put_task p50, {size} live"]
        assert "<= 20 ms" in rows[f"dequeue p99, {size} live, 10 polling agents"]
    assert "<= 1.5" in rows["put_task p50 ratio, 300/100 live"]
    assert "<= 5 ms" in rows["observe() p50, 20 agents + 300 live"]
    assert len(VERDICT.findall(output)) >= 11


def test_flow_bench_drives_issues_to_done_and_prints_the_flow_figures_against_targets() -> None:
    """bench/flow.py --quick: labelled issues through pull agents over HTTP to done (a person
    merging each PR); every issue is done and each figure is printed beside its target."""
    output = run_bench("flow.py")
    rows = rows_of(output)
    assert re.search(r"\s6 of 6 \(3 agents\)", rows["issues done"]), output
    assert "<= 10 s" in rows["labelled -> done: p50"]
    assert "<= 50 ms" in rows["daemon CPU per task"]
    assert "<= 10" in rows["Forgejo reads per task (daemon)"]
    assert "<= 5" in rows["Forgejo writes per task (daemon)"]
    assert "tasks/min" in rows and "labelled -> done: p99 (min)" in rows
    assert "status/ label writes after done" in rows
    assert len(VERDICT.findall(output)) == 6
