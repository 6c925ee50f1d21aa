"""The persister: writes step records to the store without holding up the dispatcher.

Every published transition marks its step dirty with the entry to store. One task writes
the latest entry of every dirty step, many steps concurrently but one write per step at a
time, in rounds; so a step's entries reach the store in order, and a burst of transitions
of one step costs one write. Final entries are written with compare-and-swap
(``Store.finish_step``). An entry that names no new intent (a step that became PENDING or
RUNNING after the entry naming its attempt was stored) is held back for ``defer`` seconds
(0.25 by default; once or twice that): a step that ends meanwhile costs one write, its
final entry, instead of two; ``flush`` writes what is held back at once.
``wait_intent(step, attempt)`` returns once an entry naming
that attempt is stored: the runtime calls it before each submission, so a restarted
engine always knows which attempt might be running.

A write that fails (the bus is reconnecting) is retried with an exponential delay (capped
at 2 s) for up to ``give_up_after`` seconds (120 by default) from its first failure. Then
the persister gives the entry up: it logs ``step_write_given_up`` (an error naming the
study, step, state and attempt), appends a ``WriteFailure`` to ``failed``, and raises
``StoreError`` in every ``wait_intent`` that only this entry could have satisfied, so a
submission never goes ahead without its intent stored. A given-up entry counts as done
for ``flush``.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import msgspec
import structlog

from engine.errors import StoreError
from engine.machines.step import StepRecord
from engine.store import STEPS_BUCKET, StepEntry, Store, step_key

__all__ = ["Persister", "WriteFailure"]


class WriteFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A step entry the persister gave up storing.

    Attributes:
        study_id: The study.
        step: The step instance.
        state: The state the entry recorded.
        attempt: The entry's attempt.
        intent_attempt: The attempt whose intent the entry named (0: none).
        final: Whether it was the step's final entry.
        tries: How many writes were tried.
        error: The last write's error.
    """

    study_id: str
    step: str
    state: str
    attempt: int
    intent_attempt: int
    final: bool
    tries: int
    error: str


