"""The bus's work-queue half: step tasks for workers (``enginectl worker``).

One JetStream stream, ``TROUPE_TASKS``, with work-queue retention, holds the tasks of
every queue (``troupe.v1.tasks.<queue>``): a message is removed once a worker
acknowledged it. The engine publishes a task with the attempt's key as its message id
(a retried publish is dropped by the server); each queue has one durable pull consumer,
shared by every worker of that queue, which delivers a task to one worker at a time and
again if that worker neither acknowledged it nor said it is still working on it within
``ack_wait``. The engine also keeps one *anchor* message in the stream, on a subject no
queue can have (``anchor_task_stream``), so that the stream is never empty: an empty
work-queue stream deletes its block file, and the next task creates a new one, a file
created and deleted per task when the queues run dry between tasks (a chain's steps).
With ``engine.bus`` and ``engine.kvbucket``, the only code that touches nats-py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import anyio
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError

from engine import subjects
from engine.bus import Bus
from engine.errors import BusError

__all__ = ["ANCHOR", "TASKS_STREAM", "Delivery", "TaskQueue", "anchor_task_stream",
           "ensure_task_stream", "publish_task"]

TASKS_STREAM = "TROUPE_TASKS"
ANCHOR = f"{subjects.PREFIX}.tasks.~anchor"
"""The anchor's subject: ``~anchor`` is no output of ``subjects.encode_token``, so no
queue's consumer ever takes it."""


def _durable(queue: str) -> str:
    return "workers-" + subjects.kv_key(queue).replace(".", "_").replace("/", "_").replace("=", "_")


async def ensure_task_stream(bus: Bus, *, replicas: int | None = None) -> None:
    """Create (or reuse) the tasks stream (3 replicas on a cluster of 3 or more, unless
    told).

    Raises:
        BusError: the server has no JetStream, or the stream cannot be made.
    """
    if replicas is None:
        replicas = 3 if bus.cluster_size() >= 3 else 1
    cfg = StreamConfig(name=TASKS_STREAM, subjects=[subjects.tasks(">")],
                       storage=StorageType.FILE, retention=RetentionPolicy.WORK_QUEUE,
                       num_replicas=replicas, duplicate_window=120.0)
    js = bus.jetstream
    try:
        await js.add_stream(cfg)
    except (NatsError, JetStreamError) as exc:
        try:
            await js.stream_info(TASKS_STREAM)
        except (NatsError, JetStreamError):
            raise BusError(f"cannot create stream {TASKS_STREAM}: {exc}", bus.url) from exc


async def anchor_task_stream(bus: Bus) -> None:
    """Put the anchor in the tasks stream unless it is there (the server refuses a second
    one: the subject's last sequence must be 0). Best effort: without it tasks still flow,
    each in a block file of its own."""
    try:
        await bus.jetstream.publish(ANCHOR, b"", timeout=5.0,
                                    headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    except (NatsError, JetStreamError):
        pass  # there already (wrong last sequence), or the server is busy: tasks flow anyway


async def publish_task(bus: Bus, queue: str, payload: bytes, *, key: str,
                       patience: float = 60.0) -> None:
    """Put one task on ``queue`` (acknowledged by the server; ``key`` deduplicates).

    A stream without a leader for a moment (a server of the cluster died, an election
    runs) is asked again, with a growing pause, for up to ``patience`` seconds: the
    message id makes a repeated publish harmless.

    Raises:
        BusError: the server did not store it.
    """
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        try:
            await bus.jetstream.publish(subjects.tasks(queue), payload, timeout=5.0,
                                        headers={"Nats-Msg-Id": key})
            return
        except (NatsError, JetStreamError) as exc:
            if isinstance(exc, MaxPayloadError) or time.monotonic() + pause > deadline:
                raise BusError(f"cannot queue the task {key} on {queue!r}: {exc}",
                               bus.url) from exc
        await anyio.sleep(pause)
        pause = min(pause * 2, 2.0)


class Delivery:
    """One task delivered to this worker: its payload and how to answer it."""

    __slots__ = ("_msg", "data", "redelivered")

    def __init__(self, msg: object) -> None:
        self._msg = msg
        self.data: bytes = msg.data  # type: ignore[attr-defined]
        self.redelivered = msg.metadata.num_delivered > 1  # type: ignore[attr-defined]

    async def ack(self) -> None:
        """Done with it: the stream removes it."""
        try:
            await self._msg.ack()  # type: ignore[attr-defined]
        except (NatsError, JetStreamError):
            pass  # it comes back to a worker, whose claim of the attempt fails

    async def working(self) -> None:
        """Still on it (resets the redelivery timer)."""
        try:
            await self._msg.in_progress()  # type: ignore[attr-defined]
        except (NatsError, JetStreamError):
            pass

    async def give_back(self) -> None:
        """Not done: deliver it again (to any worker) at once."""
        try:
            await self._msg.nak()  # type: ignore[attr-defined]
        except (NatsError, JetStreamError):
            pass


class TaskQueue:
    """This worker's pull subscriptions to its queues."""

    def __init__(self, bus: Bus, queues: Iterable[str], *, concurrency: int,
                 ack_wait: float = 30.0) -> None:
        self._bus = bus
        self._queues = list(queues)
        self._concurrency = concurrency
        self._ack_wait = ack_wait
        self._subs: list[object] = []

    async def open(self) -> None:
        """Subscribe to each queue's shared durable consumer.

        Raises:
            BusError: a consumer could not be made.
        """
        js = self._bus.jetstream
        for queue in self._queues:
            config = ConsumerConfig(durable_name=_durable(queue), ack_policy=AckPolicy.EXPLICIT,
                                    ack_wait=self._ack_wait, max_ack_pending=-1,
                                    filter_subject=subjects.tasks(queue))
            try:
                sub = await js.pull_subscribe(subjects.tasks(queue), durable=_durable(queue),
                                              stream=TASKS_STREAM, config=config)
            except (NatsError, JetStreamError) as exc:
                raise BusError(f"cannot take tasks of queue {queue!r}: {exc}",
                               self._bus.url) from exc
            self._subs.append(sub)

    async def close(self) -> None:
        """Stop taking tasks (the consumers stay, for the other workers and the next
        start); without it, the connection's drain waits for the pull requests."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except (NatsError, JetStreamError):
                pass
        self._subs = []

    async def take(self, most: int, *, timeout: float = 1.0) -> list[Delivery]:
        """Up to ``most`` tasks from the queues, in the order they are named (waits up to
        ``timeout`` seconds for the first one)."""
        out: list[Delivery] = []
        down = 0
        for sub in self._subs:
            if len(out) >= most:
                break
            try:
                msgs = await sub.fetch(most - len(out), timeout=timeout)  # type: ignore[attr-defined]
            except (NatsTimeoutError, TimeoutError):
                continue
            except (NatsError, JetStreamError):
                down += 1  # the connection is down: nats-py reconnects; ask again later
                continue
            out += [Delivery(m) for m in msgs]
        if down and down == len(self._subs):  # no spinning while it reconnects
            await anyio.sleep(timeout)
        return out
