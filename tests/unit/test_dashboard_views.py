"""engine/dashboard/views.py: a study's states aggregated per spec step, from a status
reply and events; what changed since the last look; timeline bars in slots."""

from __future__ import annotations

from typing import Any

import pytest

from engine.dag import StepDag
from engine.dashboard.views import StudyView, slot_rows, worker_rows
from engine.messages import SamplesChanged, StepStateChanged
from engine.messages.bus import StepSummary
from engine.spec.graph import StepInstance, StudyGraph


def study(n: int = 3) -> StudyView:
    """A sweep ``w`` of ``n`` instances funnelled into ``f``."""
    sweep = [StepInstance(name=f"w_I.{i}", step="w", description="", workspace=f"/s/w/{i}",
                          cmd="true") for i in range(n)]
    funnel = StepInstance(name="f", step="f", description="", workspace="/s/f", cmd="true",
                          parents=tuple(s.name for s in sweep), funnel_parents=("w",))
    graph = StudyGraph(name="s", description="", spec_path="/s.yaml", study_dir="/s",
                       steps=(*sweep, funnel))
    return StudyView("s1", StepDag.from_graph(graph))


def event(step: str, state: str, previous: str, *, attempt: int = 1, t: float = 100.0,
          **kw: Any) -> StepStateChanged:
    return StepStateChanged(event_id=f"{step}-{state}", study_id="s1", step=step,
                            attempt=attempt, state=state, previous=previous, time=t, **kw)


def test_a_new_view_counts_every_instance_initialized() -> None:
    view = study(3)
    assert {"w": {"INITIALIZED": 3}, "f": {"INITIALIZED": 1}} == view.counts
    assert {"INITIALIZED": 4} == view.totals()


def test_events_move_counts_and_report_the_changed_step_once() -> None:
    view = study(3)
    view.apply(event("w_I.0", "WAITING", "INITIALIZED", attempt=0, t=1.0))
    view.apply(event("w_I.0", "PENDING", "WAITING", t=2.0))
    view.apply(event("w_I.0", "RUNNING", "PENDING", t=3.0, job_id="42"))
    assert {"INITIALIZED": 2, "RUNNING": 1} == view.counts["w"]
    changes = view.take_changes()
    assert ("w",) == changes.nodes
    assert ("w_I.0",) == changes.instances
    assert (1.0, 2.0, 3.0) == changes.times
    assert () == view.take_changes().nodes  # taken: nothing left


def test_a_step_takes_its_instances_dominant_state_as_enginectl_graph_does() -> None:
    view = study(3)
    view.apply(event("w_I.0", "RUNNING", "INITIALIZED"))
    assert "RUNNING" == view.node("w")["state"]
    view.apply(event("w_I.1", "FAILED", "INITIALIZED", attempt=0))
    assert "FAILED" == view.node("w")["state"]  # a failure first, even while one runs
    assert "INITIALIZED" == view.node("f")["state"]


def test_a_buffered_event_the_status_reply_already_holds_is_not_applied_twice() -> None:
    view = study(1)
    view.load([StepSummary(step="w_I.0", state="RUNNING", attempt=1, job_id="7",
                           submit_time=1.0, start_time=2.0)])
    assert not view.apply(event("w_I.0", "PENDING", "WAITING"), buffered=True)
    assert not view.apply(event("w_I.0", "RUNNING", "PENDING"), buffered=True)
    assert view.apply(event("w_I.0", "FINISHED", "RUNNING", exit_code=0), buffered=True)
    assert {"FINISHED": 1} == view.counts["w"]


