"""NATS's own authorization on the engine's embedded server: the client, monitor and job
users cannot publish state events, purge the event stream, or write or delete a
key-value bucket; only the engine can. A real nats-server enforces it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client

from engine import subjects
from engine.authz import NatsUser, job_user, new_secrets, role_users
from engine.bus import Credentials, open_bus
from engine.messages import BUS_DECODER, ENCODER, StepState, StepStateChanged, new_event_id
from engine.natsserver import open_embedded_server
from engine.store import Store
from tests.engine_proc import Engine

STUDY = "s-1"


def forged_event() -> tuple[str, bytes]:
    msg = StepStateChanged(event_id=new_event_id(), study_id=STUDY, step="a", attempt=1,
                           state=StepState.FINISHED, previous=StepState.RUNNING, time=1.0,
                           final=True)
    return subjects.step_event(STUDY, "a", StepState.FINISHED), ENCODER.encode(msg)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, NatsUser]]]:
    secrets_ = new_secrets()
    users = {u.name: u for u in [*role_users(secrets_), job_user(STUDY, secrets_["jobs"])]}
    users["job"] = users.pop(job_user(STUDY, secrets_["jobs"]).name)
    async with open_embedded_server(tmp_path / "nats", users=list(users.values())) as srv:
        engine = users["engine"]
        async with open_bus(srv.url, Credentials(user=engine.name,
                                                 password=engine.password)) as bus:
            assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
            await Store.open(bus)
            topic, payload = forged_event()
            await bus.publish(topic, StepStateChanged(  # one genuine event in the stream
                event_id=new_event_id(), study_id=STUDY, step="b", attempt=1,
                state=StepState.FINISHED, previous=StepState.RUNNING, time=1.0, final=True))
            await bus.flush()
        yield srv.url, users


async def connect(url: str, user: NatsUser, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(url, user=user.name, password=user.password, error_cb=on_error,
                              allow_reconnect=False)


async def state(url: str, engine: NatsUser) -> dict[str, int]:
    """Messages per stream: the event stream and every key-value bucket."""
    nc = await nats.connect(url, user=engine.name, password=engine.password)
    try:
        return {s.config.name: s.state.messages for s in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


async def wait_errors(errors: list[str], n: int) -> None:
    """The server's refusals arrive asynchronously (nats-py hands each to its error
    callback in a task of its own): wait for ``n`` of them, with a deadline."""
    with anyio.fail_after(10):
        while len(errors) < n:
            await anyio.sleep(0.01)


@pytest.mark.parametrize("role", ["client", "monitor", "job"])
async def test_no_one_but_the_engine_can_forge_events_or_touch_the_store(
    server: tuple[str, dict[str, NatsUser]], role: str
) -> None:
    url, users = server
    before = await state(url, users["engine"])
    errors: list[str] = []
    nc = await connect(url, users[role], errors)
    try:
        topic, payload = forged_event()
        await nc.publish(topic, payload)
        await nc.publish("$KV.troupe_steps.s-1.a", b"{}")
        for api in ("$JS.API.STREAM.PURGE.TROUPE_EVENTS", "$JS.API.STREAM.DELETE.KV_troupe_steps",
                    "$JS.API.STREAM.DELETE.TROUPE_EVENTS"):
            await nc.publish(api, b"{}")
        await nc.flush()
        await wait_errors(errors, 5)
    finally:
        await nc.close()
    assert 5 == len([e for e in errors if "permissions violation" in e.lower()]), errors
    assert {"TROUPE_EVENTS", "KV_troupe_steps"} <= set(before)
    assert before == await state(url, users["engine"]), "nothing changed"


async def test_a_job_reports_on_its_own_study_only(
    server: tuple[str, dict[str, NatsUser]]
) -> None:
    url, users = server
    errors: list[str] = []
    nc = await connect(url, users["job"], errors)
    try:
        await nc.publish(subjects.job_reports(STUDY), b"{}")
        await nc.publish(subjects.job_reports("another-study"), b"{}")
        await nc.flush()
        await wait_errors(errors, 1)
    finally:
        await nc.close()
    assert 1 == len(errors) and "another-study" in errors[0], errors


async def test_the_client_can_ask_and_read_events_but_the_engine_alone_answers(
    server: tuple[str, dict[str, NatsUser]]
) -> None:
    url, users = server
    errors: list[str] = []
    nc = await connect(url, users["client"], errors)
    try:
        await nc.subscribe(subjects.study_events(STUDY))
        await nc.subscribe(subjects.api("submit"))  # to answer in the engine's place
        await nc.publish(subjects.api("status"), b"{}")
        await nc.flush()
        await wait_errors(errors, 1)
    finally:
        await nc.close()
    assert 1 == len(errors) and "subscription" in errors[0].lower(), errors


def test_serve_gives_clients_the_client_user_and_jobs_never_the_engine_password(
    tmp_path: Path,
) -> None:
    engine = Engine(tmp_path / "state").start()
    try:
        client = json.loads((engine.state / "client.json").read_text())
        secrets_ = json.loads((engine.state / "credentials.json").read_text())
        monitor = json.loads((engine.state / "monitor.json").read_text())
        assert ("client", secrets_["client"]) == (client["user"], client["password"])
        assert ("monitor", secrets_["monitor"]) == (monitor["user"], monitor["password"])
        assert secrets_["engine"] not in (client["password"], monitor["password"])
    finally:
        engine.stop()


async def test_a_job_reports_with_its_own_credential_through_engine_notify(
    server: tuple[str, dict[str, NatsUser]], tmp_path: Path
) -> None:
    url, users = server
    engine, job = users["engine"], users["job"]
    nc = await nats.connect(url, user=engine.name, password=engine.password)
    try:
        sub = await nc.subscribe(subjects.job_reports(STUDY))
        await nc.flush()
        env = {**os.environ, "TROUPE_NOTIFY_USER": job.name,
               "TROUPE_NOTIFY_PASSWORD": job.password}
        proc = await anyio.run_process(
            [sys.executable, "-m", "engine.notify", url, subjects.job_reports(STUDY),
             str(tmp_path / "job.1.exit"), "3"], env=env, check=False)
        assert 0 == proc.returncode
        msg = BUS_DECODER.decode((await sub.next_msg(timeout=10)).data)
        assert (str(tmp_path / "job.1.exit"), 3) == (msg.exit_file, msg.exit_code)
    finally:
        await nc.close()
