"""The client API of a study run by ``enginectl run``: status, events, cancel, throttle.

``run`` starts its own embedded nats-server; with a ``client`` user on it (the same
permissions as a ``serve`` client: API requests, reading events) and
``<study>/meta/client.json`` (mode 0600: the URL, that user and the ``run`` process's
pid), ``enginectl status|watch|events|cancel|throttle DIR`` reach the study as they
reach one hosted by ``serve``. This module answers those requests for the one study.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from engine import subjects
from engine.actors.control import answer_control
from engine.messages import (
    AnyBusMessage,
    BusMessage,
    CancelSteps,
    ControlReply,
    EventsReply,
    EventsRequest,
    SetThrottle,
    StatusReply,
    StatusRequest,
    StepSummary,
    StopWorkers,
    StudySummary,
    new_event_id,
)
from engine.statedir import write_private
from engine.status import status_page

if TYPE_CHECKING:
    from engine.actors.study import StudyRuntime
    from engine.bus import Bus

__all__ = ["CLIENT_FILE", "serve_run_api", "write_client_file"]

CLIENT_FILE = ("meta", "client.json")


def write_client_file(study_dir: str, url: str, user: str, password: str) -> Path:
    """Write ``<study>/meta/client.json`` (0600) for clients of this ``run``."""
    path = Path(study_dir, *CLIENT_FILE)
    write_private(path, {"url": url, "user": user, "password": password, "pid": os.getpid(),
                         "host": socket.gethostname()})
    return path


def _names(runtime: StudyRuntime, ref: str) -> bool:
    """Whether ``ref`` names this study: its id or a prefix of it, its name, its
    directory (or none at all: the list of studies)."""
    study_dir = os.path.normpath(runtime.graph.study_dir)
    return (not ref or runtime.study_id.startswith(ref) or ref == runtime.graph.name
            or (os.path.isabs(ref) and os.path.normpath(ref) == study_dir))


async def _answer(bus: Bus, runtime: StudyRuntime, created: float,
                  request: AnyBusMessage) -> BusMessage:
    rid, sid = new_event_id(), runtime.study_id
    ref = getattr(request, "study_id", "")
    if not _names(runtime, ref):
        detail = f"unknown study {ref} (this is the run of {sid})"
        if isinstance(request, StatusRequest):
            return StatusReply(event_id=rid, ok=False, error=detail)
        if isinstance(request, EventsRequest):
            return EventsReply(event_id=rid, ok=False, error=detail)
        return ControlReply(event_id=rid, ok=False, detail=detail)
    match request:
        case StatusRequest():
            from engine.store import StepEntry

            state = runtime.outcome.value if runtime.outcome is not None else "RUNNING"
            study = StudySummary(study_id=sid, name=runtime.graph.name, state=state,
                                 study_dir=runtime.graph.study_dir, created=created,
                                 ended=time.time() if runtime.outcome is not None else None,
                                 counts=runtime.state_counts())
            steps: tuple[StepSummary, ...] = ()
            order = runtime.order
            if ref:
                steps = tuple(StepEntry.from_record(runtime.records[order[i]], study_id=sid)
                              .summary()
                              for i in status_page(len(order), request.offset, request.limit))
            return StatusReply(event_id=rid, ok=True, studies=(study,), steps=steps,
                               total_steps=len(order))
        case EventsRequest():
            raw = await bus.replay_raw(subjects.study_events(sid), timeout=1.0)
            return EventsReply(event_id=rid, ok=True, events=tuple(msgspec.Raw(r) for r in raw))
        case CancelSteps() | SetThrottle():
            return answer_control(runtime, msgspec.structs.replace(request, study_id=sid))
        case StopWorkers():
            await bus.publish(subjects.WORKERS_STOP, request)
            return ControlReply(event_id=rid, ok=True, detail="the workers were asked to stop")
        case _:
            return ControlReply(event_id=rid, ok=False, detail=(
                f"{type(request).__name__} is not offered by 'enginectl run' (it hosts one "
                "study; 'enginectl serve' offers every verb)"))


async def serve_run_api(
    bus: Bus, runtime: StudyRuntime, *, created: float,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """Answer the API requests for ``runtime``'s study until cancelled."""
    async with bus.serve(subjects.api("*")) as requests:
        task_status.started()
        async for request, reply in requests:
            await reply(await _answer(bus, runtime, created, request))
