"""The documentation stays true: links resolve, the README opens with its two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md"])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link in the docs points at a file that exists."""
    if not page.exists():
        pytest.fail(f"{page.relative_to(ROOT)} is missing")
    for target in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), (
            f"{page.relative_to(ROOT)} links to missing {target}"
        )


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    """The first code block is the two commands a newcomer runs; CI runs the second one."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```")[1]
    assert "agent-fleet demo" in block
    assert "bash .ci/test" in block
    assert "bash .ci/test" in (ROOT / ".ci" / "run").read_text()
