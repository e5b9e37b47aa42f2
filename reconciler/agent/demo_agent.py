"""A deterministic stand-in for an agent CLI, used by ``agent-fleet demo`` and by tests.

``python -m reconciler.agent.demo_agent PROMPT`` does what a coding agent does to its worktree, in
a fixed way: it writes ``fleet-notes/<slug>.md`` with the task's goal taken from the prompt
(and, on a rerun with review feedback, a section answering it), commits nothing itself (the
executor commits what an agent leaves), and prints a result object in Claude Code's
``--output-format json`` shape, so the real output parser reads it. The same prompt in the
same directory always gives the same files and the same session id.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "task"


def _goal(prompt: str) -> str:
    lines = [line.strip("# ").strip() for line in prompt.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.lower().startswith("goal") and index + 1 < len(lines):
            return lines[index + 1]
    return lines[0] if lines else "do the task"


def _title(prompt: str) -> str:
    match = re.search(
        r"^(?:#+\s*)?(?:Task|Issue)[^:\n]*:\s*(.+)$", prompt, re.MULTILINE | re.IGNORECASE
    )
    return match.group(1).strip() if match else _goal(prompt)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    if len(argv) != 1:
        print("usage: python -m reconciler.agent.demo_agent PROMPT", file=sys.stderr)
        return 2
    prompt = argv[0]
    title = _title(prompt)
    path = Path("fleet-notes") / f"{_slug(title)}.md"
    path.parent.mkdir(exist_ok=True)
    text = f"# {title}\n\nGoal: {_goal(prompt)}\n"
    feedback = re.search(
        r"review feedback[^\n]*\n(.+?)(?:\n\n|$)", prompt, re.IGNORECASE | re.DOTALL
    )
    if feedback:
        text += f"\n## Review addressed\n\n{feedback.group(1).strip()}\n"
    path.write_text(text)
    session = hashlib.sha1(f"{Path.cwd()}\n{title}".encode()).hexdigest()
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 1,
        "result": f"Wrote {path} for: {title}",
        "session_id": f"{session[:8]}-{session[8:12]}-{session[12:16]}-{session[16:20]}-{session[20:32]}",
        # A made-up price, so the demo's page has spend to chart: $3 and $15 per million
        # input and output tokens, counted as words.
        "total_cost_usd": round((3 * len(prompt.split()) + 15 * len(text.split())) / 1e6, 6),
        "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(text.split())},
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
