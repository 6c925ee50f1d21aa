"""Race groups through the whole runtime on a fake bus and adapter: the first member to
finish (and pass the group's check) wins, the rivals are cancelled as lost races, the
study still ends FINISHED, and ``$(race.<group>)`` names the winner's workspace."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from engine.actors.study import StudyRuntime
from engine.messages import StepState, StudyState
from engine.spec.graph import StepInstance
from engine.testing import FakeBus
from tests.actors.support import RecordingAdapter, changes, graph, inst, running



def members(tmp_path: Path, *names: str, ok: tuple[str, ...] = ()) -> list[StepInstance]:
    """Race members of group ``g`` (spec step ``solver``) with real workspaces; those in
    ``ok`` hold the file the check looks for."""
    out = []
    for name in names:
        ws = tmp_path / name
        ws.mkdir()
        if name in ok:
            (ws / "ok").write_text("")
        out.append(inst(f"solver_{name}", step="solver", workspace=str(ws), race="g"))
    return out


def report(*parents: str) -> StepInstance:
    return inst("report", *parents, cmd="cat $(race.g)/answer.txt",
                when="any(solver_*.completed)")


async def test_first_member_to_finish_wins_and_the_rivals_are_cancelled_as_lost(
        tmp_path: Path) -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = StudyRuntime(graph(*members(tmp_path, "a", "b", "c")), study_id="sid", bus=bus,
                      adapter=ad)
    async with running(rt):
        for name in ("solver_a", "solver_b", "solver_c"):
            await ad.wait_submitted(name)
        ad.finish("solver_b")
    assert StudyState.FINISHED == rt.outcome, "lost races do not make the study CANCELLED"
    assert {"g": "solver_b"} == rt.supervisor.races.winners
    assert {("solver_a", 1), ("solver_c", 1)} == set(ad.cancelled)
    for loser in ("solver_a", "solver_c"):
        end = changes(bus, loser)[-1]
        assert (StepState.CANCELLED, True, True, "race lost to solver_b") == (
            end.state, end.final, end.lost_race, end.reason)
    assert (StepState.FINISHED, False) == (changes(bus, "solver_b")[-1].state,
                                   changes(bus, "solver_b")[-1].lost_race)
    assert {"FINISHED": 1, "CANCELLED": 2} == rt.counts


async def test_a_member_failing_the_check_loses_to_the_next_finisher_that_passes(
        tmp_path: Path) -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    g = graph(*members(tmp_path, "a", "b", "c", ok=("b",)),
              troupe={"races": {"g": {"check": "test -f ok"}}})
    rt = StudyRuntime(g, study_id="sid", bus=bus, adapter=ad)
    async with running(rt):
        for name in ("solver_a", "solver_b", "solver_c"):
            await ad.wait_submitted(name)
        ad.finish("solver_a")  # finishes first, but its workspace has no ok
        await anyio.wait_all_tasks_blocked()
        ad.finish("solver_b")
    assert {"g": "solver_b"} == rt.supervisor.races.winners
    assert [("solver_c", 1)] == ad.cancelled, "only the member still running is stopped"
    assert {"solver_a": StepState.FINISHED, "solver_b": StepState.FINISHED, "solver_c": StepState.CANCELLED} == {
        n: r.state for n, r in rt.records.items()}
    assert changes(bus, "solver_c")[-1].lost_race
    assert StudyState.FINISHED == rt.outcome


async def test_race_in_a_later_steps_command_is_the_winners_workspace(tmp_path: Path) -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = StudyRuntime(graph(*members(tmp_path, "a", "b"), report("solver_a", "solver_b")),
                      study_id="sid", bus=bus, adapter=ad)
    async with running(rt):
        await ad.wait_submitted("solver_a")
        await ad.wait_submitted("solver_b")
        ad.finish("solver_b")
        await ad.wait_submitted("report")
        ad.finish("report")
    (request,) = [r for r in ad.requests if r.step.name == "report"]
    assert f"cat {tmp_path / 'b'}/answer.txt" == request.step.cmd
    assert StudyState.FINISHED == rt.outcome


async def test_race_with_a_check_is_decided_before_a_later_step_uses_it(tmp_path: Path) -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    g = graph(*members(tmp_path, "a", "b", ok=("b",)), report("solver_a", "solver_b"),
              troupe={"races": {"g": {"check": "test -f ok"}}})
    rt = StudyRuntime(g, study_id="sid", bus=bus, adapter=ad)
    async with running(rt):
        await ad.wait_submitted("solver_a")
        await ad.wait_submitted("solver_b")
        ad.finish("solver_a")  # fails the check: the race is still open
        await anyio.wait_all_tasks_blocked()
        assert "report" not in [name for name, _ in ad.submitted]
        ad.finish("solver_b")
        await ad.wait_submitted("report")
        ad.finish("report")
    (request,) = [r for r in ad.requests if r.step.name == "report"]
    assert f"cat {tmp_path / 'b'}/answer.txt" == request.step.cmd
