"""The bus: with ``engine.kvbucket`` (its store half), the only code that touches nats-py.

``open_bus(url, ...)`` connects (with optional user/password, token, creds file or TLS)
and yields a ``Bus``. Messages are ``engine.messages`` Structs encoded as JSON. Events are
published without a round trip each, each proven stored by the server before it is
forgotten (``Bus.publish_event``, in ``engine.busevents``). ``Bus.key_value`` opens a JetStream key-value bucket as a
``engine.kvbucket.KeyValueBucket``, in which ``engine.store`` keeps the engine's state.
nats-py's errors become ``BusError`` (the bus) and ``StoreError``/``StoreConflict`` (a bucket).
"""

from __future__ import annotations

import contextlib
import errno
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from engine.busevents import DurableEvents
from engine.errors import BusError, StoreError
from engine.kvbucket import KeyValueBucket, store_errors
from engine.messages import (BUS_DECODER, ENCODER, AnyBusMessage, BusMessage, ControlReply,
                             new_event_id)

__all__ = ["Bus", "Credentials", "KeyValueBucket", "open_bus", "placed"]

T = TypeVar("T")


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """How to authenticate to a NATS server (all optional)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None


class Bus(DurableEvents):
    """A connected NATS client speaking Troupe's messages."""

    def __init__(self, nc: Client, url: str, on_closed: list[Callable[[], None]] | None = None,
                 denied: list[str] | None = None) -> None:
        self._nc = nc
        # The server's "Permissions Violation" errors (nats-py reports them apart).
        self._denied = denied if denied is not None else []
        # Called once the connection is closed for good (nats-py's closed_cb).
        self._on_closed = on_closed if on_closed is not None else []
        self._js = nc.jetstream()
        self.url = url
        self._init_events()

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context (for ``engine.workqueue`` and ``engine.kvbucket``)."""
        return self._js

    @property
    def client(self) -> Client:
        """The nats-py client (for ``engine.workqueue``'s own pull requests)."""
        return self._nc

    async def key_value(self, bucket: str, *, history: int, replicas: int = 1) -> KeyValueBucket:
        """Create (or reuse) a file-backed JetStream key-value bucket.

        Args:
            bucket: The bucket's name.
            history: How many revisions of each key the server keeps (at most 64).
            replicas: The bucket stream's replicas (1 on a single server).

        Returns:
            The bucket.

        Raises:
            StoreError: the server has no JetStream, refused the configuration, or did
                not answer.
        """
        cfg = KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE,
                             replicas=replicas)
        with store_errors("open", bucket):
            kv = await self._js.create_key_value(cfg)
        return KeyValueBucket(bucket, kv, self._js)

    async def publish(self, subject: str, message: BusMessage) -> None:
        """Publish ``message`` on ``subject`` (core NATS, fire and forget).

        Raises:
            BusError: the connection is closed.
        """
        try:
            await self._nc.publish(subject, ENCODER.encode(message))
        except NatsError as exc:
            raise BusError(f"publish to {subject} failed: {exc}", self.url) from exc

    def cluster_size(self) -> int:
        """How many servers the connected server's cluster has (1: a single server)."""
        info = getattr(self._nc, "_server_info", None) or {}
        return max(1, len(info.get("connect_urls") or [])) if info.get("cluster") else 1

    async def ensure_stream(self, name: str, subjects: list[str], *, replicas: int = 1) -> bool:
        """Create (or reuse) a file-backed stream capturing ``subjects`` (``replicas``
        copies on a cluster).

        Returns:
            False if the server has no JetStream (events are then not durable).
        """
        cfg = StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=replicas,
        )
        self.ack_each = self.ack_each or replicas > 1
        try:
            await self._js.add_stream(cfg)
        except (NatsError, JetStreamError) as exc:
            if "jetstream not enabled" in str(exc).lower() or "503" in str(exc):
                return False
            # Same name with another config: keep the existing stream.
            try:
                await self._js.stream_info(name)
            except (NatsError, JetStreamError):
                raise BusError(f"cannot create stream {name}: {exc}", self.url) from exc
        self.durable = True
        return True

    async def replay_raw(self, subject: str, *, timeout: float = 2.0,
                         stream: str = "TROUPE_EVENTS") -> list[bytes]:
        """Every stored message on ``subject`` (a wildcard is fine), in order, undecoded.
        How many there are is asked first (the stream's count per subject), and that many
        are read: a consumer's own count of what is left can be wrong just after the
        stream changed leader (seen on a cluster: a replay stopped after 7 of 40)."""
        out: list[bytes] = []
        try:
            info = await self._js.stream_info(stream, subjects_filter=subject)
            expected: int | None = sum((info.state.subjects or {}).values())
        except (NatsError, JetStreamError):
            expected = None  # (not that stream): read until nothing is left
        sub = await self._js.subscribe(subject, ordered_consumer=True)
        try:
            while expected is None or len(out) < expected:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except nats.errors.TimeoutError:
                    break
                out.append(msg.data)
                if expected is None and msg.metadata.num_pending == 0:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
        return out

    @asynccontextmanager
    async def subscribe(self, *subjects: str) -> AsyncIterator[AsyncIterator[AnyBusMessage]]:
        """Subscribe to every subject in ``subjects`` and yield one async iterator of the
        decoded messages of all of them (each subject's in order).

        The subscriptions are removed (shielded) when the context exits.
        """
        send, recv = anyio.create_memory_object_stream[bytes](math.inf)

        async def deliver(msg: Msg) -> None:
            send.send_nowait(msg.data)

        async def messages() -> AsyncIterator[AnyBusMessage]:
            async for data in recv:
                yield BUS_DECODER.decode(data)

        def closed() -> None:
            send.close()  # the connection is closed for good: end the iteration

        self._on_closed.append(closed)
        try:
            async with self._subscribed(subjects, deliver):
                yield messages()
        finally:
            self._on_closed.remove(closed)
            send.close()

    @asynccontextmanager
    async def handle(self, *subjects: str,
                     handler: Callable[[AnyBusMessage], None]) -> AsyncIterator[None]:
        """Call ``handler`` with each decoded message on ``subjects``, in the delivery
        callback itself (no task in between: a worker's report reaches its job one task
        switch sooner than through ``subscribe``); a message that does not decode is
        dropped. Unsubscribed (shielded) when the context exits."""

        async def deliver(msg: Msg) -> None:
            try:
                decoded = BUS_DECODER.decode(msg.data)
            except msgspec.MsgspecError:
                return  # not one of ours: nothing to tell
            handler(decoded)

        async with self._subscribed(subjects, deliver):
            yield

    @asynccontextmanager
    async def _subscribed(self, subjects: tuple[str, ...],
                          deliver: Callable[[Msg], Awaitable[None]]) -> AsyncIterator[None]:
        """Subscribe ``deliver`` to each of ``subjects`` (flushed: the server knows of
        them on entry); unsubscribe, shielded, on exit."""
        subs = []
        try:
            for subject in subjects:
                subs.append(await self._nc.subscribe(
                    subject, cb=deliver, pending_msgs_limit=10_000_000,
                    pending_bytes_limit=1 << 30))
            await self._nc.flush()
            yield
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    with contextlib.suppress(NatsError):  # (closed: gone with it)
                        await sub.unsubscribe()

    async def request(
        self, subject: str, message: BusMessage, *, timeout: float = 5.0
    ) -> AnyBusMessage:
        """Send a request and return the decoded reply.

        Raises:
            BusError: nobody answered within ``timeout`` seconds, or the bus failed.
        """
        try:
            msg = await self._nc.request(subject, ENCODER.encode(message), timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise BusError(f"nobody serves {subject}", self.url) from exc
        except nats.errors.TimeoutError as exc:
            if self._denied:  # not allowed to ask at all: say so, not "no reply"
                raise BusError(f"the server refused it: {self._denied[-1]}", self.url) from exc
            raise BusError(f"no reply on {subject} within {timeout} s", self.url) from exc
        except NatsError as exc:
            raise BusError(f"request on {subject} failed: {exc}", self.url) from exc
        return BUS_DECODER.decode(msg.data)

    @asynccontextmanager
    async def serve(
        self, subject: str, *, queue: str = ""
    ) -> AsyncIterator[AsyncIterator[tuple[AnyBusMessage, Callable[[BusMessage], Awaitable[None]]]]]:
        """Yield an iterator of ``(request, reply)`` pairs for requests on ``subject``
        (with ``queue``, each request goes to one member of that queue group).

        Undecodable requests are answered with an error reply and skipped.
        """
        sub = await self._nc.subscribe(subject, queue=queue)

        async def requests() -> AsyncIterator[tuple[AnyBusMessage, Callable[[BusMessage], Awaitable[None]]]]:
            async for msg in sub.messages:
                async def reply(answer: BusMessage, _msg: Msg = msg) -> None:
                    if _msg.reply:
                        await self._nc.publish(_msg.reply, ENCODER.encode(answer))
                try:
                    decoded = BUS_DECODER.decode(msg.data)
                except msgspec.DecodeError as exc:
                    await reply(ControlReply(event_id=new_event_id(), ok=False,
                                             detail=f"bad request: {exc}"))
                    continue
                yield decoded, reply

        try:
            await self._nc.flush()
            yield requests()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await sub.unsubscribe()
                except NatsError:
                    pass  # connection already closed: the subscription is gone with it

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the server has processed everything published so far."""
        try:
            await self._nc.flush(timeout=timeout)
        except NatsError as exc:
            raise BusError(f"flush failed: {exc}", self.url) from exc


_CONNECT_TRIES = 3


def _transient(exc: Exception) -> bool:
    """A connection error worth another try: dropped half-way, not refused."""
    if "authorization" in str(exc).lower() or (
            isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED):
        return False
    return isinstance(exc, (OSError, TimeoutError, NatsError))


async def placed(make: Callable[[], Awaitable[T]], patience: float = 30.0) -> T:
    """``make()`` (a stream, a bucket, a consumer to create), asked again for up to
    ``patience`` seconds while the cluster has no room for its replicas yet ("no
    suitable peers for placement": a server of a cluster just started, or restarted, has
    not joined its JetStream group yet); any other refusal is raised at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await make()
        except (BusError, StoreError) as exc:
            if "no suitable peers" not in str(exc) or time.monotonic() > deadline:
                raise
        await anyio.sleep(0.5)


@asynccontextmanager
async def open_bus(
    url: str,
    credentials: Credentials | None = None,
    *,
    connect_timeout: float = 2.0,
    name: str = "troupe",
    max_reconnect_attempts: int = 3,
) -> AsyncIterator[Bus]:
    """Connect to ``url`` and yield a ``Bus``; drain and close on exit.

    Raises:
        BusError: the server cannot be reached or refused the credentials.
    """
    creds = credentials or Credentials()
    kwargs: dict[str, object] = {
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": max_reconnect_attempts,
        "reconnect_time_wait": 0.25,
        "allow_reconnect": True,
        "name": name,
        "pending_size": 64 * 1024 * 1024,
    }
    if creds.user is not None:
        kwargs["user"] = creds.user
        kwargs["password"] = creds.password or ""
    if creds.token is not None:
        kwargs["token"] = creds.token
    if creds.creds_file is not None:
        kwargs["user_credentials"] = creds.creds_file
    if creds.tls_ca is not None:
        kwargs["tls"] = ssl.create_default_context(cafile=creds.tls_ca)
    seen: list[Exception] = []
    failed = [anyio.Event()]
    on_closed: list[Callable[[], None]] = []
    denied: list[str] = []

    async def closed_cb() -> None:
        for callback in list(on_closed):
            callback()

    kwargs["closed_cb"] = closed_cb
    connecting = True

    async def error_cb(exc: Exception) -> None:
        # Given to nats-py once, at connect time, for the connection's whole life (nats-py
        # would print a traceback per error). While connecting, an error ends the attempt
        # and is reported; once connected, nats-py reconnects by itself and a lasting
        # outage surfaces as failed operations (BusError, StoreError), so it is dropped.
        if connecting:
            seen.append(exc)
            if len(seen) - tried[0] >= len(servers):  # every server of the list failed once
                failed[0].set()
        elif "permissions violation" in str(exc).lower():
            denied.append(" ".join(str(exc).split()))

    kwargs["error_cb"] = error_cb
    nc = None
    # A cluster: several URLs, comma-separated; nats-py tries them in turn, and an attempt
    # gives up only once each has failed.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    tried = [0]  # errors seen before this attempt

    async def attempt() -> None:
        nonlocal nc
        try:
            nc = await nats.connect(servers, **kwargs)  # type: ignore[arg-type]
        except (NatsError, OSError, ssl.SSLError, TimeoutError) as exc:
            seen.append(exc)
            failed[0].set()
            return
        scope.cancel()

    # nats-py keeps retrying a refused connection (bad credentials, nobody listening)
    # instead of failing: an attempt gives up at its first error. Refused credentials (but
    # for one try: a server reloading its users, when a study's job user was added, refuses
    # a client connecting at that moment) and a closed port are final; a connection dropped
    # half-way (a busy server closing it) is tried again, within the same deadline.
    with anyio.move_on_after(connect_timeout * 2 + 1) as scope:
        for tries_left in range(_CONNECT_TRIES - 1, -1, -1):
            failed[0] = anyio.Event()
            tried[0] = len(seen)
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt)
                await failed[0].wait()
                tg.cancel_scope.cancel()
            refused = "authorization" in str(seen[-1]).lower()
            if not tries_left or not (_transient(seen[-1]) or
                                      refused and tries_left == _CONNECT_TRIES - 1):
                break
            await anyio.sleep(0.3 if refused else 0.1)
    if nc is None:
        auth = [e for e in seen if "authorization" in str(e).lower()]
        detail = "it refused the credentials (Authorization Violation)" if auth else (
            f"{seen[-1] or type(seen[-1]).__name__}" if seen else "no answer")
        raise BusError(f"cannot connect to NATS at {url}: {detail}", url)
    connecting = False
    try:
        yield Bus(nc, url, on_closed, denied)
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if not nc.is_connected:  # the server is gone: nothing to drain to
                    raise ConnectionResetError
                await nc.drain()
            except (NatsError, OSError):
                try:
                    await nc.close()
                except OSError:  # its socket was already reset
                    pass
