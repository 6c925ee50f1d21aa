"""ActorLoop, the shell a study's actors share: one dispatch carries a whole cascade out in
order, a command for another actor is decided in the same pass, timers and child tasks
come back through the inbox to the actor they name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from engine.actors._loop import ActorLoop
from engine.machines.supervisor import SUPERVISOR, Target
from engine.messages import (
    Command,
    Event,
    GrantSlot,
    JobExited,
    JobStarted,
    RequestSlot,
    SlotGranted,
    SlotRequested,
    StartTimer,
    StudyOpened,
    SubmitJob,
    TimerFired,
    WriteScript,
)

GUARD = 10.0


class Actors:
    """Stand-in machines: ``script[target](event)`` gives the commands; every decision
    and every command carried out is recorded with its cause."""

    def __init__(self, script: dict[Target, Callable[[Event], list[Command]]]) -> None:
        self.script = script
        self.decided: list[tuple[Target, Event]] = []
        self.executed: list[tuple[Command, str]] = []

    def decide(self, target: Target, event: Event) -> list[Command]:
        self.decided.append((target, event))
        return self.script.get(target, lambda _: [])(event)

    async def execute(self, cmd: Command, cause: str) -> None:
        self.executed.append((cmd, cause))

    def loop(self) -> ActorLoop:
        return ActorLoop(decide=self.decide, routes=ROUTES, execute=self.execute)

    def got(self, target: Target, kind: type[Event]) -> list[Event]:
        return [e for t, e in self.decided if t == target and isinstance(e, kind)]


# Slot requests go to the supervisor, grants to their step (as the runtime's routes do).
ROUTES = {
    RequestSlot: lambda cmd, cause: (SUPERVISOR, SlotRequested(
        event_id=f"req-{cmd.step}", cause_id=cause, step=cmd.step)),
    GrantSlot: lambda cmd, cause: (cmd.step, SlotGranted(
        event_id=f"grant-{cmd.step}", cause_id=cause)),
}


async def test_one_dispatch_carries_out_the_whole_cascade_in_order_before_the_next_event() -> None:
    """Commands run in the order returned; a routed actor's commands follow those already
    queued (first in, first out); the next inbox event waits for all of them."""
    actors = Actors({
        "a": lambda _: [WriteScript(step="a1"), RequestSlot(step="a"), WriteScript(step="a2")],
        SUPERVISOR: lambda ev: [WriteScript(step=f"sup-{ev.step}")],
        "b": lambda _: [WriteScript(step="b1")],
    })
    loop = actors.loop()
    loop.send("a", StudyOpened(event_id="open-a"))
    loop.send("b", StudyOpened(event_id="open-b"))
    with anyio.fail_after(GUARD):
        await loop.run(until=lambda: len(actors.executed) == 4)
    assert [
        (WriteScript(step="a1"), "open-a"), (WriteScript(step="a2"), "open-a"),
        (WriteScript(step="sup-a"), "req-a"), (WriteScript(step="b1"), "open-b"),
    ] == actors.executed
    assert ["a", SUPERVISOR, "b"] == [t for t, _ in actors.decided]


async def test_commands_between_actors_are_decided_in_the_same_pass() -> None:
    """A slot request reaches the supervisor and its grant reaches the step within one
    ``dispatch``: nothing goes through the inbox, no task is needed."""
    actors = Actors({
        "a": lambda ev: ([RequestSlot(step="a")] if isinstance(ev, StudyOpened)
                         else [SubmitJob(step="a", attempt=1)]),
        SUPERVISOR: lambda ev: [GrantSlot(step=ev.step)],
    })
    loop = actors.loop()
    await loop.dispatch("a", StudyOpened(event_id="open-a"))
    assert [("a", StudyOpened), (SUPERVISOR, SlotRequested), ("a", SlotGranted)] == [
        (t, type(e)) for t, e in actors.decided]
    assert [(SubmitJob(step="a", attempt=1), "grant-a")] == actors.executed
    assert SlotGranted.match(cause_id="req-a") == actors.decided[-1][1]


async def test_start_timer_comes_back_as_timer_fired_to_the_step_it_names() -> None:
    """The timer goes to the step in the command (not to the actor that asked), with its
    name and attempt; a timer still running delivers nothing."""
    actors = Actors({"a": lambda _: [
        StartTimer(step="b", name="retry", attempt=3, delay=0),
        StartTimer(step="c", name="walltime", attempt=1, delay=3600),
    ]})
    loop = actors.loop()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            loop.attach(tg)
            loop.send("a", StudyOpened())
            await loop.run(until=lambda: bool(actors.got("b", TimerFired)))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert [TimerFired.match(name="retry", attempt=3)] == actors.got("b", TimerFired)
    assert [] == actors.got("c", TimerFired)
    assert [] == actors.executed, "StartTimer is the loop's own command"


async def test_events_a_spawned_task_yields_reach_the_inbox_addressed_to_its_target() -> None:
    go_on = anyio.Event()

    async def job() -> AsyncIterator[Event]:
        yield JobStarted(event_id="started", job_id="7", time=1.0)
        await go_on.wait()
        yield JobExited(event_id="exited", exit_code=0, time=2.0)

    actors = Actors({})
    loop = actors.loop()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            loop.attach(tg)
            loop.spawn("b", job())
            await loop.run(until=lambda: len(actors.decided) == 1)
            assert [("b", "started")] == [(t, e.event_id) for t, e in actors.decided]
            go_on.set()
            await loop.run(until=lambda: len(actors.decided) == 2)
    assert [("b", "started"), ("b", "exited")] == [(t, e.event_id) for t, e in actors.decided]


async def test_spawn_and_start_soon_before_attach_raise_runtime_error() -> None:
    async def nothing() -> AsyncIterator[Event]:
        return
        yield  # an async generator that yields nothing

    loop = Actors({}).loop()
    with pytest.raises(RuntimeError, match=r"^ActorLoop\.spawn before ActorLoop\.run$"):
        loop.spawn("a", nothing())
    with pytest.raises(RuntimeError, match=r"^ActorLoop\.start_soon before ActorLoop\.run$"):
        loop.start_soon(anyio.sleep, 0)


async def test_run_returns_at_once_when_until_already_holds() -> None:
    actors = Actors({"a": lambda _: [WriteScript(step="a")]})
    loop = actors.loop()
    loop.send("a", StudyOpened())
    with anyio.fail_after(GUARD):
        await loop.run(until=lambda: True)
    assert ([], []) == (actors.decided, actors.executed)
