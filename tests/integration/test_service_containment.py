"""A study the engine cannot host fails alone: it ends FAILURE with the error recorded, its
watchers hear that it ended, a neighbour study runs on to FINISHED, the engine keeps
answering, and a study whose hosting failed twice is quarantined instead of being tried
again and again. The engine service runs in-process against a real nats-server; the
faults are injected."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

import engine.service
from engine import subjects
from engine.actors.study import StudyRuntime
from engine.bus import Bus, open_bus
from engine.messages import (
    ControlReply,
    RestartRequest,
    StatusReply,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
    new_event_id,
)
from engine.service import QUARANTINE_AFTER, EngineService
from engine.store import Store

DEADLINE = 60.0


def spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"description: {{name: {name}, description: d}}\n"
                    "study:\n  - name: s\n    description: s\n    run: {cmd: 'echo ok > out'}\n")
    return path


@asynccontextmanager
async def engine_service(url: str) -> AsyncIterator[tuple[Bus, Store]]:
    async with open_bus(url) as bus:
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
        store = await Store.open(bus)
        service = EngineService(bus, store, drain_timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            yield bus, store
            service.stop()
            await service.stopped.wait()


async def submit(bus: Bus, path: Path, out: Path) -> str:
    reply = await bus.request(subjects.api("submit"), SubmitRequest(
        event_id=new_event_id(), spec_text=path.read_text(), spec_path=str(path),
        cwd=str(path.parent), out_dir=str(out)), timeout=30)
    assert isinstance(reply, SubmitReply) and reply.ok, reply
    return reply.study_id


async def ended(store: Store, study_id: str) -> str:
    """The study's state once it is no longer RUNNING (polled, with a deadline)."""
    with anyio.fail_after(DEADLINE):
        while True:
            entry = await store.get_study(study_id)
            if entry is not None and entry.state != "RUNNING":
                return entry.state
            await anyio.sleep(0.05)


