"""Events published with ``Bus.publish_event`` reach the stream exactly once: one event at
a time travels with an acknowledgement (the fence), the others without, and whatever a
failed fence leaves unproven is published again (the server drops the duplicates).
Against a real nats-server."""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest
from nats.errors import ConnectionClosedError

from engine import subjects
from engine.bus import Bus, open_bus
from engine.messages import BUS_DECODER, StepState, StepStateChanged, new_event_id

STUDY = "bus-durable"


def _event(i: int) -> StepStateChanged:
    return StepStateChanged(
        event_id=new_event_id(), study_id=STUDY, step=f"s{i}", attempt=1,
        state=StepState.FINISHED, previous=StepState.RUNNING, time=float(i), final=True,
    )


async def _stored_steps(bus: Bus) -> list[str]:
    raw = await bus.replay_raw(subjects.step_events(STUDY), timeout=2.0)
    return [BUS_DECODER.decode(r).step for r in raw]  # type: ignore[union-attr]


async def _publish(bus: Bus, n: int, *, last_fenced: bool = False) -> list[str]:
    names = []
    for i in range(n):
        event = _event(i)
        names.append(event.step)
        await bus.publish_event(subjects.step_event(STUDY, event.step, "finished"), event,
                                fence=last_fenced and i == n - 1)
    return names


async def test_every_event_is_stored_once_with_few_acknowledgements(nats_server: str) -> None:
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        seen: list[str] = []
        async with bus.subscribe(subjects.step_events(STUDY)) as live:
            fences = 0
            real = bus._send_fence

            async def counting(*args: object) -> None:
                nonlocal fences
                fences += 1
                await real(*args)  # type: ignore[arg-type]

            bus._send_fence = counting  # type: ignore[method-assign]
            names = await _publish(bus, 400, last_fenced=True)
            await bus.wait_persisted(timeout=20)
            with anyio.fail_after(10):
                async for event in live:
                    seen.append(event.step)  # type: ignore[union-attr]
                    if len(seen) == len(names):
                        break
        assert names == await _stored_steps(bus)
        assert names == seen, "a live subscriber sees every event once, in order"
        assert 1 <= fences < 400, "events went out without a round trip each"


