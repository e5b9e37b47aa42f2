"""The crash and fault trials hold in a bounded sample (the scripts print figures for 30+).

Runs ``bench/crash_trials.py`` and ``bench/fault_trials.py`` for a few trials each: the daemon
as a process over the scripted flow, SIGKILLed at random points, or behind a proxy injecting
5xx, 429, resets, delays past the client timeout and a forge down at first start. Each must
end with every invariant holding (no duplicate or stale comment, no double dispatch, every
issue done, no stuck repository, no lost receipt). The exit status counts the safety
invariants; an issue not done by a trial's deadline is reported, not failed: on a busy CI
machine a trial's deadline says nothing about safety (docs/guarantees.md).
"""

from __future__ import annotations

import pytest

from bench import crash_trials, fault_trials


@pytest.mark.slow
def test_sigkilled_daemon_keeps_every_invariant_over_a_few_crash_trials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three trials, up to three SIGKILLs each: no safety invariant breaks across restarts."""
    code = crash_trials.main(["--trials", "3", "--kills", "3", "--seed", "101"])
    out = capsys.readouterr().out
    assert code == 0, out


@pytest.mark.slow
def test_a_faulty_forge_breaks_no_invariant_over_a_few_fault_trials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two trials behind the fault proxy (delays on comment writes included): none breaks."""
    code = fault_trials.main(["--trials", "2", "--seed", "201"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "forge down" in out
