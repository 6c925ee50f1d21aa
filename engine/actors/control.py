"""Control requests a running study answers (``troupe.v1.control.<study>.*``): cancel the
study or the steps matching a glob, change a throttle. Pure: it calls the runtime's public
methods and builds the reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.messages import AnyBusMessage, CancelSteps, ControlReply, SetThrottle, new_event_id

if TYPE_CHECKING:
    from engine.actors.study import StudyRuntime

__all__ = ["answer_control"]


def answer_control(runtime: StudyRuntime, request: AnyBusMessage) -> ControlReply:
    """Carry out ``request`` on ``runtime`` and say what happened."""
    rid = new_event_id()
    match request:
        case CancelSteps(study_id=sid) if sid != runtime.study_id:
            return ControlReply(event_id=rid, ok=False, detail=f"unknown study {sid}")
        case CancelSteps(glob=""):
            runtime.cancel(reason=request.reason)
            return ControlReply(event_id=rid, ok=True, detail="study cancelled",
                                matched=len(runtime.order))
        case CancelSteps(glob=glob):
            n = runtime.cancel_steps(glob, reason=request.reason)
            detail = f"{n} steps match {glob!r}" if n else f"no step matches {glob!r}"
            return ControlReply(event_id=rid, ok=n > 0, detail=detail, matched=n)
        case SetThrottle(study_id=sid) if sid != runtime.study_id:
            return ControlReply(event_id=rid, ok=False, detail=f"unknown study {sid}")
        case SetThrottle(limit=limit, scope=scope) if limit >= 0:
            runtime.set_throttle(limit, scope)
            return ControlReply(event_id=rid, ok=True, detail=f"throttle {scope} = {limit}")
        case _:
            return ControlReply(event_id=rid, ok=False,
                                detail=f"unsupported request {type(request).__name__}")
