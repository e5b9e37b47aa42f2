"""Crash trials: SIGKILL the daemon at random points of the scripted flow, restart, check.

Each trial runs the flow of ``bench/trials.py`` (a few labelled issues worked by the local
demo agent, a person approving and merging every pull request) with the daemon as its own
process, kills it with SIGKILL (its agent runs with it) after a random 0.1–1.5 s, restarts it,
a few times over, then lets it finish and checks the invariants: one status and one result
comment per issue, one PR and one branch per task, every issue done, no lost receipt.

    python bench/crash_trials.py                 # 30 trials (the acceptance figure)
    python bench/crash_trials.py --trials 3      # what CI runs through tests/test_trials.py

Prints each trial's outcome and a summary next to the target (0 of everything).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trials import Trial, Violations, trial_forge


def crash_trial(seed: int, *, kills: int, deadline: float) -> tuple[Violations, int]:
    """One trial; returns what it found and how many SIGKILLs it dealt."""
    rng = random.Random(seed)
    with trial_forge() as (sandbox, root):
        trial = Trial(sandbox, root, sandbox.url)
        try:
            trial.file_issues()
            trial.daemon.start()
            dealt = 0
            next_kill = time.monotonic() + rng.uniform(0.1, 1.5)

            def disturb() -> None:
                nonlocal dealt, next_kill
                if dealt < kills and time.monotonic() >= next_kill:
                    trial.daemon.kill()
                    dealt += 1
                    trial.daemon.start()
                    next_kill = time.monotonic() + rng.uniform(0.1, 1.5)

            trial.drive(until=time.monotonic() + deadline, disturb=disturb)
            # The last restart finishes its work (the final status comment follows the
            # receipt) before anything is looked at; check() then stops it.
            found = trial.check(settle=3.0)
            if found.total():
                print(trial.log_tail(), flush=True)
            return found, dealt
        finally:
            trial.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SIGKILL the daemon during a scripted flow.")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per trial")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per trial")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    failed = 0
    kills = 0
    totals = Violations()
    for n in range(args.trials):
        found, dealt = crash_trial(args.seed + n, kills=args.kills, deadline=args.deadline)
        kills += dealt
        for name, items in vars(found).items():
            getattr(totals, name).extend(items)
        verdict = "ok" if found.total() == 0 else "VIOLATED " + "; ".join(found.lines())
        print(f"trial {n + 1:>3}: {dealt} SIGKILLs, {verdict}", flush=True)
        failed += found.unsafe() > 0
    print(f"\n{args.trials} crash trials, {kills} SIGKILLs (target: 0 of each below)")
    for name, items in vars(totals).items():
        print(f"  {name:<20} {len(items):>4}  {'PASS' if not items else 'MISS'}")
    # Exit status 1 on any safety violation; issues not done by the deadline are reported.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
