"""The engine's state directory: who may use it, one engine at a time, and its secrets.

``enginectl serve`` keeps its NATS store, ``credentials.json`` and ``client.json`` in one
directory. ``check_state_dir`` creates it with mode 0700, tightens one this user owns to
0700, and refuses one that another user owns or that others can write (whatever is in
it could have been planted). ``lock_state_dir`` holds an exclusive ``flock`` on
``<state dir>/engine.lock`` for the engine's lifetime, so that a second engine refuses
to start instead of stopping the first one's server; the kernel drops the lock when the
process dies, so a crashed engine never blocks a restart. ``load_credentials`` trusts
``credentials.json`` only if it is a regular file this user owns with mode 0600, and
otherwise writes new ones (clients read them from ``client.json``, written afresh by
every start, so nothing else needs the old password).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from engine.authz import ROLES, new_secrets
from engine.errors import ConfigError

__all__ = ["EngineRunning", "check_state_dir", "load_credentials", "lock_state_dir",
           "write_private"]

LOCK_NAME = "engine.lock"


class EngineRunning(ConfigError):
    """Raised by ``lock_state_dir`` when another engine holds the state directory.

    Attributes:
        pid: The other engine's pid, as it wrote it in the lock file (0 if unreadable).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(f"an engine is already running (pid {pid or 'unknown'})")


def check_state_dir(path: Path) -> None:
    """Create ``path`` (mode 0700), or make sure only this user can use it.

    Raises:
        ConfigError: ``path`` is owned by another user, others can write to it, or it is
            not a directory.
        OSError: it cannot be created or changed.
    """
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"state directory {path} is owned by uid {st.st_uid}, not by this "
                          f"user (uid {os.geteuid()}); refusing to use it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"state directory {path} is writable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


@contextmanager
def lock_state_dir(path: Path) -> Iterator[None]:
    """Hold ``<path>/engine.lock`` exclusively while the context is open.

    The descriptor is not inherited by child processes (Python's default), so the lock
    lives exactly as long as this process holds it.

    Raises:
        EngineRunning: another process holds the lock.
        OSError: the lock file cannot be opened.
    """
    lock = path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise EngineRunning(_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a starter)


def _holder(fd: int) -> int:
    """The pid the lock's holder wrote (it writes it right after locking: wait briefly)."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return int(os.pread(fd, 32, 0).decode().strip())
        except ValueError:
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.01)  # the holder is between flock and write


def write_private(path: Path, data: dict[str, object]) -> None:
    """Write ``data`` as JSON to ``path`` with mode 0600, atomically (rename).

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: never write through a planted link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_credentials(state_dir: Path) -> dict[str, str]:
    """The embedded server's secrets (a password per role and the secret of the job
    users, ``engine.authz``): ``credentials.json`` if this engine can trust it and it
    has them all, else new ones (written with mode 0600).

    Raises:
        OSError: new credentials cannot be written.
    """
    path = state_dir / "credentials.json"
    why = _untrusted(path)
    if why is None:
        try:
            data = json.loads(path.read_text())
            found = {k: str(data[k]) for k in (*ROLES, "jobs")}
            if all(found.values()):
                return found
            why = "incomplete"
        except (OSError, ValueError, KeyError, TypeError):
            why = "unreadable (or of an older version)"
    if why != "missing":
        structlog.get_logger("troupe.serve").warning(
            "credentials_regenerated", path=str(path), reason=why)
    fresh = new_secrets()
    write_private(path, dict(fresh))
    return fresh


def _untrusted(path: Path) -> str | None:
    """Why ``path`` cannot be trusted as this engine's own secret file, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) != 0o600:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, not 0600"
    return None


def engine_alive(pid: int, verbs: tuple[str, ...] = ("serve", "run")) -> bool:
    """Whether ``pid`` is a live ``enginectl`` process running one of ``verbs`` (a pid
    that ended, or was reused by another program, is not; without /proc, any live pid
    is)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(verb.encode() in argv for verb in verbs)
