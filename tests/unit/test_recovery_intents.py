"""Recovery of a step whose stored entry is WAITING with the intent of its next attempt
(written while it waited for a slot), or INITIALIZED with it (a chain's child, written
while its parent ran): looked up like an attempt in flight, adopted if its job exists,
else run again under a fresh attempt number without a loss being reported."""

from __future__ import annotations

from adapters.base import JobHandle, JobOutcome, JobResult
from engine.machines.recovery import recover_records
from engine.machines.step import new_record
from engine.messages import StepState
from engine.spec.graph import StepInstance, StudyGraph
from engine.store import StepEntry

GRAPH = StudyGraph(
    name="t", description="t", spec_path="/t.yaml", study_dir="/study",
    steps=(StepInstance(name="a", step="a", description="", workspace="/study/a", cmd="true"),),
)


def _waiting(attempt: int, intent: int) -> dict[str, StepEntry]:
    return {"a": StepEntry(study_id="s", step="a", state="WAITING", attempt=attempt,
                           intent_attempt=intent, intent_key=f"s/a/{intent}")}


def test_a_waiting_intent_that_never_started_is_not_a_loss_and_its_number_is_used_up() -> None:
    rec = recover_records(GRAPH, _waiting(0, 1), {}, {"a": None})
    assert {} == rec.lost, "a step that waited for a slot was not lost"
    assert StepState.INITIALIZED == rec.records["a"].state
    assert 1 == rec.records["a"].attempt, "the next submission is attempt 2"


def test_a_waiting_intent_whose_job_runs_is_adopted() -> None:
    handle = JobHandle(step="a", attempt=2, job_id="42", backend="local")
    rec = recover_records(GRAPH, _waiting(1, 2), {}, {"a": handle})
    assert {"a": handle} == rec.adopted
    assert (StepState.RUNNING, 2) == (rec.records["a"].state, rec.records["a"].attempt)


def test_a_waiting_intent_whose_job_ended_is_applied() -> None:
    done = JobResult(outcome=JobOutcome.COMPLETED, exit_code=0)
    rec = recover_records(GRAPH, _waiting(0, 1), {}, {"a": done})
    assert {"a": done} == rec.ended


def test_a_pending_attempt_that_vanished_is_a_loss() -> None:
    entries = {"a": StepEntry(study_id="s", step="a", state="PENDING", attempt=1,
                              intent_attempt=1, intent_key="s/a/1")}
    rec = recover_records(GRAPH, entries, {}, {"a": None})
    assert {"a": 1} == rec.lost


def _ahead(attempt: int) -> dict[str, StepEntry]:
    """A chain child's entry stored while its parent ran: INITIALIZED, naming its next
    attempt (``StepEntry.from_record(..., ahead=True)``)."""
    return {"a": StepEntry(study_id="s", step="a", state="INITIALIZED", attempt=attempt,
                           intent_attempt=attempt + 1, intent_key=f"s/a/{attempt + 1}")}


def test_an_intent_stored_ahead_that_never_started_is_used_up_not_lost() -> None:
    rec = recover_records(GRAPH, _ahead(0), {}, {"a": None})
    assert {} == rec.lost
    assert (StepState.INITIALIZED, 1) == (rec.records["a"].state, rec.records["a"].attempt)


def test_an_intent_stored_ahead_whose_job_runs_is_adopted() -> None:
    """The child's later entries were not stored when the engine died, but it was
    submitted (its intent was): the job is found and adopted, never started twice."""
    handle = JobHandle(step="a", attempt=1, job_id="42", backend="local")
    rec = recover_records(GRAPH, _ahead(0), {}, {"a": handle})
    assert {"a": handle} == rec.adopted
    assert (StepState.RUNNING, 1) == (rec.records["a"].state, rec.records["a"].attempt)


def test_the_ahead_entry_names_the_next_attempt_and_keeps_the_state() -> None:
    rec = new_record("a", parents=1)
    entry = StepEntry.from_record(rec, study_id="s", ahead=True)
    assert ("INITIALIZED", 0, 1, "s/a/1") == (entry.state, entry.attempt, entry.intent_attempt,
                                             entry.intent_key)
    assert 0 == StepEntry.from_record(rec, study_id="s").intent_attempt
