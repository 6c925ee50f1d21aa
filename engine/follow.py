"""Following a study until it ends (``watch``, ``submit --wait``): a live bar on a
terminal (``engine.progress``), then what failed (``engine.diagnose``) and the final line
with the duration."""

from __future__ import annotations

import contextlib
import sys

import click

from engine import subjects
from engine.bus import Bus
from engine.client import ask, status_all
from engine.errors import ConfigError
from engine.messages import (
    StatusReply,
    StatusRequest,
    StepStateChanged,
    StepSummary,
    StudyEnded,
    StudyState,
    new_event_id,
)
from engine.progress import StudyProgress, final_line
from engine.status import state_counts

__all__ = ["follow"]


async def follow(bus: Bus, study_id: str, *, quiet: bool = False) -> int:
    """Show a study's progress from its events until it ends (a live bar on a terminal,
    ``engine.progress``); print what failed, then the final line; return ``run``'s exit
    code."""
    reply = await ask(bus, "status", StatusRequest(event_id=new_event_id(), study_id=study_id,
                                                    limit=0))
    if not isinstance(reply, StatusReply) or not reply.ok:
        raise ConfigError(getattr(reply, "error", "") or f"unknown study {study_id}")
    study_id = reply.studies[0].study_id  # (it may have been named by a prefix or its name)
    # Without a live bar only the study's end matters: its steps' events are not sent here.
    bar = sys.stderr.isatty() and not quiet
    subject = subjects.study_events(study_id) if bar else subjects.study_event(study_id, "ended")
    async with bus.subscribe(subject) as events:
        reply = await status_all(bus, study_id)
        if not isinstance(reply, StatusReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or f"unknown study {study_id}")
        study = reply.studies[0]
        if study.state != "RUNNING":
            if study.state == StudyState.FAILURE:
                _print_failures(study.study_dir, reply.steps)
            took = study.ended - study.created if study.ended else None
            click.echo(final_line(study.name, study.state, took, study.study_dir), err=True)
            return StudyState(study.state).exit_code
        states = {s.step: s.state for s in reply.steps}
        tries = {s.step: (s.attempt, s.restarts) for s in reply.steps}
        with contextlib.ExitStack() as stack:
            view = None
            if bar:
                view = stack.enter_context(StudyProgress(study.name, len(states)))
            async for msg in events:
                if isinstance(msg, StepStateChanged):
                    states[msg.step] = msg.state.value
                    tries[msg.step] = (msg.attempt, tries.get(msg.step, (0, 0))[1])
                elif isinstance(msg, StudyEnded):
                    stack.close()
                    if msg.state == StudyState.FAILURE:
                        await _report_failures(bus, study_id, study.study_dir)
                    click.echo(final_line(study.name, msg.state.value, msg.time - study.created,
                                          study.study_dir), err=True)
                    return msg.state.exit_code
                if view is not None:
                    retries = sum(max(a - 1, 0) for a, _ in tries.values())
                    view.update(state_counts(states.values()), retries=retries)
    return 1


async def _report_failures(bus: Bus, study_id: str, study_dir: str) -> None:
    """Print what failed in a study that ended FAILURE (``engine.diagnose``)."""
    reply = await status_all(bus, study_id)
    if isinstance(reply, StatusReply) and reply.ok:
        _print_failures(study_dir, reply.steps)


def _print_failures(study_dir: str, steps: tuple[StepSummary, ...]) -> None:
    from engine.diagnose import FailedStep, failure_report

    failed = [FailedStep(step=s.step, state=s.state, exit_code=s.exit_code, reason=s.reason,
                         attempts=s.attempt, job_id=s.job_id) for s in steps]
    for line in failure_report(study_dir, failed):
        click.echo(line, err=True)
