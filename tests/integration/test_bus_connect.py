"""Connecting: a connection the server drops half-way is tried again, a few times,
then fails with one line. Against a real nats-server,
behind a proxy that drops the first connections it accepts (the fault injected)."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import SocketStream

from engine.bus import open_bus
from engine.errors import BusError


async def _pipe(src: SocketStream, dst: SocketStream) -> None:
    try:
        async for chunk in src:
            await dst.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await dst.aclose()


async def _proxy(target: str, drops: int, task_status) -> None:  # type: ignore[no-untyped-def]
    host, port = target.removeprefix("nats://").rsplit(":", 1)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    accepted = 0

    async def serve(client: SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        if accepted <= drops:
            # Say hello like a server, then hang up: the client sees "Connection lost".
            upstream = await anyio.connect_tcp(host, int(port))
            await client.send(await upstream.receive())
            await upstream.aclose()
            await client.aclose()
            return
        upstream = await anyio.connect_tcp(host, int(port))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pipe, client, upstream)
            tg.start_soon(_pipe, upstream, client)

    task_status.started((listener.extra(anyio.abc.SocketAttribute.local_port), lambda: accepted))
    await listener.serve(serve)


async def test_a_dropped_connection_is_tried_again(nats_server: str) -> None:
    async with anyio.create_task_group() as tg:
        port, accepted = await tg.start(_proxy, nats_server, 1)
        async with open_bus(f"nats://127.0.0.1:{port}") as bus:
            kv = await bus.key_value("probe", history=1)
            assert 1 == await kv.put("k", b"v")
        assert 2 == accepted()
        tg.cancel_scope.cancel()


async def test_a_server_that_keeps_dropping_fails_with_one_line(nats_server: str) -> None:
    async with anyio.create_task_group() as tg:
        port, accepted = await tg.start(_proxy, nats_server, 100)
        with pytest.raises(BusError, match="cannot connect to NATS at .*: "):
            async with open_bus(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0):
                pass
        assert 3 == accepted()
        tg.cancel_scope.cancel()
