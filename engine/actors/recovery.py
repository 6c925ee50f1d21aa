"""Rebuild a study's actors from its stored step entries (engine restart, ``restart``).

For each step instance:
  * a final entry is kept as it is (with ``rerun_failed``, only FINISHED, DRYRUN and soft
    fails are kept; everything else runs again, keeping its attempt count);
  * an entry with an attempt in flight (PENDING or RUNNING, or WAITING with the intent
    of its next attempt stored) is looked up through the adapter: still running →
    re-adopted (RUNNING, holding its slots); ended while the engine was away → its
    recorded exit is fed in as if it had just happened; gone without a trace → that
    attempt is recorded as lost (not for WAITING: it had most likely not started) and
    the step runs again as a new attempt;
  * anything else starts over from INITIALIZED (its dependencies are re-checked).

The terminal steps are then replayed as facts (``DependencyEnded`` to their children,
``StepEnded`` to the supervisor), exactly as the router would have delivered them.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from adapters.base import JobHandle, JobResult
from engine.machines.policy import StepPolicy
from engine.machines.step import StepRecord, new_record
from engine.messages import TERMINAL_STATES, StepState
from engine.machines.conditions import parse as parse_condition
from engine.spec.graph import StepInstance, StudyGraph
from engine.store import StepEntry

__all__ = ["Recovered", "condition_args", "recover_records"]

S = StepState


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
    cached: list[str] = []


def _restored(rec: StepRecord, e: StepEntry) -> StepRecord:
    return msgspec.structs.replace(
        rec, attempt=e.attempt, job_id=e.job_id, exit_code=e.exit_code,
        submit_time=e.submit_time, start_time=e.start_time, end_time=e.end_time,
        restarts=e.restarts, retries=e.retries, merlin_retries=e.merlin_retries,
        hw_failures=e.hw_failures, use_restart=e.use_restart, reason=e.reason,
    )


def condition_args(inst: StepInstance, graph: StudyGraph) -> dict[str, object]:
    """``new_record`` arguments for a step with a ``when:`` condition (else none)."""
    if not inst.when:
        return {}
    parent_steps: dict[str, list[str]] = {}
    for parent in inst.parents:
        parent_steps.setdefault(graph.by_name[parent].step, []).append(parent)
    return {"condition": parse_condition(inst.when),
            "parent_steps": {k: tuple(v) for k, v in parent_steps.items()}}


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
    keep = {S.FINISHED, S.DRYRUN}
    for inst in graph.steps:
        policy = policies.get(inst.name) or StepPolicy()
        fresh = new_record(inst.name, len(inst.parents), policy=policy,
                           **condition_args(inst, graph))
        e = entries.get(inst.name)
        if e is None:
            out.records[inst.name] = fresh
            continue
        rec = _restored(fresh, e)
        state = S(e.state)
        if e.final and state in TERMINAL_STATES and (
            not rerun_failed or state in keep or e.soft
        ):
            out.records[inst.name] = msgspec.structs.replace(rec, state=state, remaining=0)
            out.terminal.append(inst.name)
            if e.soft:
                out.soft.add(inst.name)
            continue
        waiting = state == S.WAITING and e.intent_attempt > e.attempt
        if (state in (S.PENDING, S.RUNNING) or waiting) and e.intent_attempt and not e.final:
            # An attempt stopped by a graceful shutdown runs again, whatever it wrote.
            job = None if e.interrupted else found.get(inst.name)
            if isinstance(job, JobHandle | JobResult):
                rec = msgspec.structs.replace(rec, state=S.RUNNING, remaining=0,
                                              attempt=e.intent_attempt,
                                              job_id=getattr(job, "job_id", e.job_id))
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
            rec = msgspec.structs.replace(rec, attempt=e.intent_attempt)
        # Start over: wait for the parents again (their facts are replayed).
        out.records[inst.name] = msgspec.structs.replace(
            rec, state=S.INITIALIZED, remaining=len(inst.parents), end_time=None,
            exit_code=None, job_id="" if inst.name in out.lost else rec.job_id,
        )
    return out

