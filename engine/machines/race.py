"""Race groups, decided purely: the first member to finish (and pass the group's check)
wins, the others are cancelled as lost; ``$(race.<group>)`` names the winner's workspace.

Members are the instances of every step with ``run.race: <group>``. A member is a
candidate when it ends FINISHED; candidates are judged one at a time in the order they
ended: without a check the first one wins at once, with ``troupe.races.<group>.check``
the shell runs the check in the candidate's workspace (``CheckRace``) and reports back
(``RaceChecked``); a passing candidate wins unless the group is decided already, a failing
one lets the next candidate be checked. The winner's rivals are cancelled with
``lost_race`` set, so their CANCELLED state does not make the study CANCELLED; a member
that finished before the winner keeps its state. A step whose command uses
``$(race.<group>)`` gets no throttle slot while that race is open (``waits_for_race``):
it runs once the group has a winner, or once every member ended with none (the token
then stays literal).

Nothing here does I/O: the supervisor (``engine.machines.supervisor``) holds a
``RaceBook`` and calls these functions from its ``decide``.
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from engine.messages import CancelStep, CheckRace, Command
from engine.spec.graph import StepInstance, StudyGraph

__all__ = [
    "RaceBook", "candidate_finished", "check_done", "member_ended", "new_race_book",
    "substitute", "waits_for_race",
]


class RaceBook(Struct, frozen=True, kw_only=True):
    """The race groups of one study.

    Invariants: ``checking[g]`` is a member of ``g`` and not in ``waiting[g]``; a group in
    ``winners`` has nothing checking or waiting; ``ended[g] <= len(members[g])``.
    """

    members: dict[str, tuple[str, ...]] = {}  # group -> member instance names
    group_of: dict[str, str] = {}  # member -> group
    checks: dict[str, str] = {}  # group -> check command ("" = none)
    winners: dict[str, str] = {}  # group -> winning member
    checking: dict[str, str] = {}  # group -> the candidate whose check runs
    waiting: dict[str, tuple[str, ...]] = {}  # group -> candidates to check next, in order
    ended: dict[str, int] = {}  # group -> members that ended (in any state)
    users: dict[str, tuple[str, ...]] = {}  # step -> the groups its command names


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
    users = {}
    for inst in graph.steps:
        if "$(race." in inst.cmd or "$(race." in inst.restart:
            named = tuple(g for g in members if f"$(race.{g})" in inst.cmd
                          or f"$(race.{g})" in inst.restart)
            if named:
                users[inst.name] = named
    return RaceBook(
        members={g: tuple(ms) for g, ms in members.items()},
        group_of={m: g for g, ms in members.items() for m in ms},
        checks=checks, users=users,
    )


def _settled(book: RaceBook, group: str) -> bool:
    """The group has a winner, or can no longer get one."""
    return group in book.winners or (
        book.ended.get(group, 0) >= len(book.members[group])
        and group not in book.checking and not book.waiting.get(group))


def waits_for_race(book: RaceBook, step: str) -> bool:
    """``step`` names a race (``$(race.<group>)``) that is still open."""
    return any(not _settled(book, g) for g in book.users.get(step, ()))


def member_ended(book: RaceBook, step: str) -> RaceBook:
    """``step`` reached a terminal state: count it for its group (if it races)."""
    group = book.group_of.get(step)
    if group is None:
        return book
    return replace(book, ended={**book.ended, group: book.ended.get(group, 0) + 1})


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
