"""The persister against a fake store whose writes fail: transient failures are retried
and stored in order, a lasting one is given up after the bound, reported, and fails the
submission waiting for its intent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from structlog.testing import capture_logs

from engine.actors.persist import Persister, WriteFailure
from engine.errors import StoreError
from engine.store import StepEntry


class FlakyStore:
    """A store whose first ``failures`` writes fail (every write when None).

    Attributes:
        stored: The entries stored, in order.
        tries: Writes tried, failed or not.
        gate: While not set, every write waits for it (to hold a write in flight).
    """

    def __init__(self, failures: int | None = 0) -> None:
        self.failures = failures
        self.stored: list[StepEntry] = []
        self.tries = 0
        self.gate = anyio.Event()
        self.gate.set()

    async def _write(self, entry: StepEntry) -> None:
        await self.gate.wait()
        self.tries += 1
        if self.failures is None or self.failures > 0:
            if self.failures is not None:
                self.failures -= 1
            raise StoreError("put troupe_steps failed: nats: timeout", bucket="troupe_steps",
                             key=f"{entry.study_id}.{entry.step}")
        self.stored.append(entry)

    async def put_step(self, entry: StepEntry) -> int:
        await self._write(entry)
        return len(self.stored)

    async def finish_step(self, entry: StepEntry, *, last: int | None = None) -> bool:
        await self._write(entry)
        return True


def entry(state: str, *, attempt: int = 1, final: bool = False) -> StepEntry:
    return StepEntry(study_id="sid", step="a", state=state, attempt=attempt,
                     intent_attempt=attempt, final=final)


@asynccontextmanager
async def running(persister: Persister) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(persister.run)
        yield tg
        tg.cancel_scope.cancel()


async def test_transient_failures_are_retried_and_a_steps_entries_stored_in_order() -> None:
    store = FlakyStore(failures=3)
    persister = Persister(store, first_delay=0.001)  # type: ignore[arg-type]
    pending, done = entry("PENDING"), entry("FINISHED", final=True)
    async with running(persister):
        persister.put(pending)
        await anyio.wait_all_tasks_blocked()  # its first write failed: it waits to retry
        persister.put(done)
        await persister.wait_intent("a", 1)
        await persister.flush()
    assert ([pending, done], 5, []) == (store.stored, store.tries, persister.failed)


async def test_a_write_that_keeps_failing_is_given_up_at_the_bound_and_reported() -> None:
    store = FlakyStore(failures=None)
    with capture_logs() as logs:
        persister = Persister(store, give_up_after=0.05, first_delay=0.01)  # type: ignore[arg-type]
        async with running(persister):
            started = anyio.current_time()
            persister.put(entry("PENDING", attempt=2))
            with pytest.raises(StoreError, match=r"^gave up storing step a of study sid "
                               r"\(PENDING, attempt 2\) after \d+ tries: put troupe_steps "
                               r"failed: nats: timeout$") as info:
                await persister.wait_intent("a", 2)
            await persister.flush()  # returns: a given-up entry counts as done
    assert anyio.current_time() - started >= 0.05
    assert ("troupe_steps", "sid.a") == (info.value.bucket, info.value.key)
    [failure] = persister.failed
    assert WriteFailure(study_id="sid", step="a", state="PENDING", attempt=2, intent_attempt=2,
                        final=False, tries=store.tries, error="put troupe_steps failed: "
                        "nats: timeout") == failure  # fmt: skip
    assert store.tries >= 2 and [] == store.stored
    [given_up] = [log for log in logs if log["event"] == "step_write_given_up"]
    assert ("error", "sid", "a", "PENDING", 2) == (
        given_up["log_level"], given_up["study_id"], given_up["step"], given_up["state"],
        given_up["attempt"])


async def test_waiting_for_an_intent_already_given_up_raises_at_once() -> None:
    persister = Persister(FlakyStore(failures=None), give_up_after=0)  # type: ignore[arg-type]
    async with running(persister):
        persister.put(entry("PENDING", attempt=1))
        await persister.flush()
        assert 1 == len(persister.failed)
        with pytest.raises(StoreError, match=r"^gave up storing step a .* after 1 tries: "):
            await persister.wait_intent("a", 1)


async def test_a_waiter_for_a_later_attempt_keeps_waiting_after_a_give_up() -> None:
    store = FlakyStore(failures=1)
    persister = Persister(store, give_up_after=0)  # type: ignore[arg-type]
    async with running(persister) as tg:
        waited: list[int] = []

        async def wait(attempt: int) -> None:
            await persister.wait_intent("a", attempt)
            waited.append(attempt)

        tg.start_soon(wait, 2)
        persister.put(entry("FAILED", attempt=1))  # given up: it names attempt 1 only
        await persister.flush()
        await anyio.wait_all_tasks_blocked()
        assert [] == waited
        persister.put(entry("PENDING", attempt=2))
        await persister.flush()
        await anyio.wait_all_tasks_blocked()
    assert [2] == waited


async def test_a_newer_pending_entry_of_the_step_can_still_satisfy_the_waiter() -> None:
    """The entry given up was not the last chance: the one put meanwhile names the same
    attempt, and once it is stored the waiter returns."""
    store = FlakyStore(failures=1)
    store.gate = anyio.Event()  # hold the first write in flight
    persister = Persister(store, give_up_after=0)  # type: ignore[arg-type]
    running_entry = entry("RUNNING")
    async with running(persister) as tg:
        returned = anyio.Event()

        async def wait() -> None:
            await persister.wait_intent("a", 1)
            returned.set()

        persister.put(entry("PENDING"))
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        persister.put(running_entry)
        store.gate.set()  # the PENDING write fails and is given up; RUNNING follows
        await persister.flush()
        await returned.wait()
    given_up = [failure.state for failure in persister.failed]
    assert (["PENDING"], [running_entry]) == (given_up, store.stored)


async def test_flush_after_cancellation_writes_what_the_cancelled_round_left() -> None:
    store = FlakyStore()
    store.gate = anyio.Event()
    persister = Persister(store)  # type: ignore[arg-type]
    async with running(persister):
        persister.put(entry("PENDING"))
        await anyio.wait_all_tasks_blocked()  # the write waits in flight, then is cancelled
    store.gate.set()
    async with running(persister):
        await persister.flush()
    assert [entry("PENDING")] == store.stored


def waiting(attempt: int = 1) -> StepEntry:
    """A WAITING entry: it names the attempt the step will make (its intent)."""
    return StepEntry(study_id="sid", step="a", state="WAITING", attempt=attempt - 1,
                     intent_attempt=attempt)


async def test_an_entry_naming_no_new_intent_is_held_back_and_a_quick_end_replaces_it() -> None:
    store = FlakyStore()
    persister = Persister(store, defer=30)  # type: ignore[arg-type]
    intent, run, done = waiting(), entry("RUNNING"), entry("FINISHED", final=True)
    async with running(persister):
        persister.put(intent)
        await persister.wait_intent("a", 1)  # written at once: a submission waits for it
        persister.put(run)  # names attempt 1 again: held back
        await anyio.wait_all_tasks_blocked()
        assert [intent] == store.stored
        persister.put(done)  # the step ended meanwhile: one write, the final entry
        await persister.flush()
    assert [intent, done] == store.stored


async def test_a_held_back_entry_is_written_after_its_period_or_by_flush() -> None:
    store = FlakyStore()
    persister = Persister(store, defer=0.01)  # type: ignore[arg-type]
    intent, run = waiting(), entry("RUNNING")
    async with running(persister):
        persister.put(intent)
        await persister.wait_intent("a", 1)
        persister.put(run)
        with anyio.fail_after(5):
            while len(store.stored) < 2:  # written once it was held for a period or two
                await anyio.sleep(0.005)
    assert [intent, run] == store.stored
    store2 = FlakyStore()
    persister = Persister(store2, defer=30)  # type: ignore[arg-type]
    async with running(persister):
        persister.put(intent)
        await persister.wait_intent("a", 1)
        persister.put(run)
        with anyio.fail_after(5):
            await persister.flush()  # does not wait for the period
    assert [intent, run] == store2.stored


async def test_an_entry_naming_an_intent_not_yet_stored_is_never_held_back() -> None:
    store = FlakyStore()
    persister = Persister(store, defer=30)  # type: ignore[arg-type]
    async with running(persister):
        persister.put(entry("PENDING", attempt=2))  # attempt 2 was never stored
        with anyio.fail_after(5):
            await persister.wait_intent("a", 2)
    assert ["PENDING"] == [e.state for e in store.stored]


async def test_an_entry_whose_intent_is_being_written_is_held_back_too() -> None:
    store = FlakyStore()
    persister = Persister(store, defer=30)  # type: ignore[arg-type]
    intent, run, done = waiting(), entry("RUNNING"), entry("FINISHED", final=True)
    store.gate = anyio.Event()  # the intent's write stays in flight
    async with running(persister):
        persister.put(intent)
        await anyio.wait_all_tasks_blocked()
        persister.put(run)  # names the attempt being written: held back, not queued
        store.gate.set()
        await persister.wait_intent("a", 1)
        await anyio.wait_all_tasks_blocked()
        assert [intent] == store.stored
        persister.put(done)
        await persister.flush()
    assert [intent, done] == store.stored
