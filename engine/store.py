"""Durable state in JetStream key-value buckets: studies, runs, steps and workers.

Entities follow Merlin's entity managers: get by id (or a run by workspace), list with
filters (study, state, name, worker), delete with clean-up of the references between them
(deleting a study deletes its runs and steps), and delete all. Every value is a msgspec
Struct as JSON. Keys are built with ``subjects.kv_key``; a step's key is
``<study>.<step>`` so a study's steps are one wildcard away.

Writes that recovery depends on are acknowledged: a step's *intent* (the attempt about to
be submitted, with its idempotency key) is stored before the submission, and its terminal
outcome with a compare-and-swap on the key's revision, so applying a terminal transition
twice is a no-op. Other transitions are written without waiting.

The buckets are ``engine.kvbucket.KeyValueBucket`` objects: this module never sees nats-py. A
missing key reads as None; every failure to read or write raises ``StoreError``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio
import msgspec

from engine.bus import Bus
from engine.errors import StoreConflict, StoreError
from engine.kvbucket import KeyValueBucket
from engine.machines.step import StepRecord, next_attempt
from engine.messages import TERMINAL_STATES, StepSummary
from engine.subjects import kv_key

__all__ = [
    "BUCKETS", "STEPS_BUCKET", "RunEntry", "StepEntry", "Store", "StudyEntry", "WorkerEntry",
    "retry_store", "step_key",
]

T = TypeVar("T")

STEPS_BUCKET = "troupe_steps"
"""The bucket of the step entries (``StepEntry``), keyed by ``step_key``."""
BUCKETS = ("troupe_studies", "troupe_runs", STEPS_BUCKET, "troupe_workers")


class StudyEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A submitted study: everything needed to run it again after a restart."""

    study_id: str
    name: str
    spec_path: str
    spec_text: str
    study_dir: str
    cwd: str
    state: str  # RUNNING, FINISHED, FAILURE, CANCELLED
    created: float
    options: dict[str, object] = {}
    run_id: str = ""
    ended: float | None = None
    counts: dict[str, int] = {}
    error: str = ""  # why the engine could not host it (its state is then FAILURE)
    request_id: str = ""  # the submit request's id (a retried submit finds its study)
    hosting_failures: int = 0  # how many times hosting it failed (quarantined at 2)
    host: str = ""  # the engine hosting it (engine.service: its lease is that engine's heartbeat)


class RunEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of a study in its workspace by one engine."""

    run_id: str
    study_id: str
    workspace: str
    worker: str
    started: float
    state: str = "RUNNING"
    ended: float | None = None


class StepEntry(msgspec.Struct, frozen=True, kw_only=True):
    """The durable record of one step instance (see ``engine.machines.step.StepRecord``).

    ``intent_attempt``/``intent_key`` name the attempt whose submission was (about to be)
    made; ``final`` is True once the step ended for good.
    """

    study_id: str
    step: str
    state: str
    attempt: int = 0
    job_id: str = ""
    exit_code: int | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    restarts: int = 0
    retries: int = 0
    merlin_retries: int = 0
    hw_failures: int = 0
    use_restart: bool = False
    reason: str = ""
    final: bool = False
    soft: bool = False
    intent_attempt: int = 0
    intent_key: str = ""
    worker: str = ""
    interrupted: bool = False
    lost_race: bool = False

    @classmethod
    def from_record(cls, rec: StepRecord, *, study_id: str, worker: str = "",
                    final: bool = False, soft: bool = False, interrupted: bool = False,
                    reason: str | None = None, ahead: bool = False) -> StepEntry:
        """The entry that stores ``rec`` (the way back is ``StepRecord.restore``).

        Args:
            rec: The step's record.
            study_id: Its study.
            worker: The engine that hosts it.
            final: The step ended for good (written with compare-and-swap).
            soft: A Merlin soft fail.
            interrupted: A graceful stop interrupted its attempt (it runs again).
            reason: Replaces the record's reason.
            ahead: Name the step's next attempt as the intent already (a chain's child,
                stored while its parent runs: its submission then waits for no write).
        """
        intent = rec.attempt + 1 if ahead else next_attempt(rec)
        return cls(
            study_id=study_id, step=rec.name, state=rec.state.value, attempt=rec.attempt,
            job_id=rec.job_id, exit_code=rec.exit_code, submit_time=rec.submit_time,
            start_time=rec.start_time, end_time=rec.end_time, restarts=rec.restarts,
            retries=rec.retries, merlin_retries=rec.merlin_retries,
            hw_failures=rec.hw_failures, use_restart=rec.use_restart,
            reason=rec.reason if reason is None else reason,
            final=final and rec.state in TERMINAL_STATES, soft=soft, intent_attempt=intent,
            intent_key=f"{study_id}/{rec.name}/{intent}", worker=worker,
            interrupted=interrupted, lost_race=rec.lost_race,
        )

    def summary(self) -> StepSummary:
        """This step as a status reply shows it."""
        return StepSummary(step=self.step, state=self.state, job_id=self.job_id,
                           attempt=self.attempt, restarts=self.restarts + self.merlin_retries,
                           submit_time=self.submit_time, start_time=self.start_time,
                           end_time=self.end_time, exit_code=self.exit_code,
                           reason=self.reason)


class WorkerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An engine process (``kind`` engine), or a worker (``enginectl worker``: its queues,
    concurrency and the attempts it runs, as its last heartbeat said)."""

    worker: str
    host: str
    pid: int
    started: float
    heartbeat: float
    studies: tuple[str, ...] = ()
    kind: str = "engine"
    queues: tuple[str, ...] = ()
    concurrency: int = 0
    running: tuple[str, ...] = ()


def step_key(study_id: str, step: str) -> str:
    """The key of a step's entry in the steps bucket: ``<study>.<step>``, each escaped."""
    return f"{kv_key(study_id)}.{kv_key(step)}"