def test_attempts_are_kept_per_attempt_with_their_times_and_job_ids() -> None:
    view = study(1)
    for ev in [event("w_I.0", "PENDING", "WAITING", t=1.0),
               event("w_I.0", "RUNNING", "PENDING", t=2.0, job_id="10"),
               event("w_I.0", "FAILED", "RUNNING", t=3.0, exit_code=1, reason="exit code 1"),
               event("w_I.0", "WAITING", "FAILED", t=3.5),
               event("w_I.0", "PENDING", "WAITING", attempt=2, t=4.0),
               event("w_I.0", "RUNNING", "PENDING", attempt=2, t=5.0, job_id="11"),
               event("w_I.0", "FINISHED", "RUNNING", attempt=2, t=6.0, exit_code=0)]:
        view.apply(ev)
    data = view.instance("w_I.0")
    assert [None, 3.5] == [a["ready"] for a in data["attempts"]]  # WAITING: ready for a slot
    assert [(1, "10", 1.0, 2.0, 3.0, "FAILED", 1), (2, "11", 4.0, 5.0, 6.0, "FINISHED", 0)] == [
        (a["attempt"], a["job_id"], a["submit"], a["start"], a["end"], a["state"],
         a["exit_code"]) for a in data["attempts"]]


def test_a_dependency_failure_makes_no_attempt() -> None:
    view = study(1)
    view.apply(event("f", "FAILED", "INITIALIZED", attempt=0, kind="dependency"))
    assert [] == view.instance("f")["attempts"]
    assert {"FAILED": 1} == view.counts["f"]


def test_history_adds_earlier_attempts_without_touching_states() -> None:
    view = study(1)
    view.load([StepSummary(step="w_I.0", state="RUNNING", attempt=2, submit_time=4.0,
                           start_time=5.0, job_id="11")])
    view.history([event("w_I.0", "PENDING", "WAITING", t=1.0),
                  event("w_I.0", "RUNNING", "PENDING", t=2.0, job_id="10"),
                  event("w_I.0", "FAILED", "RUNNING", t=3.0, exit_code=1)])
    assert "RUNNING" == view.instances["w_I.0"].state
    assert [1, 2] == [a.attempt for a in view.instances["w_I.0"].attempts]


def test_samples_are_counted_on_their_step() -> None:
    view = study(1)
    view.apply_samples(SamplesChanged(event_id="x", study_id="s1", step="w_I.0",
                                      state="RUNNING", samples=(0, 1, 2), time=1.0))
    view.apply_samples(SamplesChanged(event_id="y", study_id="s1", step="w_I.0",
                                      state="FINISHED", samples=(0, 1), time=2.0))
    assert {"RUNNING": 1, "FINISHED": 2} == view.node("w")["samples"]


def test_pages_of_instances_are_bounded() -> None:
    view = study(10)
    assert ["w_I.3", "w_I.4"] == [i["name"] for i in view.page("w", 3, 2)]
    assert [] == view.page("w", 50, 10)


def test_bars_fill_the_first_free_slot() -> None:
    bars = [{"submit": 0.0, "start": 0.0, "end": 2.0}, {"submit": 1.0, "start": 1.0, "end": 3.0},
            {"submit": 2.0, "start": 2.5, "end": 4.0}, {"submit": 3.5, "start": 3.5, "end": None}]
    assert 2 == slot_rows(bars)
    assert [0, 1, 0, 1] == [b["row"] for b in bars]


def test_bars_of_workers_get_rows_of_their_own() -> None:
    """On workers, one row per worker (and per task it ran at once), named; the rest
    (local processes, scheduler jobs) in shared slots after them."""
    def bar(begin: float, end: float) -> dict[str, float]:
        return {"submit": begin, "start": begin, "end": end}

    bars = [bar(0, 2), bar(0, 1), bar(0.5, 3), bar(1, 2), bar(2, 4), bar(2.5, 3)]
    who = ["worker gpu-1", "worker cpu-2", "worker cpu-2", "", "worker gpu-1", ""]
    labels = worker_rows(bars, who)
    assert ["cpu-2 #1", "cpu-2 #2", "gpu-1", "slot 1"] == labels
    assert [2, 0, 1, 3, 2, 3] == [b["row"] for b in bars]


@pytest.mark.parametrize("limit", [1, 2])
def test_bars_keep_the_latest_attempts(limit: int) -> None:
    view = study(2)
    view.apply(event("w_I.0", "PENDING", "WAITING", t=1.0))
    view.apply(event("w_I.1", "PENDING", "WAITING", t=2.0))
    assert ["w_I.1", "w_I.0"][:limit][::-1] == [b["step"] for b in view.bars(limit=limit)]
