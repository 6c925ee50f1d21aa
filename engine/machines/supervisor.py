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
    StudyState,
    ThrottleChanged,
)

__all__ = ["SupervisorState", "decide", "study_outcome"]


class SupervisorState(Struct, frozen=True, kw_only=True):
    """A study's supervisor state.

    Invariants: ``0 <= running``; ``running <= limit`` unless ``limit`` is 0 (unlimited)
    or was lowered while steps ran; ``queue`` holds no step twice; ``done <= total``.
    """

    total: int
    limit: int = 0
    running: int = 0
    queue: tuple[str, ...] = ()
    done: int = 0
    counts: dict[str, int] = {}
    cancelled: bool = False
    ended: bool = False


def study_outcome(counts: dict[str, int], *, cancelled: bool) -> StudyState:
    """Return the final state of a study whose steps ended with ``counts`` per state."""
    if any(counts.get(s, 0) for s in FAILURE_STATES):
        return StudyState.FAILURE
    if cancelled or counts.get(StepState.CANCELLED, 0):
        return StudyState.CANCELLED
    return StudyState.FINISHED


def _has_room(st: SupervisorState) -> bool:
    return st.limit <= 0 or st.running < st.limit


def _fill(st: SupervisorState) -> tuple[SupervisorState, list[Command]]:
    """Grant queued requests while there is room."""
    if not st.queue or not _has_room(st):
        return st, []
    n = len(st.queue) if st.limit <= 0 else min(len(st.queue), st.limit - st.running)
    granted, rest = st.queue[:n], st.queue[n:]
    st = replace(st, queue=rest, running=st.running + n)
    return st, [GrantSlot(step=s) for s in granted]


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
        case SlotRequested(step=step):
            if st.ended or step in st.queue:
                raise InvalidTransition("supervisor", "ended" if st.ended else "queued", event)
            if _has_room(st) and not st.queue:
                return replace(st, running=st.running + 1), [GrantSlot(step=step)]
            return replace(st, queue=(*st.queue, step)), []
        case SlotReleased():
            if st.running <= 0:
                raise InvalidTransition("supervisor", f"running={st.running}", event)
            return _fill(replace(st, running=st.running - 1))
        case SlotWithdrawn(step=step):
            if step in st.queue:
                return replace(st, queue=tuple(s for s in st.queue if s != step)), []
            # Granted already: the grant is in flight, and the step, which is terminal
            # by now, answers it with a release.
            return st, []
        case ThrottleChanged(limit=limit):
            if limit < 0:
                raise InvalidTransition("supervisor", f"limit={st.limit}", event)
            return _fill(replace(st, limit=limit))
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
