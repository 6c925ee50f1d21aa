"""A study's first records, and their rebuilding from stored entries (pure).

``initial_records`` gives every step instance its fresh record. ``recover_records``
rebuilds them from the store (engine restart, ``restart``); for each step instance:
  * a final entry is kept as it is (with ``rerun_failed``, only FINISHED, DRYRUN, CACHED
    and soft fails are kept; everything else runs again, keeping its attempt count);
  * an entry with an attempt in flight (PENDING or RUNNING, or WAITING or INITIALIZED
    with the intent of its next attempt stored: a chain's child names it while its
    parent runs) is looked up through the adapter: still running →
    re-adopted (RUNNING, holding its slots); ended while the engine was away → its
    recorded exit is fed in as if it had just happened; gone without a trace → that
    attempt is recorded as lost (not for WAITING or INITIALIZED: it had most likely not
    started; the lookup fenced it off, so its number is used up) and
    the step runs again as a new attempt;
  * anything else starts over from INITIALIZED (its dependencies are re-checked).

``replay_plan`` then says what the runtime must feed its actors so that they stand where
they would have stood had the engine never stopped: the lost attempts (``AttemptLost``),
every terminal step as the router would have delivered it (``DependencyEnded`` to its
waiting children, ``StepEnded`` to the supervisor, which decides the races again), in
the order the steps ended, and the exits that happened while the engine was away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec
from msgspec.structs import replace

from adapters.base import JobHandle, JobResult
from engine.spec.conditions import parse as parse_condition
from engine.machines.policy import StepPolicy
from engine.machines.step import StepRecord, new_record
from engine.machines.supervisor import SUPERVISOR, Target
from engine.messages import (
    TERMINAL_STATES,
    AttemptLost,
    DependencyEnded,
    Event,
    JobExited,
    StepEnded,
    StepState,
    new_event_id,
)
from engine.spec.graph import StepInstance, StudyGraph

if TYPE_CHECKING:
    from engine.store import StepEntry

__all__ = ["Recovered", "initial_records", "recover_records", "replay_plan"]

_KEPT_ON_RESTART = frozenset({StepState.FINISHED, StepState.DRYRUN, StepState.CACHED})


class Recovered(msgspec.Struct, kw_only=True):
    """What ``recover_records`` found.

    Attributes:
        records: Every step's record.
        terminal: Steps that are final (to replay to children and supervisor).
        soft: Terminal steps that soft-failed (their children still run).
        adopted: Steps re-attached to a live job: name -> handle.
        ended: Steps whose job ended while the engine was away: name -> result.
        lost: Steps whose in-flight attempt vanished: name -> that attempt.
        running: Slots held per scope by adopted and ended-while-away steps.
    """

    records: dict[str, StepRecord]
    terminal: list[str] = []
    adopted: dict[str, JobHandle] = {}
    ended: dict[str, JobResult] = {}
    lost: dict[str, int] = {}
    running: dict[str, int] = {}
    soft: set[str] = set()


def _fresh(inst: StepInstance, graph: StudyGraph, policy: StepPolicy | None,
           dry_run: bool) -> StepRecord:
    """A step's initial record (with its parsed ``when:`` condition, if any)."""
    if not inst.when:
        return new_record(inst.name, len(inst.parents), dry_run=dry_run, policy=policy)
    parent_steps: dict[str, list[str]] = {}
    for parent in inst.parents:
        parent_steps.setdefault(graph.by_name[parent].step, []).append(parent)
    return new_record(inst.name, len(inst.parents), dry_run=dry_run, policy=policy,
                      condition=parse_condition(inst.when),
                      parent_steps={k: tuple(v) for k, v in parent_steps.items()})


def initial_records(graph: StudyGraph, policies: Mapping[str, StepPolicy], *,
                    dry_run: bool = False) -> dict[str, StepRecord]:
    """Every step instance's record before anything happened."""
    return {s.name: _fresh(s, graph, policies.get(s.name), dry_run) for s in graph.steps}


