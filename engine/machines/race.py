"""Race groups, decided purely: the first member to finish (and pass the group's check)
wins, the others are cancelled as lost; ``$(race.<group>)`` names the winner's workspace.

Members are the instances of every step with ``run.race: <group>``. A member is a
candidate when it ends FINISHED; candidates are judged one at a time in the order they
ended: without a check the first one wins at once, with ``troupe.races.<group>.check``
the shell runs the check in the candidate's workspace (``CheckRace``) and reports back
(``RaceChecked``); a passing candidate wins unless the group is decided already, a failing
one lets the next candidate be checked. The winner's rivals are cancelled with
``lost_race`` set, so their CANCELLED state does not make the study CANCELLED; a member
that finished before the winner keeps its state.

Nothing here does I/O: the supervisor (``engine.machines.supervisor``) holds a
``RaceBook`` and calls these functions from its ``decide``.
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from engine.messages import CancelStep, CheckRace, Command
from engine.spec.graph import StepInstance, StudyGraph

__all__ = ["RaceBook", "candidate_finished", "check_done", "new_race_book", "substitute"]


class RaceBook(Struct, frozen=True, kw_only=True):
    """The race groups of one study.

    Invariants: ``checking[g]`` is a member of ``g`` and not in ``waiting[g]``; a group in
    ``winners`` has nothing checking or waiting.
    """

    members: dict[str, tuple[str, ...]] = {}  # group -> member instance names
    group_of: dict[str, str] = {}  # member -> group
    checks: dict[str, str] = {}  # group -> check command ("" = none)
    winners: dict[str, str] = {}  # group -> winning member
    checking: dict[str, str] = {}  # group -> the candidate whose check runs
    waiting: dict[str, tuple[str, ...]] = {}  # group -> candidates to check next, in order


def new_race_book(graph: StudyGraph) -> RaceBook:
    """The race groups of ``graph`` (``run.race``) with their checks (``troupe.races``)."""
    members: dict[str, list[str]] = {}
    for inst in graph.steps:
        if inst.race:
            members.setdefault(inst.race, []).append(inst.name)
    if not members:
        return RaceBook()
    settings = graph.troupe.get("races") or {}
    checks = {g: str((settings.get(g) or {}).get("check", "") or "") for g in members}
    return RaceBook(
        members={g: tuple(ms) for g, ms in members.items()},
        group_of={m: g for g, ms in members.items() for m in ms},
        checks=checks,
    )


def _win(book: RaceBook, group: str, step: str) -> tuple[RaceBook, list[Command]]:
    book = replace(book, winners={**book.winners, group: step},
                   checking={g: s for g, s in book.checking.items() if g != group},
                   waiting={g: w for g, w in book.waiting.items() if g != group})
    reason = f"race lost to {step}"
    return book, [CancelStep(step=m, reason=reason, lost_race=True)
                  for m in book.members[group] if m != step]


def _check_next(book: RaceBook, group: str) -> tuple[RaceBook, list[Command]]:
    """Start the check of the group's next candidate, if none runs."""
    queue = book.waiting.get(group, ())
    if group in book.checking or not queue:
        return book, []
    step, rest = queue[0], queue[1:]
    waiting = {**book.waiting, group: rest} if rest else {
        g: w for g, w in book.waiting.items() if g != group}
    book = replace(book, checking={**book.checking, group: step}, waiting=waiting)
    return book, [CheckRace(group=group, step=step, check=book.checks[group])]


def candidate_finished(book: RaceBook, step: str) -> tuple[RaceBook, list[Command]]:
    """``step`` ended FINISHED: if it races in an undecided group, judge it."""
    group = book.group_of.get(step)
    if group is None or group in book.winners:
        return book, []
    if not book.checks.get(group):
        return _win(book, group, step)
    book = replace(book, waiting={**book.waiting, group: (*book.waiting.get(group, ()), step)})
    return _check_next(book, group)


def check_done(book: RaceBook, group: str, step: str,
               passed: bool) -> tuple[RaceBook, list[Command]]:
    """The check of candidate ``step`` ended: it wins, or the next candidate is checked."""
    if book.checking.get(group) != step:
        return book, []  # the group was decided while it ran
    if passed:
        return _win(book, group, step)
    book = replace(book, checking={g: s for g, s in book.checking.items() if g != group})
    return _check_next(book, group)


def substitute(inst: StepInstance, winners: dict[str, str],
               by_name: dict[str, StepInstance]) -> StepInstance:
    """``inst`` with every ``$(race.<group>)`` of a decided race replaced by the winner's
    workspace (undecided ones stay literal)."""
    if "$(race." not in inst.cmd and "$(race." not in inst.restart:
        return inst
    cmd, restart = inst.cmd, inst.restart
    for group, winner in winners.items():
        ws = by_name[winner].workspace
        cmd = cmd.replace(f"$(race.{group})", ws)
        restart = restart.replace(f"$(race.{group})", ws)
    return replace(inst, cmd=cmd, restart=restart)
