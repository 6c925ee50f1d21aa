"""The dashboard's NATS side: one connection as the read-only ``monitor`` user.

``Monitor`` lists the engine's studies (``status`` requests), keeps a ``StudyView`` of
every running study and of every study a page opened (a status reply, the study's
``meta/study.json`` folded by ``engine.dag``, then its live events), and hears every
event on ``troupe.v1.events.>``. It never touches a study's state: the monitor user may
only ask ``status`` and ``events`` and listen. The browser never sees NATS: the server
hands the pages what changed (``engine.dashboard.hub``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from engine import subjects
from engine.client import ask, status_all
from engine.dag import DagNode, StepDag
from engine.dashboard.views import StudyView
from engine.errors import BusError, ConfigError
from engine.layout import read_study_graph
from engine.messages import (
    BUS_DECODER,
    EventsReply,
    EventsRequest,
    SamplesChanged,
    StatusReply,
    StatusRequest,
    StepStateChanged,
    StudyEnded,
    StudyStarted,
    new_event_id,
)
from engine.status import read_status

if TYPE_CHECKING:
    from engine.bus import Bus
    from engine.spec.graph import StudyGraph

__all__ = ["Monitor"]

_REFRESH = 5.0  # seconds between two listings of the studies (catches what no event says)
_HISTORY_LIMIT = 50_000  # instances: above, earlier attempts are not replayed at load


class Monitor:
    """What the dashboard knows of the engine's studies (see the module docstring).

    Attributes:
        studies: Study id -> its summary (``StudySummary`` fields as a dict).
        views: Study id -> its loaded ``StudyView``.
        graphs: Study id -> its expanded graph (workspaces), when it could be read.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.studies: dict[str, dict[str, Any]] = {}
        self.views: dict[str, StudyView] = {}
        self.graphs: dict[str, StudyGraph] = {}
        self._loading: dict[str, list[StepStateChanged | SamplesChanged]] = {}
        self._loaded: dict[str, anyio.Event] = {}
        self._dirty: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._log = structlog.get_logger("troupe.dashboard")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Hear every event and keep the studies current, until cancelled; ready (for
        ``TaskGroup.start``) once subscribed and the studies are listed.

        Raises:
            BusError: the connection failed.
        """
        async with anyio.create_task_group() as tg, self.bus.subscribe(
                subjects.all_events()) as messages:
            self._tg = tg
            await self.refresh()
            for sid, summary in self.studies.items():
                if summary["state"] == "RUNNING":
                    tg.start_soon(self.view, sid)
            tg.start_soon(self._refresh_loop)
            task_status.started()
            async for msg in messages:
                self._on_message(msg)
            tg.cancel_scope.cancel()

    async def _refresh_loop(self) -> None:
        while True:
            await anyio.sleep(_REFRESH)
            try:
                await self.refresh()
            except BusError as exc:
                self._log.warning("dashboard_refresh_failed", error=str(exc))

    async def refresh(self) -> None:
        """List the studies again (new ones, and those no event told of).

        Raises:
            BusError: the engine did not answer.
        """
        reply = await self.ask_status("")
        for s in reply.studies:
            summary = msgspec.to_builtins(s)
            view = self.views.get(s.study_id)
            if view is not None:
                summary["counts"] = view.totals()
                if view.state != s.state and s.state != "RUNNING":
                    view.end(s.state)
            if self.studies.get(s.study_id) != summary:
                self.studies[s.study_id] = summary
                self._dirty.add(s.study_id)
            if s.state == "RUNNING" and s.study_id not in self._loaded and self._tg:
                self._tg.start_soon(self.view, s.study_id)

    async def ask_status(self, study_id: str) -> StatusReply:
        """A status reply (``study_id`` empty: every study).

        Raises:
            BusError: the engine did not answer.
            ConfigError: it answered with an error (an unknown study).
        """
        reply = await (status_all(self.bus, study_id) if study_id else ask(
            self.bus, "status", StatusRequest(event_id=new_event_id())))
        if not isinstance(reply, StatusReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or "status failed")
        return reply

    async def view(self, study_id: str) -> StudyView:
        """The study's view, loaded on first use (once, however many pages ask).

        Raises:
            ConfigError: no such study.
            BusError: the engine did not answer.
        """
        done = self._loaded.get(study_id)
        if done is not None:
            await done.wait()
            if study_id in self.views:
                return self.views[study_id]
            raise ConfigError(f"unknown study {study_id}")
        done = self._loaded[study_id] = anyio.Event()
        try:
            await self._load(study_id)
        except BaseException:
            del self._loaded[study_id]
            raise
        finally:
            done.set()
        return self.views[study_id]

    async def _load(self, study_id: str) -> None:
        known = self.studies.get(study_id)
        if known is not None and known["state"] != "RUNNING" and await self._load_ended(known):
            return
        self._loading[study_id] = []
        try:
            reply = await self.ask_status(study_id)
            summary = msgspec.to_builtins(reply.studies[0])
            graph = await anyio.to_thread.run_sync(_read_graph, summary["study_dir"])
            if graph is not None:
                dag = StepDag.from_graph(graph)
                self.graphs[study_id] = graph
            else:  # its directory cannot be read here: a node per instance, no edges
                dag = StepDag(name=summary["name"], edges=(), nodes=tuple(
                    DagNode(name=s.step, instances=(s.step,)) for s in reply.steps))
            view = StudyView(study_id, dag)
            view.load(reply.steps)
            for msg in self._loading[study_id]:  # heard while the reply was on its way
                if isinstance(msg, StepStateChanged):
                    view.apply(msg, buffered=True)
                else:
                    view.apply_samples(msg)
            view.state = summary["state"]
        finally:
            del self._loading[study_id]
        self.views[study_id] = view
        summary["counts"] = view.totals()
        self.studies[study_id] = summary
        self._dirty.add(study_id)
        self._loaded_view(view)

    def _loaded_view(self, view: StudyView) -> None:
        self._log.info("dashboard_study_loaded", study_id=view.study_id,
                       steps=len(view.instances))
        if len(view.instances) <= _HISTORY_LIMIT and self._tg is not None:
            self._tg.start_soon(self._replay_history, view.study_id, view)

    async def _load_ended(self, summary: dict[str, Any]) -> bool:
        """An ended study, drawn first from its final ``status.csv`` (the engine's status
        of an ended study reads every step from the store: a second for 10,000); the
        status reply follows in the background with attempts, exit codes and reasons.
        False if the directory cannot be read here."""
        study_id = summary["study_id"]
        read = await anyio.to_thread.run_sync(_read_ended, summary["study_dir"])
        if read is None:
            return False
        graph, states = read
        view = StudyView(study_id, StepDag.from_graph(graph))
        view.load_states(states)
        view.state = summary["state"]
        self.graphs[study_id] = graph
        self.views[study_id] = view
        self._dirty.add(study_id)
        if self._tg is not None:
            self._tg.start_soon(self._complete, view)
        self._loaded_view(view)
        return True

    async def _complete(self, view: StudyView) -> None:
        try:
            reply = await self.ask_status(view.study_id)
        except (BusError, ConfigError) as exc:
            self._log.info("dashboard_status_unavailable", study_id=view.study_id,
                           error=str(exc))
            return
        view.load(reply.steps)

    async def _replay_history(self, study_id: str, view: StudyView) -> None:
        """Earlier attempts (retries, restarts) from the study's stored events, for the
        timeline and the step panel; best effort (a huge study's reply may not fit)."""
        try:
            events = await self.events(study_id, timeout=20.0)
        except (BusError, ConfigError) as exc:
            self._log.info("dashboard_history_unavailable", study_id=study_id, error=str(exc))
            return
        view.history(e for e in events if isinstance(e, StepStateChanged))

    async def events(self, study_id: str, *, timeout: float = 10.0) -> list[Any]:
        """The study's stored events, decoded, oldest first (for the server only: a page
        never gets them all).

        Raises:
            BusError: the engine did not answer within ``timeout`` seconds.
            ConfigError: it answered with an error.
        """
        reply = await self.bus.request(subjects.api("events"), EventsRequest(
            event_id=new_event_id(), study_id=study_id), timeout=timeout)
        if not isinstance(reply, EventsReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or "events failed")
        return [BUS_DECODER.decode(bytes(raw)) for raw in reply.events]

    def take_dirty(self) -> set[str]:
        """The studies whose summary changed since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def summary(self, study_id: str) -> dict[str, Any]:
        """A study's summary with its current counts."""
        summary = dict(self.studies[study_id])
        view = self.views.get(study_id)
        if view is not None:
            summary["counts"] = view.totals()
            summary["state"] = view.state
        return summary

    def _on_message(self, msg: Any) -> None:
        match msg:
            case StepStateChanged(study_id=sid) | SamplesChanged(study_id=sid):
                view = self.views.get(sid)
                if view is not None:
                    if isinstance(msg, StepStateChanged):
                        view.apply(msg)
                    else:
                        view.apply_samples(msg)
                    self._dirty.add(sid)
                elif sid in self._loading:
                    self._loading[sid].append(msg)
                elif sid not in self._loaded and self._tg is not None:
                    self._tg.start_soon(self._try_view, sid)  # a study not listed yet
            case StudyStarted(study_id=sid):
                # (Re)started: its states come afresh from a new status reply.
                self.views.pop(sid, None)
                self._loaded.pop(sid, None)
                self.studies.setdefault(sid, {"study_id": sid, "name": msg.name,
                                              "study_dir": msg.study_dir, "created": msg.time,
                                              "ended": None, "counts": {}, "error": ""})
                self.studies[sid].update(state="RUNNING", ended=None)
                self._dirty.add(sid)
                if self._tg is not None:
                    self._tg.start_soon(self._try_view, sid)
            case StudyEnded(study_id=sid):
                if sid in self.studies:
                    self.studies[sid].update(state=str(msg.state), ended=msg.time)
                    self._dirty.add(sid)
                view = self.views.get(sid)
                if view is not None:
                    view.end(str(msg.state))

    async def _try_view(self, study_id: str) -> None:
        try:
            await self.view(study_id)
        except (BusError, ConfigError) as exc:
            self._log.warning("dashboard_load_failed", study_id=study_id, error=str(exc))


def _read_ended(study_dir: str) -> tuple[StudyGraph, list[tuple[str, str]]] | None:
    graph = _read_graph(study_dir)
    if graph is None:
        return None
    try:
        rows = read_status(os.path.join(study_dir, "status.csv"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return graph, [(r.get("Step Name", ""), r.get("State", "")) for r in rows]


def _read_graph(study_dir: str) -> StudyGraph | None:
    try:
        return read_study_graph(study_dir)
    except ConfigError:
        return None
