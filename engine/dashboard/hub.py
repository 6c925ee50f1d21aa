"""Server-sent events for the pages: a snapshot first, then what changed, coalesced.

Every ``interval`` seconds (75 ms by default) ``Hub.flush`` takes what changed in each
study since the last flush (``StudyView.take_changes``) and sends each page one message:
the steps that changed (with their counts), the instances that changed (name and state,
at most ``INSTANCE_CAP``) and the engine time of every event behind them, so that a page
can measure how late it applies them. However many events a 10,000-instance study
produces, a page gets at most one message per interval, sized by the steps that changed.
A page that cannot keep up (its queue full) is closed; its ``EventSource`` reconnects
and starts again from a snapshot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if TYPE_CHECKING:
    from engine.dashboard.monitor import Monitor
    from engine.dashboard.views import StudyView

__all__ = ["INSTANCE_CAP", "Hub", "snapshot"]

INSTANCE_CAP = 2_000
"""Changed instances sent in one message at most (the rest: ``instances_more``)."""
TIMES_CAP = 5_000  # event times per message at most (latency samples)
_QUEUE = 64  # messages a page may have waiting before it is dropped
_KEEPALIVE = 15.0


def _sse(kind: str, data: dict[str, Any]) -> str:
    """One server-sent event; JSON never holds a raw newline, so one ``data:`` line."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def snapshot(monitor: Monitor, view: StudyView) -> dict[str, Any]:
    """Everything a study page draws first: the study, its steps with their counts, the
    edges with their kinds, and the layout."""
    dag = view.dag
    layout = _layout(view)
    return {
        "study": monitor.summary(view.study_id),
        "nodes": [{**view.node(n.name), "description": n.description, "sampled": n.sampled,
                   "when": n.when, "race": n.race, "layer": layout[n.name][0],
                   "position": layout[n.name][1]} for n in dag.nodes],
        "edges": [{"source": e.source, "target": e.target, "kind": e.kind,
                   "implied": e.implied} for e in dag.edges],
    }


def _layout(view: StudyView) -> dict[str, tuple[int, int]]:
    cached: dict[str, tuple[int, int]] | None = getattr(view, "_layout", None)
    if cached is None:
        cached = view.dag.layout()
        view._layout = cached  # type: ignore[attr-defined]  # computed once per view
    return cached


class _Page:
    """One connected page: the study it shows ("" for the studies page) and its queue."""

    def __init__(self, study: str) -> None:
        self.study = study
        self.send: MemoryObjectSendStream[str]
        self.receive: MemoryObjectReceiveStream[str]
        self.send, self.receive = anyio.create_memory_object_stream[str](_QUEUE)
        self.view: StudyView | None = None

    def put(self, message: str) -> None:
        try:
            self.send.send_nowait(message)
        except anyio.WouldBlock:
            self.send.close()  # too slow: it reconnects and starts from a snapshot
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


class Hub:
    """The pages connected to the server-sent events endpoint (see the module docstring)."""

    def __init__(self, monitor: Monitor, *, interval: float = 0.075) -> None:
        self.monitor = monitor
        self.interval = interval
        self.pages: set[_Page] = set()

    async def run(self) -> None:
        """Flush every ``interval`` seconds, until cancelled."""
        while True:
            await anyio.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Send every page what changed since the last flush."""
        dirty = self.monitor.take_dirty()
        for sid, view in list(self.monitor.views.items()):
            changes = view.take_changes()
            watching = [p for p in self.pages if p.study == sid]
            for page in watching:
                if page.view is not view:  # (re)loaded since: start again from a snapshot
                    page.view = view
                    page.put(_sse("snapshot", snapshot(self.monitor, view)))
            if not (changes.nodes or changes.instances or changes.study):
                continue
            dirty.add(sid)
            if not watching:
                continue
            data = {
                "study": self.monitor.summary(sid),
                "nodes": [view.node(n) for n in changes.nodes],
                "instances": [{"name": n, "state": view.instances[n].state}
                              for n in changes.instances[:INSTANCE_CAP]],
                "instances_more": max(0, len(changes.instances) - INSTANCE_CAP),
                "times": list(changes.times[-TIMES_CAP:]),
            }
            message = _sse("nodes", data)
            for page in watching:
                page.put(message)
        if dirty:
            studies = [self.monitor.summary(s) for s in dirty if s in self.monitor.studies]
            message = _sse("studies", {"studies": studies})
            for page in self.pages:
                if not page.study:
                    page.put(message)

    async def stream(self, study: str) -> AsyncIterator[str]:
        """A page's event stream: a snapshot, then changes, with a comment every 15 s
        so that proxies and browsers keep the connection.

        Raises:
            ConfigError: ``study`` is unknown (before anything is yielded).
            BusError: the engine did not answer.
        """
        page = _Page(study)
        if study:
            view = await self.monitor.view(study)
            first = _sse("snapshot", snapshot(self.monitor, view))
            page.view = view
        else:
            first = _sse("snapshot", {"studies": [self.monitor.summary(s)
                                                  for s in self.monitor.studies]})
        self.pages.add(page)
        return self._messages(page, first)

    async def _messages(self, page: _Page, first: str) -> AsyncIterator[str]:
        try:
            yield first
            while True:
                with anyio.move_on_after(_KEEPALIVE) as idle:
                    try:
                        message = await page.receive.receive()
                    except anyio.EndOfStream:
                        return
                if idle.cancelled_caught:
                    yield ": keep-alive\n\n"
                else:
                    yield message
        finally:
            self.pages.discard(page)
            page.send.close()

    def statistics(self) -> dict[str, int]:
        """How many pages listen (for logs and tests)."""
        return {"pages": len(self.pages)}
