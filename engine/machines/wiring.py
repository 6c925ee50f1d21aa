"""The wiring between a study's machines: which commands of one actor are addressed to
another, and the event each becomes there (pure). A step asking for a slot
(``RequestSlot``) becomes the supervisor's ``SlotRequested``; a grant (``GrantSlot``)
becomes the step's ``SlotGranted``; a supervisor's ``CancelStep`` becomes the step's
``CancelRequested``. The loop (``engine.actors._loop``) decides such events in the same
dispatch pass, without a trip through the inbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.machines.supervisor import SUPERVISOR, Target
from engine.messages import (
    CancelRequested,
    CancelStep,
    Command,
    Event,
    GrantSlot,
    ReleaseSlot,
    RequestSlot,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    WithdrawSlotRequest,
    new_event_id,
)

__all__ = ["ROUTES"]


def _slot_requested(cmd: RequestSlot, cause: str) -> tuple[Target, Event]:
    return SUPERVISOR, SlotRequested(event_id=cause, step=cmd.step, scopes=cmd.scopes,
                                   again=cmd.again)


def _slot_released(cmd: ReleaseSlot, cause: str) -> tuple[Target, Event]:
    return SUPERVISOR, SlotReleased(event_id=cause, step=cmd.step, scopes=cmd.scopes)


def _slot_withdrawn(cmd: WithdrawSlotRequest, cause: str) -> tuple[Target, Event]:
    return SUPERVISOR, SlotWithdrawn(event_id=cause, step=cmd.step)


def _slot_granted(cmd: GrantSlot, cause: str) -> tuple[Target, Event]:
    return cmd.step, SlotGranted(event_id=new_event_id(), cause_id=cause)


def _cancel_requested(cmd: CancelStep, cause: str) -> tuple[Target, Event]:
    return cmd.step, CancelRequested(event_id=new_event_id(), cause_id=cause,
                                     reason=cmd.reason, lost_race=cmd.lost_race)


ROUTES: dict[type[Command], Callable[[Any, str], tuple[Target, Event]]] = {
    RequestSlot: _slot_requested,
    ReleaseSlot: _slot_released,
    WithdrawSlotRequest: _slot_withdrawn,
    GrantSlot: _slot_granted,
    CancelStep: _cancel_requested,
}
"""Command type -> the function that turns it into ``(target, event)``."""
