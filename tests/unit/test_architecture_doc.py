"""docs/architecture.md names modules, classes and functions; every one it names must exist,
so that the house tour cannot drift from the house."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

# `engine/actors/jobs.py: JobShell.run` (a module and a name in it), or a bare module path.
_QUALIFIED = re.compile(r"`((?:engine|adapters)/[\w/]+\.py): ([\w.]+)`")
_PATH = re.compile(r"((?:engine|adapters|tests)/[\w/]+\.py)")


def _names(path: Path) -> set[str]:
    """Top-level names and ``Class.member`` names defined in a module."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    out.add(f"{node.name}.{item.name}")
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    out.add(f"{node.name}.{item.target.id}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(t.id for t in targets if isinstance(t, ast.Name))
    return out


def test_every_module_the_architecture_page_names_exists() -> None:
    text = DOC.read_text()
    missing = sorted({p for p in _PATH.findall(text) if not (ROOT / p).is_file()})
    assert [] == missing


def test_every_function_the_architecture_page_names_is_defined_where_it_says() -> None:
    text = DOC.read_text()
    pairs = _QUALIFIED.findall(text)
    assert len(pairs) >= 10, "the walk of one completion names its hops"
    missing = sorted(f"{p}: {name}" for p, name in pairs
                     if (ROOT / p).is_file() and name not in _names(ROOT / p))
    assert [] == missing


def test_every_class_member_the_architecture_page_names_exists() -> None:
    """``StudyRuntime._publish``, ``Adapter.lookup``, ... (named without their module)."""
    defined: set[str] = set()
    for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("adapters/*.py")]:
        defined |= _names(path)
    members = set(re.findall(r"`([A-Z]\w+\.\w+)`", DOC.read_text()))
    assert len(members) >= 15
    assert [] == sorted(m for m in members if m not in defined)


def test_each_table_row_names_what_its_modules_define() -> None:
    """In the table of concerns, the entry points are defined in the modules listed."""
    rows = [line.split("|") for line in DOC.read_text().splitlines()
            if line.startswith("| ") and "`" in line]
    checked = 0
    for cells in rows:
        if len(cells) < 4:
            continue
        modules = [ROOT / m for m in _PATH.findall(cells[2]) if (ROOT / m).is_file()]
        entries = re.findall(r"`([\w.]+)`", cells[3])
        if not modules or not entries:
            continue
        defined = set().union(*(_names(m) for m in modules))
        for entry in entries:
            checked += 1
            assert entry in defined or any(d.endswith(f".{entry}") for d in defined), (
                cells[1], entry)
    assert checked >= 20
