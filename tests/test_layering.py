"""The package layering of DESIGN.md holds: webhook → controllers → reconciler, nothing upward.

Walks every module's imports with ``ast`` (no import side effects), so a violation is caught
even in code no test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reconciler", "controllers", "webhook")
# Only the Forgejo gateway may talk HTTP to Forgejo through these.
GATEWAY_ONLY = ("pyforgejo", "httpx")
GATEWAY = "reconciler/forgejo.py"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", modules("reconciler"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reconciler_imports_neither_controllers_nor_webhook(path: Path) -> None:
    """The engine knows nothing of the layers above it."""
    bad = {n for n in imports_of(path) if top(n) in ("controllers", "webhook")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("controllers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_controllers_import_no_other_controller_and_not_the_webhook(path: Path) -> None:
    """A controller depends on the engine only, never on a sibling or on the HTTP layer."""
    own = f"controllers.{path.stem}"
    bad = {
        n
        for n in imports_of(path)
        if top(n) == "webhook" or (top(n) == "controllers" and n not in ("controllers", own))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path",
    [p for pkg in PACKAGES for p in modules(pkg)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_gateway_imports_the_forgejo_client(path: Path) -> None:
    """pyforgejo and httpx are imported by reconciler/forgejo.py alone."""
    if path.relative_to(ROOT).as_posix() == GATEWAY:
        return
    bad = {n for n in imports_of(path) if top(n) in GATEWAY_ONLY}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_webhook_never_imports_the_gateway() -> None:
    """The webhook receiver enqueues keys; it never calls Forgejo."""
    for path in modules("webhook"):
        assert "reconciler.forgejo" not in imports_of(path), path
