"""The bus: with ``engine.kvbucket`` (its store half), the only code that touches nats-py.

``open_bus(url, ...)`` connects (with optional user/password, token, creds file or TLS)
and yields a ``Bus``. Messages are ``engine.messages`` Structs encoded as JSON. Events are
published without a round trip each; the JetStream stream captures them on the server, and
one event at a time travels with an acknowledgement (a *fence*), which, as JetStream stores
one connection's messages in order, proves every earlier event stored
(``Bus.publish_event``). ``Bus.key_value`` opens a JetStream key-value bucket as a
``engine.kvbucket.KeyValueBucket``, in which ``engine.store`` keeps the engine's state.
nats-py's errors become ``BusError`` (the bus) and ``StoreError``/``StoreConflict`` (a bucket).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from engine.errors import BusError
from engine.kvbucket import KeyValueBucket, store_errors
from engine.messages import (BUS_DECODER, ENCODER, AnyBusMessage, BusMessage, ControlReply,
                             new_event_id)

__all__ = ["Bus", "Credentials", "KeyValueBucket", "open_bus"]


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """How to authenticate to a NATS server (all optional)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None


class Bus:
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
        self.durable = False  # True once ensure_stream found JetStream
        # Events not yet proven stored, in publish order: id -> (subject, payload).
        self._pending: dict[str, tuple[str, bytes]] = {}
        # The one event in flight with an acknowledgement: (id, future, sent, epoch).
        self._fence: tuple[str, asyncio.Future[Any] | None, float, int] | None = None
        self._resend = False
        self._slow = 0  # fences in a row that came too late (see _check_fence)
        # On a replicated stream a fence proves nothing about the events before it (a new
        # leader may lack them): each event is then acknowledged on its own, pipelined.
        self.ack_each = False
        self._acks: dict[str, tuple[asyncio.Future[Any] | None, float, int]] = {}
        # Why the last publication failed (it is re-sent); wait_persisted's error names it.
        self._last_publish_error = ""

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context (for ``engine.workqueue`` and ``engine.kvbucket``)."""
        return self._js

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

    async def publish_event(self, subject: str, message: BusMessage, *,
                            fence: bool = False) -> None:
        """Publish an event so that it reaches the stream exactly once, whatever happens
        to the connection, without a round trip per event.

        Every event carries its ``event_id`` as JetStream's message id (the server drops
        a copy it has stored already). At most one event at a time is published with an
        acknowledgement (the *fence*); the others go out as plain NATS messages. As the
        server stores one connection's messages in order, the fence's acknowledgement
        proves every event published before it stored. Events not yet proven stored are
        kept, and published again (in order, then a new fence) when a fence fails, the
        connection was re-established, or six fences in a row came too late (a late one
        is first replaced by the next fence, waited for twice as long: a server with a
        backlog of fsyncs is slow, not lossy). Without JetStream this is ``publish``."""
        if not self.durable:
            await self.publish(subject, message)
            return
        payload = ENCODER.encode(message)
        self._pending[message.event_id] = (subject, payload)
        if self.ack_each:
            self._check_acks(ack_timeout=3.0)
            if self._resend:
                await self._resend_pending()
            else:
                await self._send_acked(message.event_id, subject, payload)
            return
        self._check_fence(ack_timeout=3.0)
        if self._resend:
            await self._resend_pending()
        elif self._fence is None or fence:
            await self._send_fence(message.event_id, subject, payload)
        else:
            await self._send_plain(message.event_id, subject, payload)

    def _check_fence(self, ack_timeout: float) -> None:
        """Trim what the fence proved stored; ask for a re-send if it failed."""
        fence = self._fence
        if fence is None:
            return
        msg_id, fut, sent, epoch = fence
        if epoch != self._epoch():  # sent before a reconnect: unknown (its ack never comes)
            self._fence, self._resend = None, True
            if fut is not None:
                fut.cancel()
        elif fut is None:
            self._fence, self._resend = None, True  # could not even be sent
        elif not fut.done():
            if time.monotonic() - sent > ack_timeout * 2**self._slow:
                fut.cancel()  # frees nats-py's slot; a new fence or the re-send replaces it
                self._slow += 1  # late, same connection: a slow server; ask again first
                self._fence, self._resend = None, self._slow > _SLOW_FENCES
        elif fut.cancelled() or fut.exception() is not None:
            self._fence, self._resend = None, True
        else:
            self._fence, self._slow = None, 0
            for key in list(self._pending):  # insertion order: publish order
                del self._pending[key]
                if key == msg_id:
                    break

    def _check_acks(self, ack_timeout: float) -> None:
        """``ack_each``: forget the events acknowledged; ask for a re-send if one failed."""
        now, epoch = time.monotonic(), self._epoch()
        for msg_id in list(self._pending):
            if msg_id not in self._acks:
                continue  # not sent yet
            fut, sent, at = self._acks[msg_id]
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                del self._pending[msg_id]
                self._acks.pop(msg_id, None)
            elif (fut is None or at != epoch or (fut.done() and (fut.cancelled() or fut.exception()))
                  or (not fut.done() and now - sent > ack_timeout)):
                if fut is not None and not fut.done():
                    fut.cancel()
                self._resend = True

    async def _send_acked(self, msg_id: str, subject: str, payload: bytes) -> None:
        old = self._acks.get(msg_id, (None,))[0]
        if old is not None:  # replaced by this re-send: nats-py holds one of 4,000 permits
            old.cancel()  # per future, and a lost ack would never give it back
        try:
            fut = await self._js.publish_async(subject, payload, wait_stall=_STALL,
                                               headers={"Nats-Msg-Id": msg_id})
            fut.add_done_callback(_retrieved)
        except (NatsError, JetStreamError) as exc:
            fut = None  # _check_acks asks for a re-send
            self._last_publish_error = str(exc)
        self._acks[msg_id] = (fut, time.monotonic(), self._epoch())

    def _epoch(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    async def _send_plain(self, msg_id: str, subject: str, payload: bytes) -> None:
        try:
            await self._nc.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        except NatsError as exc:
            self._last_publish_error, self._resend = str(exc), True

    async def _send_fence(self, msg_id: str, subject: str, payload: bytes) -> None:
        try:
            fut = await self._js.publish_async(subject, payload, wait_stall=_STALL,
                                               headers={"Nats-Msg-Id": msg_id})
            fut.add_done_callback(_retrieved)
        except (NatsError, JetStreamError) as exc:
            fut = None  # _check_fence asks for a re-send
            self._last_publish_error = str(exc)
        self._fence = (msg_id, fut, time.monotonic(), self._epoch())

    async def _resend_pending(self) -> None:
        """Publish every event not proven stored again, in order, the last as a fence
        (``ack_each``: each with its own acknowledgement)."""
        if not self._nc.is_connected:
            return  # nats-py is reconnecting: try again later
        self._resend = False
        items = list(self._pending.items())
        if self.ack_each:
            for msg_id, (subject, payload) in items:
                await self._send_acked(msg_id, subject, payload)
            return
        for msg_id, (subject, payload) in items[:-1]:
            await self._send_plain(msg_id, subject, payload)
        if items:
            msg_id, (subject, payload) = items[-1]
            await self._send_fence(msg_id, subject, payload)

    async def redeliver(self, *, interval: float = 0.5, ack_timeout: float = 3.0) -> None:
        """Run forever: check the fence, publish what is not proven stored again."""
        while True:
            await anyio.sleep(interval)
            await self._redeliver_once(ack_timeout)

    async def _redeliver_once(self, ack_timeout: float) -> None:
        if self.ack_each:
            self._check_acks(ack_timeout)
        else:
            self._check_fence(ack_timeout)
        if self._resend:
            await self._resend_pending()

    async def wait_persisted(self, event_id: str = "", timeout: float = 30.0) -> None:
        """Wait until the event ``event_id`` (default: the newest one published so far)
        and every event published before it are stored. Events published meanwhile (by
        other studies on the same connection) are not waited for.

        Best called for an event published with ``fence=True`` (``study_ended``): its own
        acknowledgement is the proof. Otherwise the event is published again as a fence
        (a copy a live subscriber may see).

        Raises:
            BusError: it is still not acknowledged after ``timeout`` seconds.
        """
        mark = event_id or next(reversed(self._pending), "")
        # ack_each: the events up to ``mark``, each proven by its own acknowledgement.
        through: list[str] = []
        for key in self._pending if self.ack_each and mark in self._pending else ():
            through.append(key)
            if key == mark:
                break

        def unproven() -> bool:
            if self.ack_each:
                return any(key in self._pending for key in through)
            return mark in self._pending

        with anyio.move_on_after(timeout):
            while self.ack_each and unproven():
                await self._redeliver_once(ack_timeout=1.0)
                waiting = [a[0] for a in self._acks.values() if a[0] is not None and not a[0].done()]
                if waiting:
                    with anyio.move_on_after(0.25):
                        await _settled(waiting[-1])
                else:
                    await anyio.sleep(0.01)
            while not self.ack_each and mark in self._pending:
                await self._redeliver_once(ack_timeout=1.0)
                fence = self._fence
                if mark not in self._pending:
                    break
                if fence is not None and fence[1] is not None:
                    with anyio.move_on_after(0.25):
                        await _settled(fence[1])
                    self._check_fence(ack_timeout=1.0)
                elif fence is None and not self._resend:
                    # Nothing in flight proves it (the last fence came before it).
                    await self._send_fence(mark, *self._pending[mark])
                else:
                    await anyio.sleep(0.01)
        if unproven():
            cause = self._last_publish_error
            raise BusError(f"event {mark} and earlier ones not acknowledged by JetStream "
                           f"within {timeout:g} s" + (f" (last error: {cause})" if cause else ""),
                           self.url)

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
        subs = []

        async def deliver(msg: Msg) -> None:
            send.send_nowait(msg.data)

        async def messages() -> AsyncIterator[AnyBusMessage]:
            async for data in recv:
                yield BUS_DECODER.decode(data)

        def closed() -> None:
            send.close()  # the connection is closed for good: end the iteration

        self._on_closed.append(closed)
        try:
            for subject in subjects:
                subs.append(await self._nc.subscribe(
                    subject, cb=deliver, pending_msgs_limit=10_000_000,
                    pending_bytes_limit=1 << 30))
            await self._nc.flush()
            yield messages()
        finally:
            self._on_closed.remove(closed)
            send.close()
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
_STALL = 5.0  # seconds a publish waits for a free acknowledgement slot, then is re-sent
_SLOW_FENCES = 5  # late fences in a row forgiven (waited 1, 2, 4, 8, 16 times the timeout)


def _transient(exc: Exception) -> bool:
    """A connection error worth another try: dropped half-way, not refused."""
    if "authorization" in str(exc).lower() or (
            isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED):
        return False
    return isinstance(exc, (OSError, TimeoutError, NatsError))


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a publication's outcome as read (its failure is handled by a re-send)."""
    if not fut.cancelled():
        fut.exception()


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait until ``fut`` is done, whatever its outcome (without consuming it)."""
    await asyncio.wait([fut])


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
