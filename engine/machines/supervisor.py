"""The pure state machine of a study's supervisor: the study-level decisions.

The supervisor hands out throttle slots in request order (FIFO; a next attempt first), takes them back when a
step leaves PENDING/RUNNING, and counts terminal steps as it sees them on the bus; when
every step is terminal it declares the study FINISHED, FAILURE or CANCELLED (Maestro's
rule: any step in a failure state makes the study a FAILURE). It also decides what
concerns the whole study: a cancel of the study (every step is cancelled; a second
request kills whatever still runs), a stop asked by a step (Merlin's hard fail: every
step is cancelled, once), and the race groups (``engine.machines.race``).
"""

from __future__ import annotations

import enum

from msgspec import Struct
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.machines.waiting import Waiting
from engine.machines.race import (
    RaceBook,
    candidate_finished,
    check_done,
    member_ended,
    waits_for_race,
)
from engine.messages import (
    FAILURE_STATES,
    CancelStep,
    Command,
    EndStudy,
    Event,
    GrantSlot,
    KillAllJobs,
    RaceChecked,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    StepEnded,
    StepState,
    StopRequested,
    StudyCancelRequested,
    SubmissionsPaused,
    StudyState,
    ThrottleChanged,
)

__all__ = [
    "SUPERVISOR", "SupervisorState", "SupervisorTarget", "Target", "decide", "new_supervisor",
    "study_outcome",
]


class SupervisorTarget(enum.Enum):
    """The address of a study's supervisor in its inbox (steps are addressed by name)."""

    SUPERVISOR = "supervisor"


SUPERVISOR = SupervisorTarget.SUPERVISOR
Target = str | SupervisorTarget
"""Whom an event in a study's inbox is for: a step instance (by name) or the supervisor."""


class SupervisorState(Struct, frozen=True, kw_only=True):
    """A study's supervisor state.

    Throttles are per scope: ``global`` (every step), ``adapter:<name>`` and
    ``group:<name>``; a request is granted when every scope it names has room. A limit
    of 0 (or no entry in ``limits``) means unlimited.

    Waiting requests are kept in one FIFO queue per distinct scope set (``queues``), each
    entry tagged with its arrival number, so granting looks at a few queue heads instead of
    scanning every waiting step; across queues the oldest request that fits goes first.
    A step's next attempt (a retry, a restart, a resubmission) is numbered below every
    first attempt (arrival number minus ``_AGAIN``): it goes first.

    ``steps`` are the study's instances in status order (a cancel goes to each);
    ``cancels`` counts the cancel requests and stops (the first cancels every step, a
    further request kills what still runs); ``races`` are the race groups; ``parked``
    holds the slot requests of steps that name an open race (``$(race.<group>)``), made
    once the race is decided.

    Invariants: every ``running`` count >= 0; no step is queued twice; ``done <= total``;
    ``cancelled`` iff ``cancels > 0``.
    """

    total: int
    steps: tuple[str, ...] = ()
    limits: dict[str, int] = {}
    running: dict[str, int] = {}
    queues: dict[tuple[str, ...], Waiting] = {}
    seq: int = 0
    done: int = 0
    counts: dict[str, int] = {}
    cancelled: bool = False
    ended: bool = False
    paused: bool = False
    benign: int = 0
    cancels: int = 0
    races: RaceBook = RaceBook()
    parked: dict[str, tuple[str, ...]] = {}  # step -> scopes: asks for a slot once its race ends


_AGAIN = 1 << 40  # subtracted from a next attempt's arrival number


def new_supervisor(steps: tuple[str, ...], *, limits: dict[str, int],
                   races: RaceBook | None = None,
                   running: dict[str, int] | None = None) -> SupervisorState:
    """The supervisor of a study with ``steps`` (in status order).

    Args:
        steps: Every step instance, in the order a cancel reaches them.
        limits: Throttle limits per scope (0 = unlimited).
        races: The study's race groups.
        running: Slots already held per scope (steps re-adopted after a restart).
    """
    return SupervisorState(total=len(steps), steps=steps, limits=limits,
                           races=races or RaceBook(), running=dict(running or {}))


def _cancel_all(st: SupervisorState, reason: str) -> tuple[SupervisorState, list[Command]]:
    return (replace(st, cancelled=True, cancels=st.cancels + 1),
            [CancelStep(step=name, reason=reason) for name in st.steps])


def study_outcome(counts: dict[str, int], *, cancelled: bool, benign: int = 0) -> StudyState:
    """Return the final state of a study whose steps ended with ``counts`` per state;
    ``benign`` CANCELLED steps (lost races) do not make it CANCELLED."""
    if any(counts.get(s, 0) for s in FAILURE_STATES):
        return StudyState.FAILURE
    if cancelled or counts.get(StepState.CANCELLED, 0) > benign:
        return StudyState.CANCELLED
    return StudyState.FINISHED


def _has_room(st: SupervisorState, scopes: tuple[str, ...]) -> bool:
    for scope in scopes:
        limit = st.limits.get(scope, 0)
        if limit > 0 and st.running.get(scope, 0) >= limit:
            return False
    return True


def _take(running: dict[str, int], scopes: tuple[str, ...], delta: int) -> dict[str, int]:
    out = dict(running)
    for scope in scopes:
        out[scope] = out.get(scope, 0) + delta
    return out