@pytest.fixture
def broken_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime of any study named ``bad`` breaks as it starts (an engine bug)."""
    original = StudyRuntime._announce

    async def announce(self: StudyRuntime) -> None:
        if self.graph.name == "bad":
            raise RuntimeError("injected fault\nwith a second line")
        await original(self)

    monkeypatch.setattr(StudyRuntime, "_announce", announce)


async def test_a_study_whose_runtime_breaks_fails_alone_and_the_engine_keeps_serving(
    nats_server: str, tmp_path: Path, broken_runtime: None
) -> None:
    async with engine_service(nats_server) as (bus, store):
        bad = await submit(bus, spec(tmp_path, "bad"), tmp_path / "bad")
        good = await submit(bus, spec(tmp_path, "good"), tmp_path / "good")
        assert "FAILURE" == await ended(store, bad)
        assert "FINISHED" == await ended(store, good)
        entry = await store.get_study(bad)
        assert ("RuntimeError: injected fault with a second line", 1) == (
            entry.error, entry.hosting_failures)
        # Its watchers heard that it ended.
        events = [msgspec.json.decode(e) for e in await bus.replay_raw(
            subjects.study_events(bad), timeout=2.0)]
        assert [("study_ended", "FAILURE")] == [
            (e["type"], e["state"]) for e in events if e["type"] == "study_ended"]
        # The engine still answers, and shows the error.
        reply = await bus.request(subjects.api("status"), StatusRequest(
            event_id=new_event_id(), study_id=bad))
        assert isinstance(reply, StatusReply) and reply.ok
        assert entry.error == reply.studies[0].error


async def test_a_study_whose_hosting_failed_twice_is_quarantined(
    nats_server: str, tmp_path: Path, broken_runtime: None
) -> None:
    async with engine_service(nats_server) as (bus, store):
        bad = await submit(bus, spec(tmp_path, "bad"), tmp_path / "bad")
        assert "FAILURE" == await ended(store, bad)
        for failures in range(2, QUARANTINE_AFTER + 1):
            reply = await bus.request(subjects.api("restart"),
                                      RestartRequest(event_id=new_event_id(), study_id=bad))
            assert isinstance(reply, ControlReply) and reply.ok, reply
            with anyio.fail_after(DEADLINE):
                while (await store.get_study(bad)).hosting_failures < failures:
                    await anyio.sleep(0.05)
        reply = await bus.request(subjects.api("restart"),
                                  RestartRequest(event_id=new_event_id(), study_id=bad))
        assert isinstance(reply, ControlReply)
        assert not reply.ok and "quarantined" in reply.detail


async def test_a_study_that_cannot_be_built_fails_without_stopping_the_engine(
    nats_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = engine.service.build_runtime

    async def build(graph, *args, **kwargs):  # type: ignore[no-untyped-def]
        if graph.name == "bad":
            raise ValueError("embedded null byte")
        return await original(graph, *args, **kwargs)

    monkeypatch.setattr(engine.service, "build_runtime", build)
    async with engine_service(nats_server) as (bus, store):
        started = time.monotonic()
        bad = await submit(bus, spec(tmp_path, "bad"), tmp_path / "bad")
        good = await submit(bus, spec(tmp_path, "good"), tmp_path / "good")
        assert ("FAILURE", "FINISHED") == (await ended(store, bad), await ended(store, good))
        assert "ValueError: embedded null byte" == (await store.get_study(bad)).error
        assert time.monotonic() - started < DEADLINE


@pytest.fixture
def slow_expansion(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Loading a spec blocks (in whatever thread runs it) until the test lets it go."""
    gate = threading.Event()
    calls: list[str] = []
    original = EngineService._load

    def load(self, spec_path, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(spec_path)
        if not gate.wait(timeout=DEADLINE):
            raise RuntimeError("the test never released the expansion")
        return original(self, spec_path, *args, **kwargs)

    monkeypatch.setattr(EngineService, "_load", load)
    return gate, calls


async def test_the_engine_answers_others_while_a_big_spec_expands(
    nats_server: str, tmp_path: Path, slow_expansion  # type: ignore[no-untyped-def]
) -> None:
    gate, calls = slow_expansion
    async with engine_service(nats_server) as (bus, store):
        async with anyio.create_task_group() as tg:
            ids: list[str] = []

            async def submitting() -> None:
                ids.append(await submit(bus, spec(tmp_path, "big"), tmp_path / "big"))

            tg.start_soon(submitting)
            with anyio.fail_after(DEADLINE):
                while not calls:  # the expansion has begun, and blocks
                    await anyio.sleep(0.01)
            reply = await bus.request(subjects.api("status"),
                                      StatusRequest(event_id=new_event_id()), timeout=5)
            assert isinstance(reply, StatusReply) and reply.ok
            gate.set()
        assert "FINISHED" == await ended(store, ids[0])


async def test_a_retried_submit_gets_the_first_study_never_a_second(
    nats_server: str, tmp_path: Path, slow_expansion  # type: ignore[no-untyped-def]
) -> None:
    gate, calls = slow_expansion
    path = spec(tmp_path, "once")
    request = SubmitRequest(event_id=new_event_id(), spec_text=path.read_text(),
                            spec_path=str(path), cwd=str(tmp_path),
                            out_dir=str(tmp_path / "once"), request_id="req-1")
    async with engine_service(nats_server) as (bus, store):
        replies: list[SubmitReply] = []

        async def send() -> None:
            reply = await bus.request(subjects.api("submit"), request, timeout=DEADLINE)
            assert isinstance(reply, SubmitReply)
            replies.append(reply)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.fail_after(DEADLINE):
                while not calls:
                    await anyio.sleep(0.01)
            tg.start_soon(send)  # the client's retry, while the first is still expanding
            await anyio.wait_all_tasks_blocked()
            gate.set()
        await send()  # and once more after it was answered
        assert 3 == len(replies) and all(r.ok for r in replies), replies
        assert 1 == len({r.study_id for r in replies})
        assert 1 == len(calls), "the spec was expanded once"
        assert [replies[0].study_id] == [s.study_id for s in await store.list_studies()]
