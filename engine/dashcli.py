"""``enginectl dashboard``: the live dashboard of a running engine, on its own.

It reads the engine's read-only credential from ``<state dir>/monitor.json`` (or takes
``--nats-url`` with a monitor user's credentials), listens on ``--bind`` (127.0.0.1) and
``--port``, and prints the address to open with its token. ``enginectl serve --dashboard
PORT`` runs the same dashboard inside the engine (``engine.daemon``). A busy port, a
missing engine or refused credentials are one ``error:`` line and exit 1.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import click

from engine.client import (
    connection_options,
    default_state_dir,
    read_credentials,
    resolve_connection,
)

__all__ = ["dashboard"]


@click.command()
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8765, show_default=True,
              help="TCP port (0: any free port; the address printed says which).")
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (anyone who can reach it still needs the token).")
@connection_options
def dashboard(port: int, bind: str, **conn: Any) -> None:
    """Serve the live dashboard of the engine's studies; print its address with a token.

    It connects as the engine's read-only monitor user (<state dir>/monitor.json); the
    page's cancel and restart buttons need the client password, pasted into the page."""
    from engine.dashboard.server import bind_socket, run_dashboard

    state_dir: Path | None = None
    if conn.get("nats_url"):
        url, creds = conn["nats_url"], read_credentials(conn)
    else:
        state_dir = Path(conn.get("state_dir") or default_state_dir())
        resolve_connection({"state_dir": str(state_dir)})  # a running engine, or say why not
        url, creds = resolve_connection({"client_file": str(state_dir / "monitor.json")})
    sock = bind_socket(bind, port)

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        stop.set()
                        return

            tg.start_soon(on_signals)
            await run_dashboard(sock, url, creds, state_dir=state_dir, stop=stop)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        sock.close()