async def test_events_lost_in_an_outage_are_published_again_in_order(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        plain, with_ack = bus._nc.publish, bus._js.publish_async
        names = await _publish(bus, 100)
        # The outage: plain events vanish on the way and no fence gets through.
        dropped: list[str] = []

        async def lost(subject: str, payload: bytes = b"", **kw: object) -> None:
            dropped.append(subject)

        async def refused(*args: object, **kw: object) -> None:
            raise ConnectionClosedError

        monkeypatch.setattr(bus._nc, "publish", lost)
        monkeypatch.setattr(bus._js, "publish_async", refused)
        names += await _publish(bus, 100)
        # nats-py reconnects: the connection's epoch changes.
        monkeypatch.setattr(bus._nc, "publish", plain)
        monkeypatch.setattr(bus._js, "publish_async", with_ack)
        monkeypatch.setattr(bus, "_epoch", lambda: 1)
        names += [f"late{i}" for i in range(100)]
        for name in names[200:]:
            event = msgspec.structs.replace(_event(0), event_id=new_event_id(), step=name)
            await bus.publish_event(subjects.step_event(STUDY, name, "finished"), event)
        await bus.wait_persisted(timeout=20)
        assert dropped, "the outage dropped events"
        assert names == await _stored_steps(bus), "every event stored once, in order"


async def test_waiting_for_ones_own_events_is_not_held_up_by_a_busy_neighbour(
    nats_server: str,
) -> None:
    # Under serve many studies share one connection: a study that ends waits for its own
    # last event (a fence), not until nobody publishes any more, and sends no copies.
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        seen: list[str] = []
        stop = anyio.Event()

        async def neighbour() -> None:
            i = 0
            while not stop.is_set():
                for _ in range(20):  # bursts: plain events are nearly always pending
                    event = msgspec.structs.replace(_event(0), event_id=new_event_id(),
                                                    step=f"n{i}")
                    await bus.publish_event(
                        subjects.step_event(STUDY, event.step, "finished"), event)
                    i += 1
                await anyio.sleep(0.002)

        async with bus.subscribe(subjects.step_events(STUDY)) as live:
            async with anyio.create_task_group() as tg:
                tg.start_soon(neighbour)
                await anyio.sleep(0.1)
                ours = msgspec.structs.replace(_event(0), event_id=new_event_id(), step="ours")
                await bus.publish_event(subjects.step_event(STUDY, "ours", "finished"), ours,
                                        fence=True)
                with anyio.fail_after(5):
                    await bus.wait_persisted(ours.event_id, timeout=30)
                stop.set()
            await bus.wait_persisted(timeout=20)
            stored = await _stored_steps(bus)
            with anyio.fail_after(10):
                async for event in live:
                    seen.append(event.step)  # type: ignore[union-attr]
                    if len(seen) == len(stored):
                        break
        assert "ours" in stored
        assert len(seen) == len(set(seen)), "no event was sent twice"


async def test_with_ack_each_every_event_is_acknowledged_on_its_own(nats_server: str) -> None:
    # On a replicated stream (ensure_stream with replicas > 1) a fence proves nothing of
    # the events before it; each event is then acknowledged, pipelined.
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        bus.ack_each = True
        acked = 0
        real = bus._send_acked

        async def counting(*args: object) -> None:
            nonlocal acked
            acked += 1
            await real(*args)  # type: ignore[arg-type]

        bus._send_acked = counting  # type: ignore[method-assign]
        names = await _publish(bus, 300)
        await bus.wait_persisted(timeout=20)
        assert names == await _stored_steps(bus)
        assert 300 == acked and not bus._pending


async def test_with_ack_each_an_event_whose_ack_never_came_is_published_again(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        bus.ack_each = True
        with_ack = bus._js.publish_async
        names = await _publish(bus, 50)

        async def refused(*args: object, **kw: object) -> None:
            raise ConnectionClosedError

        monkeypatch.setattr(bus._js, "publish_async", refused)  # the leader is gone
        names += [f"lost{i}" for i in range(50)]
        for name in names[50:]:
            event = msgspec.structs.replace(_event(0), event_id=new_event_id(), step=name)
            await bus.publish_event(subjects.step_event(STUDY, name, "finished"), event)
        assert bus._pending, "those are not proven stored"
        monkeypatch.setattr(bus._js, "publish_async", with_ack)  # a new leader answers
        await bus.wait_persisted(timeout=20)
        assert names == await _stored_steps(bus), "every event stored once, in order"


async def test_a_late_fence_is_asked_again_before_everything_is_published_again(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server with a backlog of fsyncs answers late, but it answers: a late fence is
    # replaced by a new one (waited for twice as long each time); only the sixth late one
    # in a row has every unproven event published again.
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        real = bus._js.publish_async
        held: list[tuple[asyncio.Future[object], asyncio.Future[object]]] = []

        async def late(*args: object, **kw: object) -> asyncio.Future[object]:
            sent = await real(*args, **kw)  # stored by the server; its answer waits here
            answer = asyncio.get_running_loop().create_future()
            held.append((sent, answer))
            return answer

        monkeypatch.setattr(bus._js, "publish_async", late)
        resent = 0
        resend = bus._resend_pending

        async def counting() -> None:
            nonlocal resent
            resent += 1
            await resend()

        monkeypatch.setattr(bus, "_resend_pending", counting)
        names = await _publish(bus, 100)
        for i in range(5):
            await anyio.sleep(0.02 * 2**i + 0.01)
            await bus._redeliver_once(ack_timeout=0.02)
            assert (0, None) == (resent, bus._fence), "dropped, not a re-send"
            event = msgspec.structs.replace(_event(0), event_id=new_event_id(), step=f"n{i}")
            names.append(event.step)  # the next event is the new fence
            await bus.publish_event(subjects.step_event(STUDY, event.step, "finished"), event)
            assert i + 2 == len(held)
        await anyio.sleep(0.02 * 2**5 + 0.01)
        await bus._redeliver_once(ack_timeout=0.02)
        assert 1 == resent, "the sixth late fence in a row: everything again"
        monkeypatch.setattr(bus._js, "publish_async", real)
        for sent, answer in held:
            if not answer.done():
                answer.set_result(await sent)
        await bus.wait_persisted(timeout=20)
        assert names == await _stored_steps(bus), "every event stored once, in order"
        assert not bus._pending


async def test_with_ack_each_a_resent_event_gives_back_its_first_acks_place(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-py holds one of 4,000 places per acknowledgement awaited, and gives it back only
    # when the future is done. While a stream has no leader no ack comes: a re-send must
    # cancel the futures it replaces, or a long election fills the 4,000 and every later
    # publication waits forever (seen: a study stuck after a cluster node was killed).
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        bus.ack_each = True
        awaited: set[asyncio.Future[object]] = set()

        async def unanswered(*args: object, **kw: object) -> asyncio.Future[object]:
            fut = asyncio.get_running_loop().create_future()
            awaited.add(fut)
            fut.add_done_callback(awaited.discard)
            return fut

        monkeypatch.setattr(bus._js, "publish_async", unanswered)  # the leader is gone
        await _publish(bus, 1)
        await anyio.sleep(0.05)
        await _publish(bus, 19)  # younger than the first: not yet late
        await bus._redeliver_once(ack_timeout=0.03)  # the first is late: all 20 again
        assert 20 == len(bus._pending)
        waiting = [fut for fut in awaited if not fut.done()]
        assert 20 == len(waiting), "one awaited acknowledgement per unproven event"
