"""The generic shell around a study's pure machines: one inbox, dispatch, timers, and
child tasks whose events come back into the inbox.

Every actor of a study (each step instance, addressed by name, and the supervisor,
addressed by ``SUPERVISOR``) shares one inbox, a memory stream of ``(target, event)``.
``ActorLoop.run`` drains it: each event goes to its target's pure ``decide``, and the
returned commands are carried out in order, first in first out. A command addressed to
another actor (``routes`` turn it into that actor's event, such as a slot request for the
supervisor) is decided in the same pass (its commands join the end of the queue, so a
cancel of the study reaches every step before a freed slot is granted), so a step asking for a slot and the
supervisor granting it happen without a trip through the inbox. ``StartTimer`` is
handled here. Every other command goes to ``execute``, the owner's shell. Slow work
runs in child tasks (``spawn``) that yield events; each one goes back into the inbox,
addressed to the actor that asked (dask's ``BaseWorker``). An idle actor costs nothing
but its record: no task, no subscription.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from engine.machines.supervisor import Target
from engine.messages import Command, Event, StartTimer, TimerFired, new_event_id

__all__ = ["ActorLoop"]

_FAIR_EVERY = 64  # inbox events taken at most between two yields to the other tasks

Decide = Callable[[Target, Event], Sequence[Command]]
Route = Callable[[Any, str], "tuple[Target, Event]"]
Execute = Callable[[Command, str], "Awaitable[None] | None"]


class ActorLoop:
    """A study's inbox and dispatcher.

    Args:
        decide: Feeds an event to its target's machine, stores the new state, and
            returns the machine's commands.
        routes: For each type of command meant for another actor, the function that
            turns it into ``(target, event)``.
        execute: Carries out any other command (publish, submit, cancel, ...); ``cause``
            is the id of the event that led to it. It returns an awaitable for a command
            whose I/O the dispatch must wait for (publishing, so that a step's events
            leave in order), else None.
    """

    def __init__(self, *, decide: Decide, routes: Mapping[type[Command], Route],
                 execute: Execute) -> None:
        self._decide = decide
        self._routes = dict(routes)
        self._execute = execute
        self._send, self._recv = anyio.create_memory_object_stream[tuple[Target, Event]](
            math.inf)
        self._tg: anyio.abc.TaskGroup | None = None

    def send(self, target: Target, event: Event) -> None:
        """Put ``event`` for ``target`` into the inbox (never blocks)."""
        self._send.send_nowait((target, event))

    def spawn(self, target: Target, events: AsyncIterator[Event]) -> None:
        """Run ``events`` in a child task; each event it yields goes to ``target``.

        Raises:
            RuntimeError: the loop is not running.
        """
        if self._tg is None:
            raise RuntimeError("ActorLoop.spawn before ActorLoop.run")
        self._tg.start_soon(self._pump, target, events)

    def start_soon(self, func: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``func(*args)`` in a child task that reports nothing into the inbox (its
        outcome reaches the actors another way, e.g. a cancelled job's exit).

        Raises:
            RuntimeError: the loop is not running.
        """
        if self._tg is None:
            raise RuntimeError("ActorLoop.start_soon before ActorLoop.run")
        self._tg.start_soon(func, *args)

    async def _pump(self, target: Target, events: AsyncIterator[Event]) -> None:
        send = self._send.send_nowait
        try:
            async for event in events:
                send((target, event))
        except BaseException:
            # Cancelled (or failed) part way: run the generator's clean-up now, not at
            # garbage collection. An exhausted one needs none.
            await events.aclose()  # type: ignore[attr-defined]
            raise

    def attach(self, tg: anyio.abc.TaskGroup) -> None:
        """Start child tasks in ``tg`` from now on (call before ``spawn``)."""
        self._tg = tg

    async def run(self, *, until: Callable[[], bool]) -> None:
        """Dispatch events until ``until()`` holds (checked first, then after each)."""
        recv, drained = self._recv, 0
        while not until():
            # Take what is there without a checkpoint (its yield costs more than most
            # decisions); yield now and then all the same, so no task waits long.
            if drained < _FAIR_EVERY:
                try:
                    target, event = recv.receive_nowait()
                    drained += 1
                except anyio.WouldBlock:
                    target, event = await recv.receive()
                    drained = 0
            else:
                target, event = await recv.receive()
                drained = 0
            await self.dispatch(target, event)

    async def dispatch(self, target: Target, event: Event) -> None:
        """Feed ``event`` to its actor and carry out the commands, first in first out."""
        decide, routes = self._decide, self._routes
        work: deque[tuple[Command, str]] = deque()
        cause = event.event_id
        work.extend((c, cause) for c in decide(target, event))
        while work:
            cmd, cause = work.popleft()
            route = routes.get(type(cmd))
            if route is not None:
                to, follow = route(cmd, cause)
                work.extend((c, follow.event_id) for c in decide(to, follow))
            elif type(cmd) is StartTimer:
                self.spawn(cmd.step, _timer(cmd.name, cmd.attempt, cmd.delay))
            else:
                pending = self._execute(cmd, cause)
                if pending is not None:
                    await pending


async def _timer(name: str, attempt: int, delay: float) -> AsyncIterator[Event]:
    """A timer: ``TimerFired`` after ``delay`` seconds."""
    await anyio.sleep(delay)
    yield TimerFired(event_id=new_event_id(), name=name, attempt=attempt)
