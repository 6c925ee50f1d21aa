"""Control requests on a study: cancel the study or the steps matching a glob, change a
throttle. One implementation answers them wherever they arrive: on the study's own
control subject (``troupe.v1.control.<study>.*``, ``serve_control``, which ``run`` and
``serve`` both listen on) and through the engine service's API (``answer_control`` and,
for a study the engine does not host, ``answer_not_hosted``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from engine import subjects
from engine.messages import AnyBusMessage, CancelSteps, ControlReply, SetThrottle, new_event_id

if TYPE_CHECKING:
    from engine.bus import Bus

    class Controllable(Protocol):
        """What a control request needs of a running study (``StudyRuntime`` offers it).
        (A protocol for the type checker only: defining one costs a millisecond at import.)"""

        study_id: str

        @property
        def order(self) -> list[str]: ...

        def cancel(self, reason: str = ...) -> None: ...

        def cancel_steps(self, glob: str, reason: str = ...) -> int: ...

        def set_throttle(self, limit: int, scope: str = ...) -> None: ...

__all__ = ["answer_control", "answer_not_hosted", "serve_control"]


def answer_control(runtime: Controllable, request: AnyBusMessage) -> ControlReply:
    """Carry out ``request`` on ``runtime`` and say what happened."""
    rid = new_event_id()
    match request:
        case CancelSteps(study_id=sid) | SetThrottle(study_id=sid) if sid != runtime.study_id:
            return ControlReply(event_id=rid, ok=False, detail=f"unknown study {sid}")
        case CancelSteps(glob=""):
            runtime.cancel(reason=request.reason)
            return ControlReply(event_id=rid, ok=True, detail="study cancelled",
                                matched=len(runtime.order))
        case CancelSteps(glob=glob):
            n = runtime.cancel_steps(glob, reason=request.reason)
            detail = f"{n} steps match {glob!r}" if n else f"no step matches {glob!r}"
            return ControlReply(event_id=rid, ok=n > 0, detail=detail, matched=n)
        case SetThrottle(limit=limit, scope=scope) if limit >= 0:
            runtime.set_throttle(limit, scope)
            return ControlReply(event_id=rid, ok=True, detail=f"throttle {scope} = {limit}")
        case SetThrottle(limit=limit):
            return ControlReply(event_id=rid, ok=False,
                                detail=f"throttle must be 0 (unlimited) or more, not {limit}")
        case _:
            return ControlReply(event_id=rid, ok=False,
                                detail=f"unsupported request {type(request).__name__}")


def answer_not_hosted(request: CancelSteps | SetThrottle, *, known: bool) -> ControlReply:
    """The answer to a control request for a study this engine does not run: an ended
    study (``known``) or an unknown id. Cancelling an ended study changes nothing and is
    not an error, so that a cancel racing the study's end succeeds."""
    sid = request.study_id
    if not known:
        return ControlReply(event_id=new_event_id(), ok=False, detail=f"unknown study {sid}")
    if isinstance(request, CancelSteps):
        return ControlReply(event_id=new_event_id(), ok=True,
                            detail=f"study {sid} is not running: nothing to cancel")
    return ControlReply(event_id=new_event_id(), ok=False, detail=f"study {sid} is not running")


async def serve_control(
    bus: Bus, runtime: Controllable, *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """Answer the control requests sent to ``runtime``'s study until cancelled."""
    async with bus.serve(subjects.control(runtime.study_id, "*")) as requests:
        task_status.started()
        async for request, reply in requests:
            await reply(answer_control(runtime, request))
