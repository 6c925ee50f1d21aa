"""The durable store against a real nats-server: Merlin's entity-manager operations and
compare-and-swap on final step entries."""

from __future__ import annotations

import pytest

from engine import subjects
from engine.bus import open_bus
from engine.errors import StoreConflict, StoreError
from engine.store import RunEntry, StepEntry, Store, StudyEntry, WorkerEntry


def study(sid: str, name: str, state: str = "RUNNING", created: float = 1.0) -> StudyEntry:
    return StudyEntry(study_id=sid, name=name, spec_path="/s.yaml", spec_text="x",
                      study_dir=f"/studies/{sid}", cwd="/", state=state, created=created)


async def test_entities_get_list_filter_and_delete_with_cleanup(nats_server: str) -> None:
    async with open_bus(nats_server) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        store = await Store.open(bus)
        await store.put_study(study("s1", "alpha", "FINISHED", 1.0))
        await store.put_study(study("s2", "beta", "RUNNING", 2.0))
        await store.put_run(RunEntry(run_id="r1", study_id="s1", workspace="/studies/s1",
                                     worker="w1", started=1.0))
        await store.put_run(RunEntry(run_id="r2", study_id="s2", workspace="/studies/s2",
                                     worker="w2", started=2.0))
        for name in ("a", "b.c d"):
            await store.put_step(StepEntry(study_id="s1", step=name, state="RUNNING", attempt=1))
        await store.put_worker(WorkerEntry(worker="w1", host="h", pid=1, started=0, heartbeat=0))

        assert "alpha" == (await store.get_study("s1")).name
        assert ["s2"] == [s.study_id for s in await store.list_studies(state="RUNNING")]
        assert ["s1"] == [s.study_id for s in await store.list_studies(name="al*")]
        assert ["r1"] == [r.run_id for r in await store.list_runs(workspace="/studies/s1")]
        assert ["r2"] == [r.run_id for r in await store.list_runs(worker="w2")]
        assert {"a", "b.c d"} == {s.step for s in await store.list_steps("s1")}
        assert {"a", "b.c d"} == set(await store.get_steps("s1", ["a", "b.c d", "missing"]))

        await store.delete_study("s1")
        assert await store.get_study("s1") is None
        assert [] == await store.list_runs(study_id="s1")
        assert [] == await store.list_steps("s1")
        assert ["s2"] == [s.study_id for s in await store.list_studies()]
        await store.delete_all()
        assert ([], []) == (await store.list_studies(), await store.list_workers())


async def test_final_entry_is_compare_and_swap_and_applying_it_twice_is_a_no_op(
    nats_server: str,
) -> None:
    async with open_bus(nats_server) as bus:
        await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        store = await Store.open(bus)
        await store.put_step(StepEntry(study_id="s", step="x", state="RUNNING", attempt=2))
        done = StepEntry(study_id="s", step="x", state="FINISHED", attempt=2, final=True)
        assert await store.finish_step(done) is True
        assert await store.finish_step(done) is False, "the second application changes nothing"
        stale = StepEntry(study_id="s", step="x", state="FAILED", attempt=1, final=True)
        assert await store.finish_step(stale) is False, "an older attempt cannot overwrite it"
        assert "FINISHED" == (await store.get_step("s", "x")).state


async def test_final_entry_swapped_against_the_revision_the_writer_knows(
    nats_server: str,
) -> None:
    async with open_bus(nats_server) as bus:
        await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        store = await Store.open(bus)
        rev = await store.put_step(StepEntry(study_id="s", step="y", state="RUNNING", attempt=1))
        done = StepEntry(study_id="s", step="y", state="FINISHED", attempt=1, final=True)
        assert await store.finish_step(done, last=rev) is True
        # A stale revision (the entry moved on, here: it is final already) is not trusted:
        # the entry is read, and the final one stays.
        failed = StepEntry(study_id="s", step="y", state="FAILED", attempt=1, final=True)
        assert await store.finish_step(failed, last=rev) is False
        assert "FINISHED" == (await store.get_step("s", "y")).state


async def test_bucket_reports_a_lost_swap_as_a_conflict_and_a_missing_key_as_none(
    nats_server: str,
) -> None:
    """nats-py's errors stop at the bus: a lost compare-and-swap is a StoreConflict naming
    the key, a missing or purged key reads as None and is listed but not returned."""
    async with open_bus(nats_server) as bus:
        bucket = await bus.key_value("troupe_test", history=2)
        assert await bucket.get("k") is None
        rev = await bucket.create("k", b"1")
        with pytest.raises(StoreConflict, match=r"^create troupe_test/k: expected no value$") \
                as info:
            await bucket.create("k", b"2")
        assert ("troupe_test", "k", None) == (info.value.bucket, info.value.key, info.value.last)
        assert (b"1", rev) == await bucket.get("k")
        new = await bucket.update("k", b"3", last=rev)
        with pytest.raises(StoreConflict) as info:
            await bucket.update("k", b"4", last=rev)
        assert rev == info.value.last
        assert (b"3", new) == await bucket.get("k")
        await bucket.purge("k")
        assert (None, ["k"]) == (await bucket.get("k"), await bucket.keys())
        await bucket.create("k", b"5")  # a purged key can be created again


async def test_store_raises_store_error_once_the_bus_is_closed(nats_server: str) -> None:
    async with open_bus(nats_server) as bus:
        store = await Store.open(bus)
    with pytest.raises(StoreError) as info:
        await store.put_step(StepEntry(study_id="s", step="z", state="RUNNING"))
    assert ("troupe_steps", "s.z") == (info.value.bucket, info.value.key)
