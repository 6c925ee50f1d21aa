"""The shell of race checks: runs a race group's check command in a FINISHED member's
workspace and reports whether it passed (``RaceChecked``). Who wins is decided purely,
in ``engine.machines.race``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from engine.messages import CheckRace, Event, RaceChecked, new_event_id

__all__ = ["run_race_check"]


async def run_race_check(cmd: CheckRace, workspace: str) -> AsyncIterator[Event]:
    """Run ``cmd.check`` with ``/bin/sh`` in ``workspace``; exit 0 passes.

    A check that cannot be started at all (a missing workspace) fails.
    """
    try:
        result = await anyio.run_process(["/bin/sh", "-c", cmd.check], cwd=workspace,
                                         check=False)
        passed = result.returncode == 0
    except OSError:
        passed = False
    yield RaceChecked(event_id=new_event_id(), group=cmd.group, step=cmd.step, passed=passed)
