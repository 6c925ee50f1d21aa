"""The pure state machine of a study's supervisor: the throttle and study completion.

The supervisor hands out throttle slots in request order (FIFO), takes them back when a
step leaves PENDING/RUNNING, and counts terminal steps as it sees them on the bus; when
every step is terminal it declares the study FINISHED, FAILURE or CANCELLED (Maestro's
rule: any step in a failure state makes the study a FAILURE).
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.messages import (
    FAILURE_STATES,
    Command,
    Event,
    GrantSlot,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    StepEnded,
    StepState,
    StudyCancelRequested,
    StudyFinished,
    SubmissionsPaused,
    StudyState,
    ThrottleChanged,
)

__all__ = ["SupervisorState", "decide", "study_outcome"]


class SupervisorState(Struct, frozen=True, kw_only=True):
    """A study's supervisor state.

    Throttles are per scope: ``global`` (every step), ``adapter:<name>`` and
    ``group:<name>``; a request is granted when every scope it names has room. A limit
    of 0 (or no entry in ``limits``) means unlimited.

    Invariants: every ``running`` count >= 0; no step is queued twice; ``done <= total``.
    """

    total: int
    limits: dict[str, int] = {}
    running: dict[str, int] = {}
    queue: tuple[tuple[str, tuple[str, ...]], ...] = ()
    done: int = 0
    counts: dict[str, int] = {}
    cancelled: bool = False
    ended: bool = False
    paused: bool = False


def study_outcome(counts: dict[str, int], *, cancelled: bool) -> StudyState:
    """Return the final state of a study whose steps ended with ``counts`` per state."""
    if any(counts.get(s, 0) for s in FAILURE_STATES):
        return StudyState.FAILURE
    if cancelled or counts.get(StepState.CANCELLED, 0):
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
    """Grant queued requests, oldest first, skipping those whose scopes are full."""
    if not st.queue or st.paused:
        return st, []
    grants: list[Command] = []
    rest = []
    running = st.running
    probe = st
    for step, scopes in st.queue:
        if _has_room(probe, scopes):
            running = _take(running, scopes, +1)
            probe = replace(probe, running=running)
            grants.append(GrantSlot(step=step))
        else:
            rest.append((step, scopes))
            if "global" in scopes and not _has_room(probe, ("global",)):
                rest.extend(st.queue[len(grants) + len(rest):])
                break  # nothing further can pass a full global throttle
    return replace(st, queue=tuple(rest), running=running), grants


def decide(
    st: SupervisorState, event: Event, *, now: float
) -> tuple[SupervisorState, list[Command]]:
    """Apply ``event`` to the supervisor's state.

    Args:
        st: The current state.
        event: A slot request/release/withdrawal, a throttle change, a step's end, or
            a study cancel request.
        now: The current time (unused today; part of every machine's signature).

    Returns:
        The new state and its commands (``GrantSlot``, ``StudyFinished``).

    Raises:
        InvalidTransition: the event contradicts the state (e.g. a release without a
            held slot, a step ending after the study ended).
    """
    del now
    match event:
        case SlotRequested(step=step, scopes=scopes):
            if st.ended or any(q == step for q, _ in st.queue):
                raise InvalidTransition("supervisor", "ended" if st.ended else "queued", event)
            if not st.queue and not st.paused and _has_room(st, scopes):
                return replace(st, running=_take(st.running, scopes, +1)), [GrantSlot(step=step)]
            return _fill(replace(st, queue=(*st.queue, (step, scopes))))
        case SlotReleased(scopes=scopes):
            if any(st.running.get(s, 0) <= 0 for s in scopes):
                raise InvalidTransition("supervisor", f"running={st.running}", event)
            return _fill(replace(st, running=_take(st.running, scopes, -1)))
        case SlotWithdrawn(step=step):
            queue = tuple(q for q in st.queue if q[0] != step)
            # Not queued: the grant is in flight, and the step, terminal by now,
            # answers it with a release.
            return _fill(replace(st, queue=queue)) if len(queue) != len(st.queue) else (st, [])
        case ThrottleChanged(scope=scope, limit=limit):
            if limit < 0:
                raise InvalidTransition("supervisor", f"limits={st.limits}", event)
            return _fill(replace(st, limits={**st.limits, scope: limit}))
        case SubmissionsPaused(paused=paused):
            return _fill(replace(st, paused=paused))
        case StudyCancelRequested():
            return replace(st, cancelled=True), []
        case StepEnded(state=state):
            if st.ended or st.done >= st.total:
                raise InvalidTransition("supervisor", "ended", event)
            counts = {**st.counts, state.value: st.counts.get(state.value, 0) + 1}
            st = replace(st, done=st.done + 1, counts=counts)
            if st.done < st.total:
                return st, []
            outcome = study_outcome(counts, cancelled=st.cancelled)
            return replace(st, ended=True), [StudyFinished(state=outcome, counts=counts)]
        case _:
            raise InvalidTransition("supervisor", "any", event)
