"""The router: a study's completion subjects, delivered to the actors that listen on them.

One wildcard subscription per study (``subjects.step_endings``) receives every terminal
step event from NATS. The first final event of step P becomes a ``StepEnded`` for the
supervisor and a ``DependencyEnded`` for each child of P (the actors that listen on P's
completion). The supervisor counts it (a lost race is ``benign``: it does not make the study
CANCELLED) and decides the races. Later copies of the same step's end (a re-published
event) and events of steps that are not this study's are dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

from engine.errors import BusError
from engine.machines.supervisor import SUPERVISOR, Target
from engine.messages import (
    AnyBusMessage,
    DependencyEnded,
    Event,
    StepEnded,
    StepStateChanged,
    new_event_id,
)

__all__ = ["Router"]


class Router:
    """Delivers each step's first final event to its children and the supervisor.

    Args:
        study_id: The study whose events are routed.
        children: Each step instance's children.
        send: Puts an event into the study's inbox.
        url: The NATS server's URL (named when the connection is lost).
    """

    def __init__(self, study_id: str, children: Mapping[str, Sequence[str]],
                 send: Callable[[Target, Event], None], *, url: str | None = None) -> None:
        self.study_id = study_id
        self._url = url
        self._children = children
        self._send = send
        self._seen: set[str] = set()

    def already_delivered(self, steps: Iterable[str]) -> None:
        """Mark ``steps`` as delivered (recovery replays their ends itself)."""
        self._seen.update(steps)

    async def run(self, events: AsyncIterator[AnyBusMessage], *,
                  done: Callable[[], bool]) -> None:
        """Route ``events`` until the subscription ends.

        Raises:
            BusError: the subscription ended before ``done()`` held: the connection is
                closed for good, and without the bus no completion reaches anyone.
        """
        children, send, seen = self._children, self._send, self._seen
        async for msg in events:
            if not isinstance(msg, StepStateChanged) or msg.study_id != self.study_id:
                continue
            if not msg.final or msg.step in seen or msg.step not in children:
                continue  # not an end, a copy, or not one of ours
            seen.add(msg.step)
            # The supervisor first: a race it decides is known before a child that uses
            # ``$(race.<group>)`` can be submitted.
            send(SUPERVISOR, StepEnded(
                event_id=new_event_id(), cause_id=msg.event_id, step=msg.step,
                state=msg.state, benign=msg.lost_race,
            ))
            for child in children[msg.step]:
                send(child, DependencyEnded(
                    event_id=new_event_id(), cause_id=msg.event_id,
                    dependency=msg.step, state=msg.state, soft=msg.soft,
                ))
        if not done():
            raise BusError("lost the connection to the NATS server while the study ran", self._url)
