"""``enginectl serve``: the engine process, its embedded NATS server and its credentials.

One engine runs per state directory: ``serve`` first checks the directory (``0700``,
this user's; ``engine.statedir``) and locks ``<state dir>/engine.lock`` for its lifetime;
a second ``serve`` on it fails without touching anything. Without ``--nats-url``,
``serve`` starts an embedded nats-server with JetStream (``sync_interval: always``) under
``<state dir>/nats``, which dies with the engine, with one user per role and subject
permissions (``engine.authz``; the secrets in ``<state dir>/credentials.json``, mode 0600,
new ones if that file is not this user's with mode 0600), plus a job user per hosted
study. Once the engine answers requests it writes ``<state dir>/client.json`` (URL and the
client user; mode 0600), which ``enginectl`` reads by default, and ``monitor.json`` (the
read-only monitor user). A client without them cannot submit, cancel or read state.
With ``--nats-url`` the given server and credentials are used (JetStream required).
SIGTERM or SIGINT start a graceful stop; the process exits 0 when it is done.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import anyio
import structlog

from engine import subjects
from engine.bus import Credentials, open_bus, placed
from engine.errors import BusError
from engine.natsserver import open_embedded_server, reload_users
from engine.service import EngineService
from engine.authz import NatsUser, job_user, role_users
from engine.statedir import check_state_dir, load_credentials, lock_state_dir, write_private
from engine.store import Store

__all__ = ["serve_forever"]


def _engine_id(state_dir: Path) -> str:
    """This engine's id, kept in ``<state dir>/engine.id``: the same engine restarted on
    its state directory resumes its own studies at once (``engine.service``)."""
    path = state_dir / "engine.id"
    try:
        known = path.read_text().strip()
        if known:
            return known
    except OSError:
        pass
    new = f"{socket.gethostname()}-{os.urandom(4).hex()}"
    path.write_text(new + "\n")
    return new


async def serve_forever(
    state_dir: Path,
    *,
    nats_url: str | None = None,
    credentials: Credentials | None = None,
    drain_timeout: float = 30.0,
    max_running: int = 0,
    dashboard: socket.socket | None = None,
) -> None:
    """Run the engine until SIGTERM/SIGINT, then stop gracefully (``max_running``: the
    engine-wide limit of jobs running at once, 0 for none; ``dashboard``: a listening
    socket to serve the live dashboard on, as the monitor user, ``engine.dashboard``).

    Raises:
        BusError: the server cannot be started or reached, or has no JetStream.
        EngineRunning: another engine uses ``state_dir``.
        ConfigError: ``state_dir`` belongs to another user or others can write to it.
    """
    check_state_dir(state_dir)
    log = structlog.get_logger("troupe.serve")
    async with AsyncExitStack() as stack:
        # Invariant: nothing in state_dir is touched before this engine holds the lock.
        stack.enter_context(lock_state_dir(state_dir))
        client_cfg = state_dir / "client.json"
        client_cfg.unlink(missing_ok=True)  # written again once this engine answers
        job_credentials: Callable[[str], tuple[str, str]] | None = None
        if nats_url:
            # The operator's server and credentials: its jobs get none (their exit files
            # are read instead), never the engine's own.
            url, creds = nats_url, credentials or Credentials()
        else:
            secrets_ = load_credentials(state_dir)
            users = role_users(secrets_)
            server = await stack.enter_async_context(
                open_embedded_server(state_dir / "nats", users=users))
            url, creds = server.url, Credentials(user="engine", password=secrets_["engine"])
            job_users: dict[str, NatsUser] = {}

            def add_job_user(study_id: str) -> tuple[str, str]:
                """A study's job user, added to the running server's users."""
                if study_id not in job_users:
                    job_users[study_id] = job_user(study_id, secrets_["jobs"])
                    reload_users(server, [*users, *job_users.values()])
                user = job_users[study_id]
                return user.name, user.password

            job_credentials = add_job_user
        bus = await stack.enter_async_context(
            open_bus(url, creds, name="troupe-engine", max_reconnect_attempts=-1))
        # On a cluster of 3 or more, the stream and the buckets keep 3 copies.
        replicas = 3 if bus.cluster_size() >= 3 else 1
        if not await placed(lambda: bus.ensure_stream(
                subjects.EVENTS_STREAM, [subjects.all_events()], replicas=replicas)):
            raise BusError(f"the NATS server at {url} has no JetStream; serve needs it", url)
        store = await placed(lambda: Store.open(bus, replicas=replicas))
        service = EngineService(bus, store, drain_timeout=drain_timeout, max_running=max_running,
                                worker=_engine_id(state_dir),
                                job_credentials=job_credentials)
        dashboard_stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.warning("engine_stop_requested", signal=signal.Signals(signum).name)
                        service.stop()

            tg.start_soon(on_signals)
            log.info("engine_starting", url=url, state_dir=str(state_dir))
            await tg.start(service.serve)
            # Who wrote it: a client that finds this engine gone says so (``engine.client``).
            me = {"pid": os.getpid(), "host": socket.gethostname()}
            # Said before client.json exists, which clients take as the sign it is up.
            log.info("engine_ready", url=url, state_dir=str(state_dir), pid=os.getpid())
            where = (f"a cluster of {bus.cluster_size()}, {replicas} replicas"
                     if replicas > 1 else "one server")
            print(f"troupe engine ready (pid {os.getpid()}): NATS at {url} ({where}); clients find it "
                  f"through {client_cfg} (--state-dir {state_dir}, or $TROUPE_STATE_DIR)",
                  file=sys.stderr, flush=True)
            if not nats_url:
                # client.json last: clients (and tests) take it as the sign the engine is up
                write_private(state_dir / "monitor.json", {
                    "url": url, "user": "monitor", "password": secrets_["monitor"], **me})
                write_private(state_dir / "worker.json", {  # enginectl worker --state-dir
                    "url": url, "user": "worker", "password": secrets_["worker"], **me})
                write_private(client_cfg, {"url": url, "user": "client",
                                           "password": secrets_["client"], **me})
                if dashboard is not None:
                    tg.start_soon(partial(
                        _dashboard, dashboard, url,
                        Credentials(user="monitor", password=secrets_["monitor"]),
                        state_dir=state_dir, stop=dashboard_stop))
            else:
                write_private(client_cfg, {"url": url, **me})
            await service.stopped.wait()
            dashboard_stop.set()
            tg.cancel_scope.cancel()


async def _dashboard(sock: socket.socket, url: str, credentials: Credentials, *,
                     state_dir: Path, stop: anyio.Event) -> None:
    """``serve --dashboard``: the dashboard beside the engine. Its failure (the monitor's
    connection refused, say) is logged and ends the dashboard only, never the engine."""
    from engine.dashboard.server import run_dashboard

    try:
        await run_dashboard(sock, url, credentials, state_dir=state_dir, stop=stop)
    except (BusError, OSError) as exc:
        structlog.get_logger("troupe.serve").error("dashboard_failed", error=str(exc))
        print(f"error: the dashboard stopped: {exc}", file=sys.stderr, flush=True)
