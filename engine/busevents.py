"""The bus's durable events: ``Bus.publish_event`` and what proves an event stored.

Events are published without a round trip each; the JetStream stream captures them on
the server, and one event at a time travels with an acknowledgement (a *fence*), which,
as JetStream stores one connection's messages in order, proves every earlier event stored.
On a replicated stream (``ack_each``) a fence proves nothing about the events before it (a
new leader may lack them): each event is then acknowledged on its own, pipelined. Events
not yet proven stored are kept and published again. A mixin of ``engine.bus.Bus`` (it uses
the bus's connection), kept apart so that each module stays readable; with
``engine.bus``, ``engine.kvbucket`` and ``engine.workqueue``, the only code that touches
nats-py.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import anyio
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from engine.errors import BusError
from engine.messages import ENCODER, BusMessage

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

__all__ = ["DurableEvents"]

_STALL = 5.0  # seconds a publish waits for a free acknowledgement slot, then is re-sent
_SLOW_FENCES = 5  # late fences in a row forgiven (waited 1, 2, 4, 8, 16 times the timeout)


class DurableEvents:
    """The durable half of ``Bus`` (see the module docstring)."""

    _nc: Client
    _js: JetStreamContext
    url: str

    def _init_events(self) -> None:
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

    if TYPE_CHECKING:
        async def publish(self, subject: str, message: BusMessage) -> None: ...

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
        fut = await self._with_ack(msg_id, subject, payload)  # (None: _check_acks re-sends)
        self._acks[msg_id] = (fut, time.monotonic(), self._epoch())

    async def _with_ack(self, msg_id: str, subject: str,
                        payload: bytes) -> asyncio.Future[Any] | None:
        """Publish with an acknowledgement to come; None: it could not even be sent."""
        try:
            fut = await self._js.publish_async(subject, payload, wait_stall=_STALL,
                                               headers={"Nats-Msg-Id": msg_id})
        except (NatsError, JetStreamError) as exc:
            self._last_publish_error = str(exc)
            return None
        fut.add_done_callback(_retrieved)
        return fut

    def _epoch(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    async def _send_plain(self, msg_id: str, subject: str, payload: bytes) -> None:
        try:
            await self._nc.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        except NatsError as exc:
            self._last_publish_error, self._resend = str(exc), True

    async def _send_fence(self, msg_id: str, subject: str, payload: bytes) -> None:
        fut = await self._with_ack(msg_id, subject, payload)  # (None: _check_fence re-sends)
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


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a publication's outcome as read (its failure is handled by a re-send)."""
    if not fut.cancelled():
        fut.exception()


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait until ``fut`` is done, whatever its outcome (without consuming it)."""
    await asyncio.wait([fut])
