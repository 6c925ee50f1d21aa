"""The machines import no I/O, clock or logging library, and none of the engine's shells
(compare trio's test_exports). Every module under ``engine.machines`` is checked, found by
``pkgutil`` so that a new machine is checked without being listed here."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import engine.machines

FORBIDDEN = ("anyio", "nats", "structlog", "asyncio")
SHELLS = ("engine.actors", "engine.bus", "engine.store")
MODULES = sorted(f"engine.machines.{m.name}"
                 for m in pkgutil.iter_modules(engine.machines.__path__))


def test_every_machine_is_found() -> None:
    assert {"engine.machines.step", "engine.machines.supervisor"} <= set(MODULES)


def imported_by(module: str) -> list[str]:
    """Every module a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}\nprint('\\n'.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", MODULES)
def test_machine_module_imports_no_io_library_and_no_shell(module: str) -> None:
    loaded = imported_by(module)
    assert module in loaded, "the check ran"
    assert [] == [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert [] == [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SHELLS)]
