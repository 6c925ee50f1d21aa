"""``replay_plan``: what a resumed study's actors are fed, in order: the lost attempts,
then every terminal step in the order the steps ended (its end to the supervisor, then to
its children still waiting), then the exits that happened while the engine was away."""

from __future__ import annotations

from adapters.base import JobOutcome, JobResult
from engine.machines.recovery import recover_records, replay_plan
from engine.machines.supervisor import SUPERVISOR
from engine.messages import AttemptLost, DependencyEnded, JobExited, StepEnded, StepState
from engine.spec.graph import StepInstance, StudyGraph
from engine.store import StepEntry

NOW = 1_000.0


def inst(name: str, *parents: str) -> StepInstance:
    return StepInstance(name=name, step=name, description="", workspace=f"/study/{name}",
                        cmd="true", parents=parents)


# In study order a comes first; in order of end: l (5), c (10), s (20), a (30), f (40).
GRAPH = StudyGraph(name="t", description="t", spec_path="/t.yaml", study_dir="/study", steps=(
    inst("a"), inst("f", "a"), inst("b", "a"), inst("c"), inst("s"), inst("t", "s"),
    inst("e"), inst("d", "c", "e"), inst("l"),
))


def final(step: str, state: StepState, end: float, **fields: object) -> StepEntry:
    return StepEntry(study_id="sid", step=step, state=state.value, attempt=1, end_time=end,
                     final=True, **fields)  # type: ignore[arg-type]


def in_flight(step: str) -> StepEntry:
    return StepEntry(study_id="sid", step=step, state="RUNNING", attempt=1, job_id="9",
                     intent_attempt=1, intent_key=f"sid/{step}/1")


ENTRIES = {
    "a": final("a", StepState.FINISHED, 30.0),
    "f": final("f", StepState.FINISHED, 40.0),
    "c": final("c", StepState.FINISHED, 10.0),
    "s": final("s", StepState.FAILED, 20.0, soft=True),
    "l": final("l", StepState.CANCELLED, 5.0, lost_race=True),
    "b": in_flight("b"),
    "e": in_flight("e"),
}
FOUND = {"b": None, "e": JobResult(outcome=JobOutcome.FAILED, exit_code=3)}


def test_replay_feeds_losses_then_ends_in_order_of_end_then_exits_seen_while_away() -> None:
    plan = replay_plan(recover_records(GRAPH, ENTRIES, {}, FOUND), GRAPH, now=NOW)
    assert [
        ("b", AttemptLost.match(attempt=1)),
        (SUPERVISOR, StepEnded.match(step="l", state=StepState.CANCELLED, benign=True)),
        (SUPERVISOR, StepEnded.match(step="c", state=StepState.FINISHED, benign=False)),
        ("d", DependencyEnded.match(dependency="c", state=StepState.FINISHED, soft=False)),
        (SUPERVISOR, StepEnded.match(step="s", state=StepState.FAILED, benign=False)),
        ("t", DependencyEnded.match(dependency="s", state=StepState.FAILED, soft=True)),
        (SUPERVISOR, StepEnded.match(step="a", state=StepState.FINISHED)),
        ("b", DependencyEnded.match(dependency="a", state=StepState.FINISHED)),
        (SUPERVISOR, StepEnded.match(step="f", state=StepState.FINISHED)),
        ("e", JobExited.match(exit_code=3, outcome="FAILED", time=NOW)),
    ] == plan


def test_a_terminal_child_hears_nothing_of_its_parents_end() -> None:
    """``f`` ended already: only ``b``, which starts over, is told that ``a`` ended."""
    plan = replay_plan(recover_records(GRAPH, ENTRIES, {}, FOUND), GRAPH, now=NOW)
    told = [t for t, e in plan if isinstance(e, DependencyEnded) and e.dependency == "a"]
    assert ["b"] == told


def test_every_replayed_event_has_its_own_id() -> None:
    plan = replay_plan(recover_records(GRAPH, ENTRIES, {}, FOUND), GRAPH, now=NOW)
    ids = [e.event_id for _, e in plan]
    assert len(plan) == len(set(ids)) and all(ids)


def test_nothing_stored_means_nothing_to_replay() -> None:
    assert [] == replay_plan(recover_records(GRAPH, {}, {}, {}), GRAPH, now=NOW)
