"""``engine.store.retry_store``: a submitted study's entry is written again while the
store fails (a slow or reconnecting bus), and the failure is said once the time is up."""

from __future__ import annotations

import anyio
import pytest

from engine.errors import StoreError
from engine.store import retry_store


class Failing:
    def __init__(self, failures: int) -> None:
        self.failures, self.written = failures, []

    async def write(self, value: str) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("put troupe_studies failed: nats: timeout", bucket="troupe_studies")
        self.written.append(value)


async def test_a_write_that_fails_a_few_times_is_stored_once() -> None:
    store = Failing(3)
    with anyio.fail_after(10):
        await retry_store(store.write, "entry", give_up_after=10)
    assert (["entry"], 0) == (store.written, store.failures)


async def test_a_write_that_keeps_failing_raises_its_error_once_the_time_is_up() -> None:
    store = Failing(10**6)
    start = anyio.current_time()
    with pytest.raises(StoreError, match="timeout"):
        await retry_store(store.write, "entry", give_up_after=0.5)
    assert anyio.current_time() - start < 5 and [] == store.written
