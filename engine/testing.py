"""Fakes shipped with the engine for tests: an in-memory bus with NATS subject matching.

``FakeBus`` has the ``Bus`` interface that ``StudyRuntime`` uses (``publish``,
``publish_event``, ``wait_persisted``, ``subscribe``, ``serve``, ``request``, ``flush``, ``ensure_stream``,
``durable``) and delivers
messages to subscribers through anyio memory object streams, matching subjects with NATS
wildcard rules (``*`` one token, ``>`` the rest). Everything published is kept in
``published`` for assertions.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from engine.errors import BusError
from engine.messages import AnyBusMessage, BusMessage

__all__ = ["FakeBus", "subject_matches"]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` matches one token, a final ``>`` one or more."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, tok in enumerate(pat):
        if tok == ">":
            return len(sub) > i
        if i >= len(sub) or (tok != "*" and tok != sub[i]):
            return False
    return len(pat) == len(sub)


class FakeBus:
    """An in-process stand-in for ``engine.bus.Bus``."""

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable
        self.url = "fake://"
        self.published: list[tuple[str, BusMessage]] = []
        self._subs: list[tuple[str, MemoryObjectSendStream[AnyBusMessage]]] = []
        self._servers: list[tuple[str, MemoryObjectSendStream[tuple]]] = []

    async def publish(self, subject: str, message: BusMessage) -> None:
        """Record ``message`` and hand it to every matching subscriber."""
        self.published.append((subject, message))
        sent: set[int] = set()
        for pattern, send in list(self._subs):
            if id(send) not in sent and subject_matches(pattern, subject):
                sent.add(id(send))
                send.send_nowait(message)  # type: ignore[arg-type]

    async def publish_event(self, subject: str, message: BusMessage, *,
                            fence: bool = False) -> None:
        """Like ``publish`` (the fake never loses a message)."""
        await self.publish(subject, message)

    async def wait_persisted(self, event_id: str = "", timeout: float = 30.0) -> None:
        """Everything is 'persisted' at once."""

    async def ensure_stream(self, name: str, subjects: list[str]) -> bool:
        """Pretend the stream exists."""
        return self.durable

    async def flush(self, timeout: float = 10.0) -> None:
        """Nothing is buffered."""

    @asynccontextmanager
    async def subscribe(self, *subjects: str) -> AsyncIterator[AsyncIterator[AnyBusMessage]]:
        """Yield an iterator over the messages published on any of ``subjects`` from now
        on."""
        send, recv = anyio.create_memory_object_stream[AnyBusMessage](math.inf)
        entries = [(subject, send) for subject in subjects]
        self._subs.extend(entries)
        try:
            yield recv
        finally:
            for entry in entries:
                self._subs.remove(entry)
            send.close()  # ends the iteration of whoever still reads it

    async def request(self, subject: str, message: BusMessage, *, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        """Deliver ``message`` to the server of ``subject`` and return its reply."""
        for pattern, handler in list(self._servers):
            if subject_matches(pattern, subject):
                send, recv = anyio.create_memory_object_stream[BusMessage](1)

                async def reply(answer: BusMessage) -> None:
                    await send.send(answer)

                handler.send_nowait((message, reply))
                with anyio.fail_after(timeout):
                    return await recv.receive()
        raise BusError(f"nobody serves {subject}", self.url)

    @asynccontextmanager
    async def serve(self, subject: str):  # type: ignore[no-untyped-def]
        """Yield an iterator of ``(request, reply)`` pairs sent with ``request``."""
        send, recv = anyio.create_memory_object_stream[tuple](math.inf)
        entry = (subject, send)
        self._servers.append(entry)
        try:
            yield recv
        finally:
            self._servers.remove(entry)
            send.close()