class Store:
    """The engine's durable state. Create with ``await Store.open(bus)``.

    Every method raises ``StoreError`` when the bus cannot read or write a bucket; the
    listings (``list_*``) and ``get_steps`` read keys in a task group, so theirs comes
    inside an ``ExceptionGroup``.
    """

    def __init__(self, buckets: dict[str, KeyValueBucket]) -> None:
        self._kv = buckets
        self._enc = msgspec.json.Encoder()

    @classmethod
    async def open(cls, bus: Bus, *, replicas: int = 1) -> Store:
        """Create (or reuse) the buckets on the bus's JetStream.

        Raises:
            StoreError: a bucket cannot be created (no JetStream, no answer).
        """
        buckets = {name: await bus.key_value(name, history=5, replicas=replicas)
                   for name in BUCKETS}
        return cls(buckets)

    # ------------------------------------------------------------------ helpers

    async def _get(self, bucket: str, key: str, typ: type) -> tuple[object, int] | None:
        got = await self._kv[bucket].get(key)
        if got is None:
            return None
        value, revision = got
        return msgspec.json.decode(value, type=typ), revision

    async def _scan(self, bucket: str, pattern: str, typ: type) -> list[object]:
        """The values of the keys matching ``pattern`` (a NATS wildcard), sorted by key.

        The keys are listed first (``KeyValueBucket.keys``: every key written before the
        listing, up to 100,000 of them) and each is then read on its own, so a deleted or
        purged key is skipped. This is not a snapshot: a key written after the listing is
        missed, one deleted after it is skipped, and each value is the one current when
        that key was read.
        """
        keys = await self._kv[bucket].keys(pattern)
        found: dict[str, object] = {}
        limit = anyio.Semaphore(64)

        async def one(key: str) -> None:
            async with limit:
                got = await self._get(bucket, key, typ)
            if got is not None:
                found[key] = got[0]

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(one, key)
        return [found[k] for k in sorted(found)]

    async def _delete_keys(self, bucket: str, keys: Iterable[str]) -> None:
        for key in keys:
            await self._kv[bucket].purge(key)

    # ------------------------------------------------------------------ studies

    async def put_study(self, study: StudyEntry) -> None:
        """Store (or replace) a study."""
        await self._kv["troupe_studies"].put(kv_key(study.study_id), self._enc.encode(study))

    async def get_study(self, study_id: str) -> StudyEntry | None:
        """The study with this id, or None."""
        got = await self._get("troupe_studies", kv_key(study_id), StudyEntry)
        return None if got is None else got[0]  # type: ignore[return-value]

    async def list_studies(self, *, state: str = "", name: str = "") -> list[StudyEntry]:
        """Studies, oldest first, filtered by state and by a name glob."""
        studies = await self._scan("troupe_studies", ">", StudyEntry)
        out = [s for s in studies if (not state or s.state == state)  # type: ignore[attr-defined]
               and (not name or fnmatch.fnmatchcase(s.name, name))]  # type: ignore[attr-defined]
        return sorted(out, key=lambda s: s.created)  # type: ignore[attr-defined,return-value]

    async def claim_study(self, study_id: str, *, host: str, expected: str) -> StudyEntry | None:
        """Make ``host`` the study's host if its host is still ``expected`` (compare-and-
        swap: of two engines taking over one study, one wins).

        Returns:
            The entry as claimed, or None (gone, or claimed by another engine first).

        Raises:
            StoreError: the read or the write failed.
        """
        key = kv_key(study_id)
        got = await self._get("troupe_studies", key, StudyEntry)
        if got is None:
            return None
        entry, revision = got
        if entry.host != expected:  # type: ignore[attr-defined]
            return None
        claimed = msgspec.structs.replace(entry, host=host)  # type: ignore[type-var]
        try:
            await self._kv["troupe_studies"].update(key, self._enc.encode(claimed), last=revision)
        except StoreConflict:
            return None
        return claimed  # type: ignore[return-value]

    async def delete_study(self, study_id: str) -> None:
        """Delete a study with its runs and steps."""
        for run in await self.list_runs(study_id=study_id):
            await self._kv["troupe_runs"].purge(kv_key(run.run_id))
        steps = await self.list_steps(study_id)
        await self._delete_keys(STEPS_BUCKET, [step_key(study_id, s.step) for s in steps])
        await self._kv["troupe_studies"].purge(kv_key(study_id))

    async def delete_all(self) -> None:
        """Delete every entity of every kind."""
        for study in await self.list_studies():
            await self.delete_study(study.study_id)
        for worker in await self.list_workers():
            await self._kv["troupe_workers"].purge(kv_key(worker.worker))

    # ------------------------------------------------------------------ runs

    async def put_run(self, run: RunEntry) -> None:
        """Store (or replace) a run."""
        await self._kv["troupe_runs"].put(kv_key(run.run_id), self._enc.encode(run))

    async def list_runs(self, *, study_id: str = "", workspace: str = "",
                        worker: str = "") -> list[RunEntry]:
        """Runs filtered by study, workspace (study directory) and engine."""
        runs = await self._scan("troupe_runs", ">", RunEntry)
        return [r for r in runs  # type: ignore[misc]
                if (not study_id or r.study_id == study_id)  # type: ignore[attr-defined]
                and (not workspace or r.workspace == workspace)  # type: ignore[attr-defined]
                and (not worker or r.worker == worker)]  # type: ignore[attr-defined]

    async def delete_run(self, run_id: str) -> None:
        """Delete one run (its study and steps stay)."""
        await self._kv["troupe_runs"].purge(kv_key(run_id))

    # ------------------------------------------------------------------ steps

    async def put_step(self, entry: StepEntry) -> int:
        """Store a step's non-terminal state; returns the revision."""
        return await self._kv[STEPS_BUCKET].put(step_key(entry.study_id, entry.step),
                                                  self._enc.encode(entry))

    async def finish_step(self, entry: StepEntry, *, last: int | None = None) -> bool:
        """Store a step's final state with compare-and-swap.

        Args:
            entry: The final entry.
            last: The revision the caller last wrote for this step, if it knows it: the
                swap is then tried against it first, without reading the entry.

        Returns:
            True once written; False if the stored entry was already final for this or a
            later attempt (the transition was applied before: nothing is written).

        Raises:
            StoreError: a read or write failed, or other writers kept changing the entry
                through 20 tries.
        """
        key = step_key(entry.study_id, entry.step)
        kv = self._kv[STEPS_BUCKET]
        if last is not None:
            try:
                # Our own non-final write is the latest: nobody finished the step since.
                await kv.update(key, self._enc.encode(entry), last=last)
                return True
            except StoreConflict:
                pass  # someone wrote in between: read it, below
        for _ in range(20):
            got = await self._get(STEPS_BUCKET, key, StepEntry)
            if got is None:
                try:
                    await kv.create(key, self._enc.encode(entry))
                    return True
                except StoreConflict:
                    continue
            current, revision = got
            if current.final and current.attempt >= entry.attempt:  # type: ignore[attr-defined]
                return False
            try:
                await kv.update(key, self._enc.encode(entry), last=revision)
                return True
            except StoreConflict:
                continue  # someone wrote in between: look again
        raise StoreError(f"finish_step: no stable revision for {key} in 20 tries",
                         bucket=STEPS_BUCKET, key=key)

    async def get_step(self, study_id: str, step: str) -> StepEntry | None:
        """One step's entry, or None."""
        got = await self._get(STEPS_BUCKET, step_key(study_id, step), StepEntry)
        return None if got is None else got[0]  # type: ignore[return-value]

    async def get_steps(self, study_id: str, names: Iterable[str]) -> dict[str, StepEntry]:
        """The entries of the named steps (those that have one), read key by key.

        Recovery uses this rather than ``list_steps``: a read by key finds the entry
        whatever the size of the bucket, while a listing stops at 100,000 keys
        (see ``_scan``).
        """
        out: dict[str, StepEntry] = {}
        limit = anyio.Semaphore(64)

        async def one(name: str) -> None:
            async with limit:
                entry = await self.get_step(study_id, name)
            if entry is not None:
                out[name] = entry

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
        return out

    async def list_steps(self, study_id: str, *, state: str = "") -> list[StepEntry]:
        """A study's step entries, filtered by state."""
        steps = await self._scan(STEPS_BUCKET, f"{kv_key(study_id)}.>", StepEntry)
        return [s for s in steps if not state or s.state == state]  # type: ignore[misc,attr-defined]

    # ------------------------------------------------------------------ workers

    async def put_worker(self, worker: WorkerEntry) -> None:
        """Register (or refresh) an engine."""
        await self._kv["troupe_workers"].put(kv_key(worker.worker), self._enc.encode(worker))

    async def delete_worker(self, worker: str) -> None:
        """Forget a registered engine."""
        await self._kv["troupe_workers"].purge(kv_key(worker))

    async def list_workers(self) -> list[WorkerEntry]:
        """Every registered engine."""
        return await self._scan("troupe_workers", ">", WorkerEntry)  # type: ignore[return-value]


async def retry_store(write: Callable[[T], Awaitable[object]], value: T, *,
                      give_up_after: float = 30.0) -> None:
    """``write(value)``, tried again while the store fails (a slow or reconnecting bus)
    for up to ``give_up_after`` seconds.

    Raises:
        StoreError: the last failure, once the time is up.
    """
    deadline, delay = anyio.current_time() + give_up_after, 0.1
    while True:
        try:
            await write(value)
            return
        except StoreError:
            if anyio.current_time() + delay > deadline:
                raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
