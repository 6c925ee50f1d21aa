"""The persister: writes step records to the store without holding up the dispatcher.

Every published transition marks its step dirty with the entry to store. One task writes
the latest entry of every dirty step, many steps concurrently but one write per step at a
time, in rounds; so a step's entries reach the store in order, and a burst of transitions
of one step costs one write. Final entries are written with compare-and-swap
(``Store.finish_step``). ``wait_intent(step, attempt)`` returns once an entry naming
that attempt is stored: the runtime calls it before each submission, so a restarted
engine always knows which attempt might be running. Writes that fail (the bus is
reconnecting) are retried.
"""

from __future__ import annotations

import anyio
import structlog

from engine.store import StepEntry, Store

__all__ = ["Persister"]


class Persister:
    """Coalescing, ordered writer of ``StepEntry`` values."""

    def __init__(self, store: Store, *, concurrency: int = 256) -> None:
        self._store = store
        self._dirty: dict[str, StepEntry] = {}
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._stored_attempt: dict[str, int] = {}
        self._revision: dict[str, int] = {}  # the revision of our last non-final write
        self._waiters: dict[tuple[str, int], anyio.Event] = {}
        self._limit = anyio.Semaphore(concurrency)
        self._log = structlog.get_logger("troupe.persist")

    def put(self, entry: StepEntry) -> None:
        """Schedule ``entry`` to be stored (replacing any older pending one)."""
        self._dirty[entry.step] = entry
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def wait_intent(self, step: str, attempt: int) -> None:
        """Return once an entry of ``step`` with ``attempt`` (or later) is stored."""
        if self._stored_attempt.get(step, -1) >= attempt:
            return
        event = self._waiters.setdefault((step, attempt), anyio.Event())
        await event.wait()

    async def flush(self) -> None:
        """Return once everything put so far is stored."""
        while self._dirty or not self._idle.is_set():
            await self._idle.wait()

    async def run(self) -> None:
        """Write dirty entries forever (run it in a task group)."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._dirty:
                batch, self._dirty = self._dirty, {}
                try:
                    async with anyio.create_task_group() as tg:
                        for entry in batch.values():
                            tg.start_soon(self._write, entry)
                except BaseException:
                    # Cancelled mid-round: keep what may be unwritten for the next runner
                    # (writes are idempotent), unless a newer entry replaced it.
                    for step, entry in batch.items():
                        self._dirty.setdefault(step, entry)
                    raise
            self._idle.set()

    async def _write(self, entry: StepEntry) -> None:
        async with self._limit:
            delay = 0.05
            while True:
                try:
                    if entry.final:
                        await self._store.finish_step(entry,
                                                      last=self._revision.pop(entry.step, None))
                    else:
                        self._revision[entry.step] = await self._store.put_step(entry)
                    break
                except Exception as exc:  # noqa: BLE001 - the bus may be reconnecting
                    self._log.warning("step_write_retried", step=entry.step, error=str(exc))
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        done = max(self._stored_attempt.get(entry.step, -1), entry.intent_attempt)
        self._stored_attempt[entry.step] = done
        for (step, attempt), event in list(self._waiters.items()):
            if step == entry.step and attempt <= done:
                event.set()
                del self._waiters[(step, attempt)]
