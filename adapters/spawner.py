"""Starting local processes from a small helper process, so the engine never waits for
an ``exec``.

``subprocess.Popen`` returns only once the child has ``exec``'d: for a step that is a
shell script this is most of a millisecond, during which the engine's event loop stands
still, and the files a step needs (its workspace, its scripts, its output files) cost as
much again. Under ``enginectl run``, the local adapter instead hands each sample's start
(``JobRequest.bulk``; ordinary steps are started directly, a hand-off costs less) to one
helper (``RUNNER``, a plain Python process started once per study, a few MB); the starts
asked for in one turn of the event loop leave as one JSON line. The helper creates each
workspace, writes the scripts, opens the output files and starts the process
(``posix_spawn``, in its own session), while the engine goes on; a thread in the helper
``wait``s for its children and reports their exit statuses, all it reaped in one write. The engine reads ``S <id> <pid>``
once the process exists, ``E <id> <exit code>`` when it ended (negative: the killing
signal) and ``F <id> <reason>`` for a start that failed (a missing interpreter: the
step's submission fails, as with ``Popen``), through ``loop.add_reader``, without a task
per job. Maestro's ``<name>.<pid>.out`` is named once the pid is known.

Under ``enginectl serve`` the same helper is the study's *keeper* (``Spawner(keep=True)``):
it starts every local step, in a session of its own so that it outlives the engine. Each
start names a claim (``.troupe.<attempt>.pid``) that it creates exclusively before the
start (``F <id> claimed`` if it exists: the attempt was fenced off), fills with
``<pid> <keeper pid>``, and appends ``exit N`` to once the process ended, before it says
so; once the engine is gone it keeps reaping and recording until its last child ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

__all__ = ["CLAIMED", "PID", "Sink", "Spawner", "Started"]

CLAIMED = "claimed"
"""A start's error when its claim existed already (the attempt was fenced off)."""

PID = "\x00pid\x00"
"""In an output path, replaced by the child's pid (Maestro's ``<name>.<pid>.out``)."""

RUNNER = r"""
import collections, json, os, sys, threading
lock = threading.Lock()
cond = threading.Condition(lock)
ids = {}  # pid -> (id, group, claim)
queues = collections.defaultdict(collections.deque)  # group -> starts waiting for room
running = collections.Counter()  # group -> its processes alive
KEEP = sys.argv[1:] == ["keep"]
me = os.getpid()
def say(text):
    try:
        os.write(1, text.encode())
    except OSError:
        pass  # the engine is gone (a keeper goes on: what ends is in the claims)
def record(claim, text):
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # the workspace is gone
def reap():
    while True:
        with cond:
            while not ids:
                cond.wait()
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            continue
        lines = []
        with lock:  # (lines are written under the lock: a long write is not atomic)
            while pid:  # and every other child already ended: one write for them all
                job = ids.pop(pid, None)
                if job is not None:
                    code = os.waitstatus_to_exitcode(status)
                    if job[2]:  # recorded before it is said: the engine may be gone
                        record(job[2], f"exit {code}\n")
                    lines.append(f"E {job[0]} {code}\n")
                    if job[1] is not None:
                        running[job[1]] -= 1
                        lines += fill(job[1])
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
            if lines:
                say("".join(lines))
            cond.notify_all()
threading.Thread(target=reap, daemon=True).start()
env0 = dict(os.environ)
PID = "\x00pid\x00"
null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
home = os.getcwd()
umask = os.umask(0); os.umask(umask)
chmod = (umask & 0o555) != 0  # (a umask that keeps r-x from 0o755 needs no fchmod)
CLAIMED = "claimed"
def start(r):  # (under the lock)
    env = {**env0, **r["env"]}
    out = err = cfd = -1
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if r["append"] else os.O_TRUNC)
    try:
        if r["scripts"]:
            os.makedirs(r["cwd"], exist_ok=True)
        for path, text in r["scripts"]:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
            os.write(fd, text.encode())
            if chmod:
                os.fchmod(fd, 0o755)
            os.close(fd)
        claim = r.get("claim") or ""
        if claim:  # the attempt's claim: created once, so it runs at most once
            try:
                cfd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return f"F {r['id']} {CLAIMED}\n"
        names = [r["out"], r["err"]]  # a name with PID: renamed once the pid is known
        opened = [n.replace(PID, f"starting{r['id']}") for n in names]
        out = os.open(opened[0], flags | os.O_CLOEXEC, 0o644)
        err = os.open(opened[1], flags | os.O_CLOEXEC, 0o644)
        # posix_spawn (a vfork) in the child's directory, in a session of its own,
        # stdin from /dev/null: what Popen does, at a fraction of its cost.
        os.chdir(r["cwd"])
        try:
            pid = os.posix_spawn(r["argv"][0], r["argv"], env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2)])
        finally:
            os.chdir(home)
    except (OSError, ValueError) as exc:
        if cfd >= 0:  # it never ran, and never will
            os.write(cfd, b"failed\n"); os.close(cfd)
        return f"F {r['id']} {exc}".replace("\n", " ") + "\n"
    finally:
        if out >= 0: os.close(out)
        if err >= 0: os.close(err)
    if claim:
        os.write(cfd, f"{pid} {me}\n".encode()); os.close(cfd)
    for name, now in zip(names, opened):
        if name != now:
            os.replace(now, name.replace(PID, str(pid)))
    group = r.get("group")
    ids[pid] = (r["id"], group, claim)
    if group is not None:
        running[group] += 1
    cond.notify_all()
    return f"S {r['id']} {pid}\n"
def fill(group):  # (under the lock) start a group's waiting starts while it has room
    lines, queue = [], queues[group]
    while queue and running[group] < queue[0]["limit"]:
        lines.append(start(queue.popleft()))
    return lines
for line in sys.stdin:
    # A line is a batch of starts, or of starts to drop; a start of a group waits until
    # fewer than its limit of the group's processes run. The S/F/D lines of a batch
    # leave in one write, after which (the reaper waits for the lock) E lines follow.
    with lock:
        msg, lines = json.loads(line), []
        if isinstance(msg, dict):  # {"drop": [ids]}: still waiting? never start them
            drop = set(msg["drop"])
            for queue in queues.values():
                kept = [r for r in queue if r["id"] not in drop]
                lines += [f"D {r['id']} -\n" for r in queue if r["id"] in drop]
                queue.clear(); queue.extend(kept)
        else:
            for r in msg:
                if r.get("group") is None:
                    lines.append(start(r))
                else:
                    queues[r["group"]].append(r)
            for group in {r["group"] for r in msg if r.get("group") is not None}:
                lines += fill(group)
        say("".join(lines))
if KEEP:  # the engine is gone (or done): record how what still runs ends, then exit
    with cond:
        while ids:
            cond.wait()
"""


