"""Race groups: the first member to finish (and pass the group's check) wins; the others
are cancelled through their adapters (reason "race lost"); ``$(race.<group>)`` in a later
step's command becomes the winner's workspace when that step is submitted.

Members are the instances of every step with ``run.race: <group>``. A member wins when its
final state is FINISHED and, if ``troupe.races.<group>.check`` is set, that command exits
0 in the member's workspace. A member that finished before the winner keeps its state.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec
import structlog

from engine.spec.graph import StepInstance, StudyGraph

__all__ = ["Races"]


class Races:
    """The race groups of one study and their winners."""

    def __init__(self, graph: StudyGraph, checks: dict[str, str]) -> None:
        self.graph = graph
        self.checks = checks
        self.members: dict[str, list[str]] = {}
        for inst in graph.steps:
            if inst.race:
                self.members.setdefault(inst.race, []).append(inst.name)
        self.group = {m: g for g, ms in self.members.items() for m in ms}
        self.winners: dict[str, str] = {}
        self._log = structlog.get_logger("troupe.race")

    async def finished(self, step: str, cancel: Callable[[list[str], str], None]) -> None:
        """A member ended FINISHED: check it, and if it is the first, cancel the rest."""
        group = self.group.get(step)
        if group is None or group in self.winners:
            return
        check = self.checks.get(group)
        if check:
            ws = self.graph.by_name[step].workspace
            result = await anyio.run_process(["/bin/sh", "-c", check], cwd=ws, check=False)
            if result.returncode != 0 or group in self.winners:
                return
        self.winners[group] = step
        losers = [m for m in self.members[group] if m != step]
        self._log.info("race_won", group=group, winner=step, losers=len(losers))
        cancel(losers, f"race lost to {step}")

    def substitute(self, inst: StepInstance) -> StepInstance:
        """``inst`` with every ``$(race.<group>)`` of a decided race replaced."""
        if "$(race." not in inst.cmd and "$(race." not in inst.restart:
            return inst
        cmd, restart = inst.cmd, inst.restart
        for group, winner in self.winners.items():
            ws = self.graph.by_name[winner].workspace
            cmd = cmd.replace(f"$(race.{group})", ws)
            restart = restart.replace(f"$(race.{group})", ws)
        return msgspec.structs.replace(inst, cmd=cmd, restart=restart)
