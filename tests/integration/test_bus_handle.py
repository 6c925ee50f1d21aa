"""``Bus.handle``: each message of its subjects, decoded, to a handler called in the
delivery callback; what does not decode is dropped, and the handler hears the rest.
Against a real nats-server."""

from __future__ import annotations

import anyio

from engine.bus import open_bus
from engine.messages import JobReported, new_event_id


async def test_a_handler_hears_every_message_and_nothing_that_does_not_decode(
        nats_server: str) -> None:
    heard: list[object] = []
    async with open_bus(nats_server) as bus, bus.handle("r.a", "r.b", handler=heard.append):
        await bus.client.publish("r.a", b"not json at all")
        await bus.client.publish("r.b", b'{"type": "no such message"}')
        for i, subject in enumerate(("r.a", "r.b", "r.other")):
            await bus.publish(subject, JobReported(event_id=new_event_id(),
                                                   exit_file=f"e{i}", exit_code=i))
        await bus.flush()
        with anyio.fail_after(10):
            while len(heard) < 2:
                await anyio.sleep(0.01)
        await bus.flush()  # (anything more would have come before the flush's answer)
    assert [(m.exit_file, m.exit_code) for m in heard] == [("e0", 0), ("e1", 1)]  # type: ignore[attr-defined]
