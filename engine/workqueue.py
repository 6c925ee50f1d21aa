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
from collections.abc import Callable, Iterable

import anyio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

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

    __slots__ = ("_msg", "data")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.data: bytes = msg.data

    async def ack(self) -> None:
        """Done with it: the stream removes it."""
        try:
            await self._msg.ack()
        except (NatsError, JetStreamError):
            pass  # it comes back to a worker, whose claim of the attempt fails

    async def working(self) -> None:
        """Still on it (resets the redelivery timer)."""
        try:
            await self._msg.in_progress()
        except (NatsError, JetStreamError):
            pass

    async def give_back(self) -> None:
        """Not done: deliver it again (to any worker) at once."""
        try:
            await self._msg.nak()
        except (NatsError, JetStreamError):
            pass


class _Ask:
    """One pull request in flight: its queue, the tasks it may still bring, and when it is
    given up for lost (the server forgot it: a reconnect, a new consumer leader)."""

    __slots__ = ("left", "lost_at", "queue")

    def __init__(self, queue: int, left: int, lost_at: float) -> None:
        self.queue = queue
        self.left = left
        self.lost_at = lost_at


class TaskQueue:
    """This worker's pull requests on its queues' consumers.

    ``free()`` is how many more tasks the worker can take now (its own count: the queue
    keeps none); the queue keeps exactly that many asked for (``ask``, called when a slot
    is given back), in pull requests of its own (``$JS.API.CONSUMER.MSG.NEXT``),
    each answered on a subject of a private inbox, and hands every task to ``on_task``
    in the delivery callback itself, with no task or fetch in between (a chain's next
    step starts a few tenths of a millisecond sooner). A request lasts ``EXPIRES``
    seconds and is renewed. With several queues, the requests go to the queue that
    last gave a task, then, as they expire empty, to the next ones in turn.
    """

    EXPIRES = 0.5
    """Seconds a pull request waits on its queue (then the next queue is asked)."""

    def __init__(self, bus: Bus, queues: Iterable[str], *,
                 on_task: Callable[[Delivery], None], free: Callable[[], int],
                 ack_wait: float = 30.0) -> None:
        self._bus = bus
        self._queues = list(queues)
        self._on_task = on_task
        self._free = free
        self._ack_wait = ack_wait
        self._sub: Subscription | None = None
        self._inbox = ""
        self._asks: dict[str, _Ask] = {}  # by request id, oldest first
        self._by_subject = {subjects.tasks(q): i for i, q in enumerate(self._queues)}
        self._next = 0  # the queue asked first
        self._seq = 0

    async def open(self) -> None:
        """Make (or find) each queue's shared durable consumer, and listen for tasks.

        Raises:
            BusError: a consumer could not be made.
        """
        js = self._bus.jetstream
        for queue in self._queues:
            durable = _durable(queue)
            try:
                try:
                    await js.consumer_info(TASKS_STREAM, durable)
                except NotFoundError:
                    await js.add_consumer(TASKS_STREAM, ConsumerConfig(
                        durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=self._ack_wait, max_ack_pending=-1,
                        filter_subject=subjects.tasks(queue)))
            except (NatsError, JetStreamError) as exc:
                raise BusError(f"cannot take tasks of queue {queue!r}: {exc}",
                               self._bus.url) from exc
        nc = self._bus.client
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._arrived)

    async def close(self) -> None:
        """Take no more tasks (the server drops the requests no one listens to any more;
        the consumers stay, for the other workers and the next start)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except (NatsError, JetStreamError):
                pass

    async def keep_asking(self, every: float = 0.25) -> None:
        """Run forever: give up the requests the server forgot, and ask again."""
        while True:
            await anyio.sleep(every)
            now = time.monotonic()
            for rid in [rid for rid, ask in self._asks.items() if ask.lost_at < now]:
                del self._asks[rid]
            await self.ask()

    async def ask(self) -> None:
        """Ask for as many tasks as the worker has room for and are not asked yet."""
        want = self._free() - sum(ask.left for ask in self._asks.values())
        if want <= 0 or self._sub is None:
            return
        # Several queues and room for several tasks: one request per queue, from the
        # queue that last gave a task on.
        n = len(self._queues)
        share = [want // n + (1 if i < want % n else 0) for i in range(n)]
        for i, batch in enumerate(share):
            if batch <= 0:
                continue
            queue = (self._next + i) % n
            self._seq += 1
            rid = str(self._seq)
            self._asks[rid] = _Ask(queue, batch, time.monotonic() + self.EXPIRES + 0.5)
            request = b'{"batch":%d,"expires":%d}' % (batch, int(self.EXPIRES * 1e9))
            try:
                await self._bus.client.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{_durable(self._queues[queue])}",
                    request, reply=f"{self._inbox}.{rid}")
            except NatsError:
                del self._asks[rid]  # disconnected: keep_asking asks again
                return

    async def _arrived(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:  # a request ended (on its own reply subject): expired (408), or refused
            rid = msg.subject.rpartition(".")[2]  # (409: a new consumer leader...)
            ask = self._asks.pop(rid, None) if status != "100" else None  # (100: heartbeat)
            if ask is not None and status == "408":  # expired empty: the next queue first
                if ask.queue == self._next:
                    self._next = (ask.queue + 1) % len(self._queues)
                await self.ask()
            return  # (any other status: keep_asking asks again, a moment later)
        # A task, on its own subject: it used up one task of the oldest request on its queue
        # (which of them the server filled does not matter: they are counted together).
        queue = self._by_subject.get(msg.subject)
        for rid, ask in self._asks.items():
            if ask.queue == queue:
                self._next = queue  # a queue with work: asked first again
                ask.left -= 1
                if ask.left <= 0:
                    del self._asks[rid]
                break
        if self._sub is None:  # closed: back to the queue at once, for another worker
            await Delivery(msg).give_back()
            return
        self._on_task(Delivery(msg))