def _fill(st: SupervisorState) -> tuple[SupervisorState, list[Command]]:
    """Grant queued requests, oldest first among those whose scopes have room."""
    if not st.queues or st.paused:
        return st, []
    queues = dict(st.queues)
    running = st.running
    grants: list[Command] = []
    probe = st
    while True:
        best: tuple[str, ...] | None = None
        for scopes, q in queues.items():
            if q and (best is None or q.head()[0] < queues[best].head()[0]) and _has_room(
                    probe, scopes):
                best = scopes
        if best is None:
            break
        (_, step), rest = queues[best].pop()
        if rest:
            queues[best] = rest
        else:
            del queues[best]
        running = _take(running, best, +1)
        probe = replace(probe, running=running)
        grants.append(GrantSlot(step=step))
    return replace(st, queues=queues, running=running), grants


def _request(st: SupervisorState, step: str, scopes: tuple[str, ...], *,
             again: bool = False) -> tuple[SupervisorState, list[Command]]:
    """Grant ``step`` a slot at once if nothing waits and there is room, else queue it
    (``again``: before every first attempt, after the earlier next attempts)."""
    # A step asks at most once per WAITING period (the step machine's invariant), so a
    # duplicate check here would only cost a scan of the queue.
    if not st.queues and not st.paused and _has_room(st, scopes):
        return replace(st, running=_take(st.running, scopes, +1)), [GrantSlot(step=step)]
    q = st.queues.get(scopes) or Waiting()
    if again:  # numbered below every first attempt; they stay in their order
        ahead = sum(1 for number, _ in q if number < 0)
        q = q.insert(ahead, (st.seq - _AGAIN, step))
    else:
        q = q.push((st.seq, step))
    return _fill(replace(st, queues={**st.queues, scopes: q}, seq=st.seq + 1))


def _unpark(st: SupervisorState) -> tuple[SupervisorState, list[Command]]:
    """Ask for the slots of the parked steps whose race is no longer open."""
    ready = [(s, sc) for s, sc in st.parked.items() if not waits_for_race(st.races, s)]
    if not ready:
        return st, []
    st = replace(st, parked={s: sc for s, sc in st.parked.items()
                             if waits_for_race(st.races, s)})
    grants: list[Command] = []
    for step, scopes in ready:
        st, cmds = _request(st, step, scopes)
        grants += cmds
    return st, grants


def decide(
    st: SupervisorState, event: Event, *, now: float
) -> tuple[SupervisorState, list[Command]]:
    """Apply ``event`` to the supervisor's state.

    Args:
        st: The current state.
        event: A slot request/release/withdrawal, a throttle change, a step's end, a
            study cancel or stop request, or a race check's result.
        now: The current time (unused today; part of every machine's signature).

    Returns:
        The new state and its commands (``GrantSlot``, ``CancelStep``, ``KillAllJobs``,
        ``CheckRace``, ``EndStudy``).

    Raises:
        InvalidTransition: the event contradicts the state (e.g. a release without a
            held slot, a step ending after the study ended).
    """
    del now
    match event:
        case SlotRequested(step=step, scopes=scopes, again=again):
            if st.ended:
                raise InvalidTransition("supervisor", "ended", event)
            if waits_for_race(st.races, step):
                return replace(st, parked={**st.parked, step: scopes}), []
            return _request(st, step, scopes, again=again)
        case SlotReleased(scopes=scopes):
            if any(st.running.get(s, 0) <= 0 for s in scopes):
                raise InvalidTransition("supervisor", f"running={st.running}", event)
            return _fill(replace(st, running=_take(st.running, scopes, -1)))
        case SlotWithdrawn(step=step) if step in st.parked:
            return replace(st, parked={k: v for k, v in st.parked.items() if k != step}), []
        case SlotWithdrawn(step=step):
            for scopes, q in st.queues.items():
                kept = q.without(step)
                if len(kept) != len(q):
                    queues = {**st.queues, scopes: kept} if kept else {
                        k: v for k, v in st.queues.items() if k != scopes}
                    return _fill(replace(st, queues=queues))
            # Not queued: the grant is in flight, and the step, terminal by now,
            # answers it with a release.
            return st, []
        case ThrottleChanged(scope=scope, limit=limit):
            if limit < 0:
                raise InvalidTransition("supervisor", f"limits={st.limits}", event)
            return _fill(replace(st, limits={**st.limits, scope: limit}))
        case SubmissionsPaused(paused=paused):
            return _fill(replace(st, paused=paused))
        case StudyCancelRequested(reason=reason):
            if st.cancels:
                # Asked again: stop waiting for graceful ends.
                return replace(st, cancels=st.cancels + 1), [KillAllJobs()]
            return _cancel_all(st, reason)
        case StopRequested(reason=reason):
            return (st, []) if st.cancels else _cancel_all(st, reason)
        case RaceChecked(group=group, step=step, passed=passed):
            if st.ended:
                return st, []
            races, cmds = check_done(st.races, group, step, passed)
            st, grants = _unpark(replace(st, races=races))
            return st, [*cmds, *grants]
        case StepEnded(step=step, state=state, benign=benign):
            if st.ended or st.done >= st.total:
                raise InvalidTransition("supervisor", "ended", event)
            counts = {**st.counts, state.value: st.counts.get(state.value, 0) + 1}
            st = replace(st, done=st.done + 1, counts=counts, benign=st.benign + benign)
            cmds: list[Command] = []
            if step in st.races.group_of:
                races = member_ended(st.races, step)
                if state == StepState.FINISHED:
                    races, cmds = candidate_finished(races, step)
                st, grants = _unpark(replace(st, races=races))
                cmds += grants
            if st.done < st.total:
                return st, cmds
            outcome = study_outcome(counts, cancelled=st.cancelled, benign=st.benign)
            return replace(st, ended=True), [EndStudy(state=outcome, counts=counts)]
        case _:
            raise InvalidTransition("supervisor", "any", event)
