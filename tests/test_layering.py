"""The architecture holds: the import contracts in ``pyproject.toml`` are kept.

``lint-imports`` (import-linter) checks every contract statically, from the source, so a
violation is caught even in code no test executes: webhook → controllers → reconciler and
nothing upward; controllers independent of each other; inside ``reconciler`` each concern
imports only those below it (the engine imports neither the fleet nor runs); only the Forgejo
gateway imports pyforgejo/httpx; the console imports nothing that writes; the HTTP handlers
never call Forgejo; nothing imports the console script's module.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_every_import_contract_is_kept() -> None:
    """lint-imports finds no broken contract (its report names the offending import chain)."""
    assert LINT_IMPORTS.exists(), "import-linter is not installed: pip install -e '.[test]'"
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{len(contracts())} kept, 0 broken" in run.stdout


def test_every_subpackage_of_reconciler_has_a_place_in_the_layers() -> None:
    """A new subpackage cannot escape the layering: each one is named in the layers contract
    (the in-memory Forgejo stands apart and has a contract of its own)."""
    layered = next(c for c in contracts() if c.get("containers") == ["reconciler"])
    layers = layered["layers"]
    assert isinstance(layers, list)
    named = {part.strip() for layer in layers for part in str(layer).replace(":", "|").split("|")}
    subpackages = {p.parent.name for p in (ROOT / "reconciler").glob("*/__init__.py")}
    shared = {p.stem for p in (ROOT / "reconciler").glob("*.py") if p.stem != "__init__"}
    assert subpackages - {"sandbox"} <= named, sorted(subpackages - {"sandbox"} - named)
    assert shared <= named, sorted(shared - named)
