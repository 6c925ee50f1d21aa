"""``enginectl worker``: take step tasks from JetStream queues and run them.

A worker pulls from its queues (``engine.workqueue``: one durable consumer per queue,
shared by every worker of the queue), at most ``concurrency`` tasks at a time, and starts
each in the delivery callback itself. For each task it first claims the attempt
(creates ``.troupe.<attempt>.pid`` exclusively: an attempt runs once, even if the task
is delivered twice, and never after the engine cancelled it while queued), then starts the task's script in its workspace, in a session
of its own, with its output in Maestro's (or Merlin's) files (``engine.taskproc``:
``posix_spawn``, a pidfd to wait). A guard process kills what the worker started if the
worker dies: a task never outlives its worker, so an attempt the engine finds lost
cannot still be running when it is run again. While a task runs,
the worker tells JetStream every ``heartbeat`` seconds that it is still on it (so it is
not delivered to another worker); when it ended, the worker appends its exit status to
the claim (``exit N``: the engine reads it should the message be lost, or the worker die
now), publishes it (``JobReported``) to the study's report subject, then acknowledges
the task. Only a worker killed between its task's exit and that append loses the
outcome: the engine then runs the attempt again, as it does any lost one. ``WorkerCancel`` stops a running task (SIGTERM to
its group and the processes it marked, SIGKILL after the grace). SIGTERM stops taking
tasks and waits for the running ones to end; a second SIGTERM (or SIGINT) kills them,
and they are reported as killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import anyio
import anyio.abc
import msgspec
import structlog

from adapters.descendants import JOB_KEY_VAR, kill_marked
from engine import subjects
from engine.bus import Bus, Credentials, open_bus, placed
from engine.errors import BusError
from engine.messages import (
    BUS_DECODER,
    JobReported,
    StopWorkers,
    Task,
    TasksAlive,
    WorkerAlive,
    WorkerCancel,
    new_event_id,
)
from engine.taskproc import MARK_VAR, Guard, start_task, wait_task
from engine.workqueue import Delivery, TaskQueue, ensure_task_stream

__all__ = ["run_worker"]

_CLAIM_FAILED = 199  # reported for an attempt the engine claimed (cancelled while queued)
SAY_RUNNING_AFTER = 0.05
"""Seconds a task runs before its worker tells the engine it runs (a shorter one is
reported by its outcome alone: one message fewer through the server and the engine)."""


class _Running:
    """A task this worker runs."""

    __slots__ = ("delivery", "pid", "task")

    def __init__(self, task: Task, pid: int, delivery: Delivery) -> None:
        self.task = task
        self.pid = pid
        self.delivery = delivery


class _Worker:
    """The tasks this worker runs. Each is claimed and started in the delivery callback
    itself (``on_task``), then watched by a task of its own until it is reported. A task
    holds one of the ``concurrency`` slots from its delivery until it is reported and
    acknowledged; its slot is then asked for again, in the same write as its report."""

    def __init__(self, bus: Bus, *, name: str, concurrency: int, log: structlog.BoundLogger,
                 env: dict[str, str], mine: dict[str, str]) -> None:
        self.bus = bus
        self.name = name
        self.log = log
        self.env = env
        self.mine = mine
        self.running: dict[str, _Running] = {}
        self.free = concurrency
        self.busy = 0  # delivered, not yet through
        self.changed = anyio.Event()
        self.stopping = anyio.Event()
        self.tasks: TaskQueue | None = None
        self.tg: anyio.abc.TaskGroup | None = None

    def on_task(self, delivery: Delivery) -> None:
        """A task arrived: start it now (its process runs before this returns)."""
        assert self.tg is not None
        if self.stopping.is_set() or self.free <= 0:
            # Stopping, or asked for one too many (a request the server kept across a
            # reconnect): back to the queue at once, for another worker.
            self.tg.start_soon(delivery.give_back)
            return
        self.free -= 1
        self.busy += 1
        try:
            finish = self._start(delivery)
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose the slot
            self.log.error("task_not_started", error=repr(exc))
            finish = delivery.give_back()
        self.tg.start_soon(self._through, finish)

    async def _through(self, finish: Coroutine[Any, Any, None]) -> None:
        try:
            await finish
        finally:
            self.free += 1
            self.busy -= 1
            self.changed.set()
            self.changed = anyio.Event()
        if not self.stopping.is_set() and self.tasks is not None:
            await self.tasks.ask()  # (goes out with the report, in one write)

    def _start(self, delivery: Delivery) -> Coroutine[Any, Any, None]:
        """Claim the attempt and start its process; return what finishes the task."""
        try:
            task = BUS_DECODER.decode(delivery.data)
        except Exception:  # noqa: BLE001 - a malformed task is dropped, never fatal
            self.log.warning("task_malformed")
            return delivery.ack()
        if not isinstance(task, Task):
            return delivery.ack()
        pid_file = task.exit_file[: -len(".exit")] + ".pid"
        try:  # the claim: one worker runs the attempt, once, and never after its cancel
            fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # a redelivery, or cancelled while queued
            return self._claimed_before(task, delivery, pid_file)
        except OSError as exc:  # the workspace is gone: the step fails
            return _not_started(self.bus, task, delivery, self.log, str(exc))
        try:
            os.write(fd, f"worker {self.name} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        try:
            pid = start_task(task.script, cwd=task.workspace, stem=task.stem,
                             append=task.merlin, env={**self.env, **task.env, **self.mine})
        except OSError as exc:  # no such script, not executable...
            return _not_started(self.bus, task, delivery, self.log, str(exc))
        self.running[task.key] = _Running(task, pid, delivery)
        return self._watch(task, pid, delivery, pid_file)

    async def _claimed_before(self, task: Task, delivery: Delivery, pid_file: str) -> None:
        # Not announced as running here: the engine's loss clock for the attempt must
        # not be reset by a worker that does not run it.
        if _claimed_by_engine(pid_file):
            await _report(self.bus, task, _CLAIM_FAILED)
        self.log.info("task_ended", key=task.key, exit_code=_CLAIM_FAILED,
                      detail="claimed before")
        await delivery.ack()

    async def _watch(self, task: Task, pid: int, delivery: Delivery, pid_file: str) -> None:
        self.log.info("task_started", key=task.key, pid=pid)
        try:
            code = None
            with anyio.move_on_after(SAY_RUNNING_AFTER):
                code = await wait_task(pid)
            if code is None:  # it runs on: the engine marks it RUNNING, counts its heartbeats
                try:
                    await self.bus.publish(task.report_subject, TasksAlive(
                        event_id=new_event_id(), worker="", keys=(task.key,)))
                except BusError:
                    pass
                code = await wait_task(pid)
        finally:
            self.running.pop(task.key, None)
        # The claim first: a worker killed between the two leaves the outcome where the
        # engine reads it before it calls the attempt lost (one append, no new file).
        _write_exit(pid_file, code)
        await _report(self.bus, task, code)
        await delivery.ack()
        self.log.info("task_ended", key=task.key, exit_code=code)


async def run_worker(url: str, credentials: Credentials | None = None, *,
                     queues: list[str], concurrency: int, name: str = "",
                     heartbeat: float = 5.0) -> None:
    """Serve ``queues`` until SIGTERM/SIGINT (see the module docstring).

    Raises:
        BusError: the server cannot be reached, or has no JetStream.
    """
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    log = structlog.get_logger("troupe.worker").bind(worker=name)
    guard = Guard()  # the tasks die with this worker
    env = {**os.environ}  # read once: decoding os.environ costs on every task
    mine = {"TROUPE_WORKER": name, MARK_VAR: guard.mark}
    async with open_bus(url, credentials, name=f"troupe-worker {name}",
                        max_reconnect_attempts=-1) as bus, _closing(guard):
        await placed(lambda: ensure_task_stream(bus))  # (a cluster still forming: wait)
        w = _Worker(bus, name=name, concurrency=concurrency, log=log, env=env, mine=mine)
        tasks = w.tasks = TaskQueue(bus, queues, on_task=w.on_task, free=lambda: w.free,
                                    ack_wait=heartbeat * 6)
        await placed(tasks.open)
        log.info("worker_ready", queues=queues, concurrency=concurrency)
        print(f"troupe worker {name} ready: queues {', '.join(queues)}, concurrency "
              f"{concurrency}, NATS at {url}", flush=True)
        async with anyio.create_task_group() as tg:
            w.tg = tg
            tg.start_soon(_listen_cancels, bus, w.running)
            me = WorkerAlive(event_id="", worker=name, host=socket.gethostname(), pid=os.getpid(),
                             queues=tuple(queues), concurrency=concurrency, started=time.time())
            tg.start_soon(_say_alive, bus, me, w.running, heartbeat)
            tg.start_soon(_listen_stop, bus, me, w.stopping)
            tg.start_soon(_on_signals, w.stopping, w.running)
            tg.start_soon(tasks.keep_asking)
            await tasks.ask()
            await w.stopping.wait()
            await tasks.close()
            await _announce(bus, msgspec.structs.replace(me, stopping=True), w.running)
            while w.busy:  # finish what runs (a second signal kills it), and report it
                await w.changed.wait()
            tg.cancel_scope.cancel()
    log.info("worker_stopped")
    print(f"troupe worker {name} stopped", flush=True)


@contextlib.asynccontextmanager
async def _closing(guard: Guard) -> AsyncIterator[None]:
    try:
        yield
    finally:
        guard.close()


async def _announce(bus: Bus, me: WorkerAlive, running: dict[str, _Running]) -> None:
    """Say who this worker is, what it serves and runs (``troupe.v1.workers.alive``)."""
    try:
        await bus.publish(subjects.WORKERS_ALIVE, msgspec.structs.replace(
            me, event_id=new_event_id(), running=tuple(running)))
    except BusError:
        pass


async def _say_alive(bus: Bus, me: WorkerAlive, running: dict[str, _Running],
                     heartbeat: float) -> None:
    """Every ``heartbeat`` seconds: who this worker is, and to each study, which of its
    attempts run here."""
    name = me.worker
    while True:
        await _announce(bus, me, running)
        by_subject: dict[str, list[str]] = {}
        for run in list(running.values()):
            by_subject.setdefault(run.task.report_subject, []).append(run.task.key)
            await run.delivery.working()  # not to be delivered to another worker
        for subject, keys in by_subject.items():
            try:
                await bus.publish(subject, TasksAlive(event_id=new_event_id(), worker=name,
                                                      keys=tuple(keys)))
            except BusError:
                pass  # disconnected: nats-py reconnects; the next beat goes out
        await anyio.sleep(heartbeat)


async def _not_started(bus: Bus, task: Task, delivery: Delivery, log: structlog.BoundLogger,
                       error: str) -> None:
    log.warning("task_not_started", key=task.key, error=error)
    _write_exit(task.exit_file[: -len(".exit")] + ".pid", 127)
    await _report(bus, task, 127)
    await delivery.ack()


def _write_exit(claim: str, code: int) -> None:
    """The attempt's exit status, appended to its claim (``exit N``), for the engine
    should the report be lost (an append: no new file on the critical path)."""
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:  # one small write: a reader sees all of it or nothing (then reads again)
            os.write(fd, f"exit {code}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # the workspace is gone: the report still tells


async def _report(bus: Bus, task: Task, code: int) -> None:
    await bus.publish(task.report_subject, JobReported(
        event_id=new_event_id(), exit_file=task.exit_file, exit_code=code))


def _claimed_by_engine(pid_file: str) -> bool:
    try:
        with open(pid_file) as f:
            return f.read() == "cancelled\n"
    except OSError:
        return False


async def _listen_stop(bus: Bus, me: WorkerAlive, stopping: anyio.Event) -> None:
    """Stop (as on SIGTERM) when ``enginectl stop-workers`` names this worker."""
    async with bus.subscribe(subjects.WORKERS_STOP) as requests:
        async for msg in requests:
            if not isinstance(msg, StopWorkers):
                continue
            everyone = not msg.queues and not msg.names
            if everyone or me.worker in msg.names or set(msg.queues) & set(me.queues):
                stopping.set()


async def _listen_cancels(bus: Bus, running: dict[str, _Running]) -> None:
    async with bus.subscribe(subjects.WORKER_CANCEL) as requests, \
            anyio.create_task_group() as tg:
        async for msg in requests:
            if isinstance(msg, WorkerCancel) and msg.key in running:
                tg.start_soon(_stop, running[msg.key], msg.grace, running)


async def _stop(run: _Running, grace: float, running: dict[str, _Running]) -> None:
    _signal(run, signal.SIGTERM)
    with anyio.move_on_after(grace):
        while run.task.key in running:
            await anyio.sleep(0.05)
    _signal(run, signal.SIGKILL)


def _signal(run: _Running, sig: int) -> None:
    try:
        os.killpg(run.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    kill_marked(JOB_KEY_VAR, run.task.key, sig)


async def _on_signals(stopping: anyio.Event, running: dict[str, _Running]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if stopping.is_set():  # the second one: kill what runs
                for run in list(running.values()):
                    _signal(run, signal.SIGKILL)
            stopping.set()