class Sink(Protocol):
    """Who hears about one start: the process exists, or it ended (or never started)."""

    def on_start(self, pid: int) -> None: ...

    def on_end(self, code: int | None, error: str) -> None:
        """It ended with ``code`` (negative: the killing signal); or, with ``code`` None,
        it never started: ``error`` says why ("" when it was dropped as asked)."""


class Started:
    """One process the spawner was asked to start: its pid, then its exit code."""

    __slots__ = ("code", "error", "exited", "pid", "started")

    def __init__(self) -> None:
        self.pid = 0
        self.error = ""
        self.code: int | None = None
        self.started = anyio.Event()
        self.exited = anyio.Event()

    def on_start(self, pid: int) -> None:
        self.pid = pid
        self.started.set()

    def on_end(self, code: int | None, error: str) -> None:
        self.code, self.error = code, error
        self.started.set()
        self.exited.set()


class Spawner:
    """The helper process and the starts in flight (see the module docstring)."""

    def __init__(self, env: Mapping[str, str], *, keep: bool = False) -> None:
        self._env = dict(env)
        self._keep = keep
        self._proc: subprocess.Popen[bytes] | None = None
        self._sinks: dict[int, Sink] = {}
        self._next = 0
        self._buf = b""
        self._batch: list[dict[str, object]] = []
        self._out = bytearray()  # written to the helper once its pipe has room

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", RUNNER, *(["keep"] if self._keep else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env, close_fds=True,
                bufsize=0, start_new_session=self._keep)
            assert self._proc.stdout is not None and self._proc.stdin is not None
            os.set_blocking(self._proc.stdout.fileno(), False)
            # Writes never block the engine: what the pipe does not take waits in _out.
            os.set_blocking(self._proc.stdin.fileno(), False)
            self._out = bytearray()
            asyncio.get_running_loop().add_reader(self._proc.stdout.fileno(), self._readable)
        return self._proc

    def queue(self, argv: list[str], *, cwd: str, out: str, err: str, append: bool,
              env: Mapping[str, str], sink: Sink, scripts: Sequence[tuple[str, str]] = (),
              group: str | None = None, limit: int = 0, claim: str = "") -> int:
        """Ask for ``argv`` to be started in a new session (with the starts asked for in
        the same turn of the event loop); ``sink`` hears how it goes. In a ``group``, it
        waits in the helper until fewer than ``limit`` of the group's processes run.

        Returns:
            Its id (for :meth:`drop`).
        """
        self._ensure()
        self._next += 1
        self._sinks[self._next] = sink
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._send)
        self._batch.append({"id": self._next, "argv": argv, "cwd": cwd, "out": out,
                            "err": err, "append": append, "env": dict(env),
                            "scripts": list(scripts), "group": group, "limit": limit,
                            "claim": claim})
        return self._next

    async def start(self, argv: list[str], *, cwd: str, out: str, err: str, append: bool,
                    env: Mapping[str, str], scripts: Sequence[tuple[str, str]] = (),
                    claim: str = "") -> tuple[int, Started]:
        """Start ``argv`` in a new session; return its pid once it exists. With a
        ``claim``, the helper first creates that file exclusively (or starts nothing),
        writes ``<pid> <helper pid>`` into it, and appends ``exit <code>`` once the
        process ended, before it says so.

        Raises:
            OSError: it could not be started (``CLAIMED``: the claim existed), or the
                helper is gone.
        """
        start = Started()
        self.queue(argv, cwd=cwd, out=out, err=err, append=append, env=env, sink=start,
                   scripts=scripts, claim=claim)
        await start.started.wait()
        if start.error:
            raise OSError(start.error)
        return start.pid, start

    def drop(self, ids: Sequence[int]) -> None:
        """Never start these, if they still wait in their group (each dropped one ends
        with no code and no error; one already started is not touched)."""
        self._send()  # (any start of these still in this turn's batch goes first)
        self._write(json.dumps({"drop": list(ids)}).encode() + b"\n", [])

    def _send(self) -> None:
        """Write the batch of starts as one line."""
        batch, self._batch = self._batch, []
        if batch:
            self._write(json.dumps(batch).encode() + b"\n", [r["id"] for r in batch])

    def _write(self, data: bytes, ids: list[object]) -> None:
        """Write to the helper without waiting (the rest once its pipe has room); if it
        is gone, the starts ``ids`` fail."""
        try:
            if self._proc is None or self._proc.stdin is None:
                raise BrokenPipeError("it exited")
            if self._out:
                self._out += data
                return
            try:
                done = os.write(self._proc.stdin.fileno(), data)
            except BlockingIOError:
                done = 0
            if done < len(data):
                self._out += data[done:]
                asyncio.get_running_loop().add_writer(self._proc.stdin.fileno(), self._writable)
        except (BrokenPipeError, ValueError) as exc:
            for job in ids:
                sink = self._sinks.pop(job, None)  # type: ignore[call-overload]
                if sink is not None:
                    sink.on_end(None, f"the process starter is gone: {exc}")

    def _writable(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        try:
            del self._out[:os.write(fd, self._out)]
        except BlockingIOError:
            return
        except OSError:  # it died: its end of stdout says so to _readable
            self._out.clear()
        if not self._out:
            asyncio.get_running_loop().remove_writer(fd)

    def _drop_writer(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        if self._out:
            self._out.clear()
            asyncio.get_running_loop().remove_writer(self._proc.stdin.fileno())

    async def wait(self, start: Started) -> int | None:
        """The exit code of a started process (negative: the signal that killed it)."""
        await start.exited.wait()
        return start.code

    def _readable(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            chunk = self._proc.stdout.read(65536)
        except BlockingIOError:
            return
        if not chunk:  # the helper died: nothing it started will be reported
            asyncio.get_running_loop().remove_reader(self._proc.stdout.fileno())
            self._proc.stdout.close()
            self._drop_writer()
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.poll()
            self._proc = None  # the next start starts a new helper
            sinks, self._sinks = self._sinks, {}
            for sink in sinks.values():
                sink.on_end(None, "the process starter is gone")
            return
        lines = (self._buf + chunk).split(b"\n")
        self._buf = lines.pop()
        sinks = self._sinks
        for line in lines:
            kind, job, value = line.split(b" ", 2)
            if kind == b"S":
                sink = sinks.get(int(job))
                if sink is not None:
                    sink.on_start(int(value))
                continue
            sink = sinks.pop(int(job), None)
            if sink is None:
                continue
            if kind == b"E":
                sink.on_end(int(value), "")
            elif kind == b"F":  # it could not be started: why
                sink.on_end(None, value.decode(errors="replace"))
            else:  # D: dropped before it started, as asked
                sink.on_end(None, "")

    def close(self) -> None:
        """Stop the helper (its children go on: they are the adapter's to stop)."""
        if self._proc is not None:
            assert self._proc.stdout is not None and self._proc.stdin is not None
            try:
                asyncio.get_running_loop().remove_reader(self._proc.stdout.fileno())
                if self._out:  # (what it was still to read: the drops of a stop)
                    asyncio.get_running_loop().remove_writer(self._proc.stdin.fileno())
            except RuntimeError:
                pass
            if self._out:
                os.set_blocking(self._proc.stdin.fileno(), True)
                try:
                    self._proc.stdin.write(bytes(self._out))
                except OSError:
                    pass
                self._out.clear()
            self._proc.stdin.close()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
