"""The fuzzers of bench/fuzz.py in their bounded CI mode: hypothesis cases against the agent
API (from its OpenAPI document) and the webhook receiver, with no 5xx, every error JSON, and
no refused request changing state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_fuzzers_find_no_5xx_and_no_state_change_from_refused_input() -> None:
    """300 generated cases per surface: every row of the fuzzer's table passes."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--quick"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.endswith(("PASS", "MISS"))]
    assert len(rows) == 8 and all(row.endswith("PASS") for row in rows), done.stdout