class _IntentWaiter:
    """One ``wait_intent`` call: set when the intent is stored, or failed with ``error``."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: StoreError | None = None


class Persister:
    """Coalescing, ordered writer of ``StepEntry`` values.

    Args:
        store: Where to write (only ``put_step`` and ``finish_step`` are used).
        concurrency: Writes in flight at most.
        give_up_after: Seconds of retrying one entry, from its first failure, before it
            is given up.
        first_delay: Seconds before the first retry; the delay doubles on each retry up
            to ``max_delay``.
        max_delay: The longest delay between two tries.
        defer: Seconds an entry naming no new intent is held back (0: none is).

    Attributes:
        failed: The entries given up so far, in the order they were given up.
    """

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int = 256,
        give_up_after: float = 120.0,
        first_delay: float = 0.05,
        max_delay: float = 2.0,
        defer: float = 0.25,
    ) -> None:
        self._store = store
        self._defer = defer
        # Held back entries, by step: put in the current period, and in the one before
        # (those are written at the end of the current one). Invariant: a step is in at
        # most one of these and ``_dirty``.
        self._young: dict[str, StepEntry] = {}
        self._old: dict[str, StepEntry] = {}
        self._held = anyio.Event()
        self._writing: dict[str, int] = {}  # step -> the intent of its write in flight
        self._give_up_after = give_up_after
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._dirty: dict[str, StepEntry] = {}
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._stored_attempt: dict[str, int] = {}
        # The steps whose latest entry was given up, with what was lost. Invariant: no
        # entry of such a step is pending or being written; put() removes the step.
        self._given_up: dict[str, WriteFailure] = {}
        self._revision: dict[str, int] = {}  # the revision of our last non-final write
        self._waiters: dict[tuple[str, int], _IntentWaiter] = {}
        self._concurrency = concurrency  # writers of a round (each writes one at a time)
        self._log = structlog.get_logger("troupe.persist")
        self.failed: list[WriteFailure] = []

    def put_record(self, rec: StepRecord, *, study_id: str, worker: str = "",
                   final: bool = False, soft: bool = False, ahead: bool = False) -> None:
        """Schedule the entry of a step's record (``StepEntry.from_record``) to be stored."""
        self.put(StepEntry.from_record(rec, study_id=study_id, worker=worker, final=final,
                                       soft=soft, ahead=ahead))

    def put(self, entry: StepEntry) -> None:
        """Schedule ``entry`` to be stored (replacing any older pending one)."""
        step = entry.step
        self._given_up.pop(step, None)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._old.pop(step, None)
        if (self._defer > 0 and not entry.final and step not in self._dirty
                and max(self._stored_attempt.get(step, -1), self._writing.get(step, -1))
                >= entry.intent_attempt):
            # Its intent is stored already, or is being written (no submission waits
            # for this entry): hold it back.
            self._young[step] = entry
            self._held.set()
            return
        self._young.pop(step, None)
        self._dirty[step] = entry
        self._wake.set()

    def _release(self, held: dict[str, StepEntry]) -> None:
        """Schedule the held back entries ``held`` to be written now."""
        for step, entry in held.items():
            self._dirty.setdefault(step, entry)  # (a newer entry put since wins)
        if held:
            self._wake.set()

    async def wait_intent(self, step: str, attempt: int) -> None:
        """Return once an entry of ``step`` with ``attempt`` (or later) is stored.

        Raises:
            StoreError: the persister gave up the step's latest entry, which named
                ``attempt`` (or a later one), before it was stored.
        """
        if self._stored_attempt.get(step, -1) >= attempt:
            return
        given_up = self._given_up.get(step)
        if given_up is not None and given_up.intent_attempt >= attempt:
            raise _intent_error(given_up)
        waiter = self._waiters.setdefault((step, attempt), _IntentWaiter())
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    async def flush(self) -> None:
        """Return once everything put so far is stored or given up (see ``failed``)."""
        held, self._old, self._young = {**self._old, **self._young}, {}, {}
        self._release(held)
        while self._dirty or not self._idle.is_set():
            await self._idle.wait()

    async def run(self) -> None:
        """Write dirty entries forever (run it in a task group; it may be run again after
        a cancellation, and then first writes what the cancelled run left)."""
        async with anyio.create_task_group() as tg:
            if self._defer > 0:
                tg.start_soon(self._age)
            await self._write_loop()

    async def _age(self) -> None:
        """Every ``defer`` seconds while entries are held back, write those held back
        for a whole period."""
        while True:
            if not (self._young or self._old):
                self._held = anyio.Event()
                await self._held.wait()
            await anyio.sleep(self._defer)
            old, self._old, self._young = self._old, self._young, {}
            self._release(old)

    async def _write_loop(self) -> None:
        while True:
            if not self._dirty:
                await self._wake.wait()
            self._wake = anyio.Event()
            while self._dirty:
                batch, self._dirty = self._dirty, {}
                # At most ``concurrency`` writers share the round (a task per entry would
                # hold 100,000 tasks at once for a study that size).
                todo = iter(list(batch.values()))
                try:
                    async with anyio.create_task_group() as tg:
                        for _ in range(min(self._concurrency, len(batch))):
                            tg.start_soon(self._write_all, todo)
                except BaseException:
                    # Cancelled mid-round: keep what may be unwritten for the next runner
                    # (writes are idempotent), unless a newer entry replaced it.
                    for step, entry in batch.items():
                        self._dirty.setdefault(step, entry)
                    raise
            if not (self._young or self._old):
                self._idle.set()

    async def _write_all(self, todo: Iterator[StepEntry]) -> None:
        for entry in todo:  # (shared by the round's writers: each entry is taken once)
            await self._write(entry)

    async def _write(self, entry: StepEntry) -> None:
        self._writing[entry.step] = entry.intent_attempt
        try:
            await self._write_one(entry)
        finally:
            del self._writing[entry.step]

    async def _write_one(self, entry: StepEntry) -> None:
        delay, tries, deadline = self._first_delay, 0, None
        while True:
            tries += 1
            try:
                if entry.final:
                    await self._store.finish_step(entry,
                                                  last=self._revision.pop(entry.step, None))
                else:
                    self._revision[entry.step] = await self._store.put_step(entry)
                break
            except Exception as exc:  # noqa: BLE001 - the bus may be reconnecting
                now = anyio.current_time()
                deadline = now + self._give_up_after if deadline is None else deadline
                if now >= deadline:
                    self._give_up(entry, tries, exc)
                    return
                self._log.warning("step_write_retried", step=entry.step, error=str(exc))
                await anyio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, self._max_delay)
        done = max(self._stored_attempt.get(entry.step, -1), entry.intent_attempt)
        self._stored_attempt[entry.step] = done
        for (step, attempt), waiter in list(self._waiters.items()):
            if step == entry.step and attempt <= done:
                waiter.event.set()
                del self._waiters[(step, attempt)]

    def _give_up(self, entry: StepEntry, tries: int, exc: Exception) -> None:
        """Report ``entry`` as given up and fail the intent waiters only it could satisfy."""
        failure = WriteFailure(
            study_id=entry.study_id, step=entry.step, state=entry.state, attempt=entry.attempt,
            intent_attempt=entry.intent_attempt, final=entry.final, tries=tries,
            error=str(exc) or type(exc).__name__,
        )
        self.failed.append(failure)
        for held in (self._young, self._old):  # a newer entry of the step follows now
            if entry.step in held:
                self._dirty.setdefault(entry.step, held.pop(entry.step))
                self._wake.set()
        self._log.error("step_write_given_up", study_id=entry.study_id, step=entry.step,
                        state=entry.state, attempt=entry.attempt,
                        intent_attempt=entry.intent_attempt, final=entry.final, tries=tries,
                        error=failure.error)
        if entry.step in self._dirty:
            return  # a newer entry of the step follows; it names this intent or a later one
        self._given_up[entry.step] = failure
        for (step, attempt), waiter in list(self._waiters.items()):
            if step == entry.step and attempt <= entry.intent_attempt:
                waiter.error = _intent_error(failure)
                waiter.event.set()
                del self._waiters[(step, attempt)]


def _intent_error(failure: WriteFailure) -> StoreError:
    return StoreError(
        f"gave up storing step {failure.step} of study {failure.study_id} "
        f"({failure.state}, attempt {failure.attempt}) after {failure.tries} tries: "
        f"{failure.error}",
        bucket=STEPS_BUCKET, key=step_key(failure.study_id, failure.step),
    )
