"""The layers import only downwards: the spec knows nothing of the machines or the actors,
and only the bus touches nats-py (compare trio's test_exports)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted((ROOT / "engine" / "spec").glob("*.py"))
# The product's modules; tests/ and bench/ observe the engine as outside clients and may
# talk to NATS directly.
PRODUCT_FILES = sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])
NATS_MODULES = {"engine/bus.py", "engine/busevents.py", "engine/kvbucket.py", "engine/workqueue.py"}  # natsserver.py runs the binary: no client


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
    return found


def test_the_scan_sees_the_packages() -> None:
    assert len(SPEC_FILES) >= 5 and ROOT / "engine" / "bus.py" in PRODUCT_FILES


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda path: path.name)
def test_spec_module_imports_neither_machines_nor_actors(path: Path) -> None:
    bad = sorted(module for module in imported_modules(path)
                 if module.split(".")[:2] in (["engine", "machines"], ["engine", "actors"]))
    assert [] == bad


def test_spec_package_pulls_in_neither_machines_nor_actors() -> None:
    """Transitively too: importing every spec module loads no machine or actor."""
    names = ", ".join(f"engine.spec.{path.stem}" for path in SPEC_FILES)
    code = (
        f"import sys, {names}\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('engine.machines', "
        "'engine.actors')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert "" == out.stdout.strip()



@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_only_the_bus_imports_nats(path: Path) -> None:
    uses_nats = any(module.split(".")[0] == "nats" for module in imported_modules(path))
    assert (str(path.relative_to(ROOT)) in NATS_MODULES) == uses_nats
