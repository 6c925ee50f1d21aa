"""Running the dashboard: its socket, its token, its NATS connection and uvicorn.

``bind_socket`` takes the port first (a busy port is a ``ConfigError`` before anything
starts); ``run_dashboard`` connects as the monitor user, starts the ``Monitor``, the
``Hub`` and uvicorn on that socket, prints ``http://HOST:PORT/?token=…`` on stderr and
writes it to ``<state dir>/dashboard.json`` (mode 0600, removed at the end), then serves
until cancelled or ``stop`` is set. It runs alone (``enginectl dashboard``) or inside
``enginectl serve --dashboard PORT``; either way on the caller's asyncio loop, with no
thread and no signal handler of its own.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import structlog
import uvicorn

from engine.bus import Credentials, open_bus
from engine.dashboard.api import build_app
from engine.dashboard.auth import new_token
from engine.dashboard.controls import Controls
from engine.dashboard.hub import Hub
from engine.dashboard.monitor import Monitor
from engine.errors import ConfigError
from engine.statedir import write_private

__all__ = ["DEFAULT_PORT", "bind_socket", "run_dashboard"]

DEFAULT_PORT = 8765


def bind_socket(bind: str, port: int) -> socket.socket:
    """A listening TCP socket on ``bind:port`` (port 0: any free port).

    Raises:
        ConfigError: the port is in use, or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"the dashboard's port {port} on {bind} is in use; choose "
                              "another with --port") from exc
        raise ConfigError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller owns SIGTERM and SIGINT
    (``enginectl serve`` stops gracefully on them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def dashboard_url(sock: socket.socket, token: str) -> str:
    """The address to open: ``http://HOST:PORT/?token=…``."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


async def run_dashboard(
    sock: socket.socket,
    url: str,
    credentials: Credentials,
    *,
    state_dir: Path | None = None,
    token: str | None = None,
    stop: anyio.Event | None = None,
    interval: float = 0.075,
) -> None:
    """Serve the dashboard on ``sock`` until cancelled or ``stop`` is set.

    Args:
        sock: From :func:`bind_socket`.
        url: The engine's NATS server.
        credentials: The monitor user's (read-only).
        state_dir: Where to write ``dashboard.json`` (its address with the token).
        token: The token (default: a new random one).
        stop: Set to end the dashboard.
        interval: Seconds between two coalesced updates to the pages.

    Raises:
        BusError: the NATS server cannot be reached or refused the credentials.
    """
    log = structlog.get_logger("troupe.dashboard")
    token = token or new_token()
    async with open_bus(url, credentials, name="troupe-dashboard",
                        max_reconnect_attempts=-1) as bus:
        monitor = Monitor(bus)
        hub = Hub(monitor, interval=interval)
        controls = Controls(url, tls_ca=credentials.tls_ca)
        app = build_app(monitor, hub, controls, token=token)
        server = _Server(uvicorn.Config(app, lifespan="off", log_config=None,
                                        access_log=False, timeout_graceful_shutdown=2,
                                        log_level="warning"))
        info = state_dir / "dashboard.json" if state_dir is not None else None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(monitor.run)
                tg.start_soon(hub.run)
                address = dashboard_url(sock, token)
                if info is not None:
                    write_private(info, {"url": address, "token": token})
                print(f"troupe dashboard: {address}", file=sys.stderr, flush=True)
                log.info("dashboard_started", address=address.split("?")[0])

                async def until_stopped() -> None:
                    if stop is not None:
                        await stop.wait()
                        server.should_exit = True

                tg.start_soon(until_stopped)
                try:
                    await server.serve(sockets=[sock])
                finally:
                    server.should_exit = True
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await controls.aclose()
            if info is not None:
                info.unlink(missing_ok=True)
            log.info("dashboard_stopped")
