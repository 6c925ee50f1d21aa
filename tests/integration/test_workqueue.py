"""A worker's side of the work queues (``engine.workqueue.TaskQueue``): its own pull
requests, as many tasks asked for as it has room for, each task handed over in the
delivery callback. Against a real nats-server; the server's consumer state is the proof
of what was asked for."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from engine.bus import Bus, open_bus
from engine.worker import _Worker
from engine.workqueue import (
    TASKS_STREAM,
    Delivery,
    TaskQueue,
    _Ask,
    _durable,
    ensure_task_stream,
    publish_task,
)


class _Slots:
    """The worker's side: its free slots (the queue's only count of its room), one taken
    by each task delivered."""

    def __init__(self) -> None:
        self.free = 0
        self.got: list[Delivery] = []

    def take(self, delivery: Delivery) -> None:
        self.free -= 1
        self.got.append(delivery)


@asynccontextmanager
async def _queue(url: str, queues: list[str], slots: _Slots) -> AsyncIterator[
        tuple[Bus, TaskQueue]]:
    async with open_bus(url) as bus:
        await ensure_task_stream(bus)
        tasks = TaskQueue(bus, queues, on_task=slots.take, free=lambda: slots.free)
        await tasks.open()
        try:
            yield bus, tasks
        finally:
            await tasks.close()


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


async def _put(bus: Bus, queue: str, n: int, tag: str = "t") -> None:
    for i in range(n):
        await publish_task(bus, queue, f"{tag}{i}".encode(), key=f"{tag}-{queue}-{i}")


async def test_a_worker_asks_for_no_more_tasks_than_it_has_room_for(nats_server: str) -> None:
    slots = _Slots()
    got = slots.got
    async with _queue(nats_server, ["q"], slots) as (bus, tasks):
        await _put(bus, "q", 5)
        slots.free = 2
        await tasks.ask()
        await _until(lambda: len(got) == 2)
        await tasks.ask()  # what keep_asking does now and then: no more room, no request
        await bus.flush()
        info = await bus.jetstream.consumer_info(TASKS_STREAM, _durable("q"))
        # Two delivered, three still queued, and no request of ours left waiting.
        assert (info.num_ack_pending, info.num_pending, info.num_waiting) == (2, 3, 0)
        for delivery in got:
            await delivery.ack()
        slots.free += 3  # room for three more: the rest comes
        await tasks.ask()
        await _until(lambda: len(got) == 5)
        assert sorted(d.data for d in got) == [b"t0", b"t1", b"t2", b"t3", b"t4"]


async def test_an_expired_request_is_made_again_and_its_task_still_comes(
        nats_server: str) -> None:
    slots = _Slots()
    got = slots.got
    async with _queue(nats_server, ["q"], slots) as (bus, tasks):
        tasks.EXPIRES = 0.1
        slots.free = 1
        await tasks.ask()
        first = tasks._seq
        await _until(lambda: tasks._seq >= first + 2)  # expired twice, asked again each time
        await _put(bus, "q", 1)
        await _until(lambda: len(got) == 1)
        assert got[0].data == b"t0"


async def test_a_worker_of_two_queues_takes_tasks_from_the_second_one_too(
        nats_server: str) -> None:
    slots = _Slots()
    got = slots.got
    async with _queue(nats_server, ["a", "b"], slots) as (bus, tasks):
        tasks.EXPIRES = 0.1
        slots.free = 1  # one slot: its request goes to "a" first
        await tasks.ask()
        await _put(bus, "b", 1, tag="b")
        await _until(lambda: len(got) == 1)  # "a" expired empty: "b" was asked
        await got[0].ack()
        await _put(bus, "a", 1, tag="a")
        slots.free += 1
        await tasks.ask()
        await _until(lambda: len(got) == 2)
        assert [d.data for d in got] == [b"b0", b"a0"]


async def test_a_request_the_server_forgot_is_given_up_and_made_again(
        nats_server: str) -> None:
    slots = _Slots()
    got = slots.got
    async with _queue(nats_server, ["q"], slots) as (bus, tasks), \
            anyio.create_task_group() as tg:
        # As after a reconnect: the books show a request the server no longer has.
        tasks._asks["lost"] = _Ask(0, 1, time.monotonic() + 0.2)
        slots.free = 1
        await tasks.ask()
        assert tasks._seq == 0  # nothing asked: the lost request seems to cover it
        tg.start_soon(tasks.keep_asking, 0.05)
        await _put(bus, "q", 1)
        await _until(lambda: len(got) == 1)
        assert "lost" not in tasks._asks
        tg.cancel_scope.cancel()


class _Given:
    """A delivery that records what was done with it."""

    def __init__(self) -> None:
        self.data = b"never read"
        self.given_back = False

    async def give_back(self) -> None:
        self.given_back = True


async def test_a_task_delivered_with_no_slot_free_goes_back_to_the_queue() -> None:
    worker = _Worker(None, name="w", concurrency=1, log=None, env={}, mine={})  # type: ignore[arg-type]
    worker.free = 0  # the one slot is taken: a request the server kept brought one more
    given = _Given()
    async with anyio.create_task_group() as tg:
        worker.tg = tg
        worker.on_task(given)  # type: ignore[arg-type]
    assert given.given_back and worker.busy == 0 and worker.free == 0
