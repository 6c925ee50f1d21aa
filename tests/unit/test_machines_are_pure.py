"""The machines import no I/O, clock or logging library (compare trio's test_exports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("anyio", "nats", "structlog", "asyncio")


@pytest.mark.parametrize(
    "module",
    ["engine.machines.conditions", "engine.machines.policy", "engine.machines.step",
     "engine.machines.supervisor"],
)
def test_machine_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()
