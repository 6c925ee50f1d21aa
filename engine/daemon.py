"""``enginectl serve``: the engine process, its embedded NATS server and its credentials.

Without ``--nats-url``, ``serve`` starts an embedded nats-server with JetStream
(``sync_interval: always``) under ``<state dir>/nats``, protected by a user and password
created on the first start (``<state dir>/credentials.json``, mode 0600); it writes the
client configuration ``<state dir>/client.json`` (URL, user, password; mode 0600) once
the engine answers requests, which ``enginectl`` reads by default. A client without it cannot submit, cancel or read state.
With ``--nats-url`` the given server and credentials are used (JetStream required).
SIGTERM or SIGINT start a graceful stop; the process exits 0 when it is done.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import structlog

from engine import subjects
from engine.bus import Credentials, open_bus
from engine.errors import BusError
from engine.natsserver import open_embedded_server
from engine.service import EngineService
from engine.store import Store

__all__ = ["serve_forever"]


def _write_private(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _credentials(state_dir: Path) -> tuple[str, str]:
    path = state_dir / "credentials.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["user"], data["password"]
    user, password = "troupe", secrets.token_urlsafe(24)
    _write_private(path, {"user": user, "password": password})
    return user, password


async def serve_forever(
    state_dir: Path,
    *,
    nats_url: str | None = None,
    credentials: Credentials | None = None,
    drain_timeout: float = 30.0,
) -> None:
    """Run the engine until SIGTERM/SIGINT, then stop gracefully.

    Raises:
        BusError: the server cannot be started or reached, or has no JetStream.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = structlog.get_logger("troupe.serve")
    async with AsyncExitStack() as stack:
        client_cfg = state_dir / "client.json"
        client_cfg.unlink(missing_ok=True)  # written again once this engine answers
        if nats_url:
            url, creds = nats_url, credentials or Credentials()
        else:
            user, password = _credentials(state_dir)
            server = await stack.enter_async_context(
                open_embedded_server(state_dir / "nats", auth=(user, password)))
            url, creds = server.url, Credentials(user=user, password=password)
        bus = await stack.enter_async_context(
            open_bus(url, creds, name="troupe-engine", max_reconnect_attempts=-1))
        if not await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()]):
            raise BusError(f"the NATS server at {url} has no JetStream; serve needs it", url)
        store = await Store.open(bus)
        service = EngineService(bus, store, drain_timeout=drain_timeout,
                                notify_user=creds.user, notify_password=creds.password)
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.warning("engine_stop_requested", signal=signal.Signals(signum).name)
                        service.stop()

            tg.start_soon(on_signals)
            log.info("engine_starting", url=url, state_dir=str(state_dir))
            await tg.start(service.serve)
            if not nats_url:
                _write_private(client_cfg, {"url": url, "user": creds.user,
                                            "password": creds.password})
            else:
                _write_private(client_cfg, {"url": url})
            await service.stopped.wait()
            tg.cancel_scope.cancel()