def recover_records(
    graph: StudyGraph,
    entries: Mapping[str, StepEntry],
    policies: Mapping[str, StepPolicy],
    found: Mapping[str, JobHandle | JobResult | None],
    *,
    rerun_failed: bool = False,
) -> Recovered:
    """Rebuild records from stored entries (see the module docstring).

    Args:
        graph: The study.
        entries: Stored step entries by name.
        policies: Each step's policy.
        found: For each step with an attempt in flight, what the adapter found
            (``engine.backends.Backends.lookup_inflight``): a live job, its result, or
            None (lost).
        rerun_failed: ``restart``: run failed, cancelled and timed-out steps again.
    """
    out = Recovered(records={})
    for inst in graph.steps:
        policy = policies.get(inst.name) or StepPolicy()
        fresh = _fresh(inst, graph, policy, False)
        e = entries.get(inst.name)
        if e is None:
            out.records[inst.name] = fresh
            continue
        rec = fresh.restore(e)
        state = StepState(e.state)
        if e.final and state in TERMINAL_STATES and (
            not rerun_failed or state in _KEPT_ON_RESTART or e.soft
        ):
            out.records[inst.name] = replace(rec, state=state, remaining=0)
            out.terminal.append(inst.name)
            if e.soft:
                out.soft.add(inst.name)
            continue
        waiting = (state in (StepState.WAITING, StepState.INITIALIZED)
                   and e.intent_attempt > e.attempt)
        in_flight = state in (StepState.PENDING, StepState.RUNNING) or waiting
        if in_flight and e.intent_attempt and not e.final:
            # An attempt stopped by a graceful shutdown runs again, whatever it wrote.
            job = None if e.interrupted else found.get(inst.name)
            if isinstance(job, JobHandle | JobResult):
                job_id = job.job_id if isinstance(job, JobHandle) else e.job_id
                rec = replace(rec, state=StepState.RUNNING, remaining=0,
                              attempt=e.intent_attempt, job_id=job_id, lost_race=False)
                for scope in policy.scopes:
                    out.running[scope] = out.running.get(scope, 0) + 1
                if isinstance(job, JobHandle):
                    out.adopted[inst.name] = job
                else:
                    out.ended[inst.name] = job
                out.records[inst.name] = rec
                continue
            if not waiting:
                out.lost[inst.name] = e.intent_attempt
            # (A WAITING step's attempt most likely never started; the lookup fenced it
            # off, so its number is used up either way.)
            rec = replace(rec, attempt=e.intent_attempt)
        # Start over: wait for the parents again (their facts are replayed).
        out.records[inst.name] = replace(
            rec, state=StepState.INITIALIZED, remaining=len(inst.parents), end_time=None,
            exit_code=None, lost_race=False,
            job_id="" if inst.name in out.lost else rec.job_id,
        )
    return out


def replay_plan(rec: Recovered, graph: StudyGraph, *,
                now: float) -> list[tuple[Target, Event]]:
    """What to feed the actors of a recovered study, in order (see the module docstring).

    Args:
        rec: What ``recover_records`` found.
        graph: The study.
        now: The time to give the exits that happened while the engine was away.
    """
    plan: list[tuple[Target, Event]] = [
        (name, AttemptLost(event_id=new_event_id(), attempt=attempt))
        for name, attempt in rec.lost.items()
    ]
    records = rec.records
    # In the order they ended, so that the races are decided as they were: the first
    # FINISHED member (to pass the check) wins.
    for name in sorted(rec.terminal, key=lambda n: records[n].end_time or 0.0):
        state = records[name].state
        plan.append((SUPERVISOR, StepEnded(event_id=new_event_id(), step=name, state=state,
                                           benign=records[name].lost_race)))
        for child in graph.children[name]:
            if records[child].state == StepState.INITIALIZED:  # still waiting
                plan.append((child, DependencyEnded(
                    event_id=new_event_id(), dependency=name, state=state,
                    soft=name in rec.soft)))
    for name, result in rec.ended.items():
        plan.append((name, JobExited(event_id=new_event_id(), exit_code=result.exit_code,
                                     outcome=result.outcome, detail=result.detail,
                                     time=now)))
    return plan
