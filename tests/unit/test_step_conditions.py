"""The step machine with a when: condition: run, skip, cancel or wait as parents end."""

from __future__ import annotations

from engine.machines.step import decide, new_record
from engine.messages import DependencyEnded, PublishState, RequestSlot, StepState
from engine.spec.conditions import parse

NOW = 5.0


def cond_step(text: str, parents: dict[str, tuple[str, ...]]):  # type: ignore[no-untyped-def]
    total = sum(len(v) for v in parents.values())
    return new_record("agg", total, condition=parse(text), parent_steps=parents)


def ended(rec, dep: str, state: StepState):  # type: ignore[no-untyped-def]
    return decide(rec, DependencyEnded(dependency=dep, state=state), now=NOW)


def test_quorum_fraction_runs_despite_one_failed_instance() -> None:
    sims = tuple(f"sim_X.{i}" for i in range(10))
    rec = cond_step("fraction(sim_*.completed) >= 0.8", {"sim": sims})
    rec, _ = ended(rec, "sim_X.0", StepState.FAILED)
    for name in sims[1:8]:
        rec, cmds = ended(rec, name, StepState.FINISHED)
        assert StepState.INITIALIZED == rec.state
    rec, cmds = ended(rec, "sim_X.8", StepState.FINISHED)  # 8 of 10: decided without sim_X.9
    assert StepState.WAITING == rec.state
    assert [PublishState.match(state=StepState.WAITING), RequestSlot.match(step="agg")] == cmds
    rec, cmds = ended(rec, "sim_X.9", StepState.FINISHED)
    assert (StepState.WAITING, []) == (rec.state, cmds), "a late parent changes nothing"


def test_or_fires_on_the_first_completion() -> None:
    rec = cond_step("a.completed or b.completed", {"a": ("a",), "b": ("b",)})
    rec, cmds = ended(rec, "a", StepState.FINISHED)
    assert StepState.WAITING == rec.state
    assert [PublishState.match(state=StepState.WAITING), RequestSlot.match(step="agg")] == cmds


def test_unsatisfiable_condition_skips_the_step() -> None:
    rec = cond_step("a.failed", {"a": ("a",)})
    rec, cmds = ended(rec, "a", StepState.FINISHED)
    assert StepState.SKIPPED == rec.state
    assert [PublishState.match(state=StepState.SKIPPED, final=True,
                               reason="condition can no longer hold")] == cmds


def test_cancelled_side_cancels_an_and() -> None:
    rec = cond_step("a.completed and b.completed", {"a": ("a",), "b": ("b",)})
    rec, cmds = ended(rec, "a", StepState.CANCELLED)
    assert StepState.CANCELLED == rec.state
    assert [PublishState.match(state=StepState.CANCELLED, final=True,
                               reason="condition was cancelled")] == cmds


def test_skipped_parent_skips_a_step_under_maestros_rule() -> None:
    rec, cmds = decide(new_record("c", 1), DependencyEnded(dependency="p", state=StepState.SKIPPED), now=NOW)
    assert StepState.SKIPPED == rec.state
    assert [PublishState.match(state=StepState.SKIPPED, final=True, reason="dependency p was skipped")
            ] == cmds
