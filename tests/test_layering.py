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
GATEWAY = "reconciler/forgejo/gateway.py"
# The console script's module is the composition root: it assembles the process from every
# layer (as a `main` does), so it alone may reach upward. Nothing imports it.
COMPOSITION_ROOT = "webhook/cli.py"


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
    if path.relative_to(ROOT).as_posix() == COMPOSITION_ROOT:
        return
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
    """pyforgejo and httpx are imported by reconciler/forgejo/gateway.py alone."""
    if path.relative_to(ROOT).as_posix() == GATEWAY:
        return
    bad = {n for n in imports_of(path) if top(n) in GATEWAY_ONLY}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


# Modules of the top layer that assemble a whole process (daemon, demo) rather than serve HTTP.
ASSEMBLY = ("webhook/daemon.py", "webhook/demo.py")


def test_the_http_handlers_never_import_the_gateway() -> None:
    """The webhook receiver and the API handlers enqueue keys; they never call Forgejo."""
    for path in modules("webhook"):
        if path.relative_to(ROOT).as_posix() in ASSEMBLY:
            continue
        assert "reconciler.forgejo.gateway" not in imports_of(path), path


def test_nothing_imports_the_composition_root() -> None:
    """The CLI module may reach every layer only because no module depends on it."""
    for package in PACKAGES:
        for path in modules(package):
            if path.relative_to(ROOT).as_posix() in (COMPOSITION_ROOT, "webhook/__main__.py"):
                continue
            assert "webhook.cli" not in imports_of(path), path
