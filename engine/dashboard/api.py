"""The dashboard's HTTP endpoints (Starlette): the page, its JSON, its event stream and
its two controls.

Every endpoint sits behind ``engine.dashboard.auth.TokenGate`` (401 without the token,
403 for a ``POST`` without the session's CSRF header). Studies and instances are named in
query parameters (``?study=…&name=…``), since a step instance's name may hold any
character but a control character, ``/`` included. A page gets a study's steps (counts
per state, never its instances all at once), one node's instances a page at a time, one
instance's details, and the timeline's latest attempts, bounded.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from engine.dashboard.auth import SESSION_COOKIE, TokenGate
from engine.dashboard.files import OutsideStudy, attempt_hosts, output_files, tail
from engine.dashboard.hub import snapshot
from engine.dashboard.views import worker_rows
from engine.errors import BusError, ConfigError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp

    from engine.dashboard.controls import Controls
    from engine.dashboard.hub import Hub
    from engine.dashboard.monitor import Monitor
    from engine.dashboard.views import StudyView
    from engine.spec.graph import StudyGraph

__all__ = ["build_app", "static_dir"]

PAGE_LIMIT = 500  # instances per page at most
BAR_LIMIT = 5_000  # timeline bars per request at most


def static_dir() -> str:
    """Where the page's HTML, JavaScript and CSS are (package data)."""
    return str(resources.files("engine.dashboard") / "static")


def _who_ran(graph: StudyGraph, bars: list[dict[str, Any]]) -> list[str]:
    """Who ran each bar's attempt, from its claim (``worker NAME``; "" if not a worker)."""
    who = []
    for bar in bars:
        inst = graph.by_name.get(bar["step"])
        host = "" if inst is None else attempt_hosts(
            graph.study_dir, inst.workspace, [bar["attempt"]]).get(bar["attempt"], "")
        who.append(host if host.startswith("worker ") else "")
    return who


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, key: str, default: int, high: int) -> int:
    try:
        return max(0, min(int(request.query_params.get(key, default)), high))
    except ValueError:
        return default


class _Api:
    """The endpoints, over one monitor, hub and set of controls."""

    def __init__(self, monitor: Monitor, hub: Hub, controls: Controls, gate: TokenGate) -> None:
        self.monitor, self.hub, self.controls, self.gate = monitor, hub, controls, gate

    async def _view(self, request: Request) -> StudyView | Response:
        study = request.query_params.get("study", "")
        if study not in self.monitor.studies:
            return _error(404, f"unknown study {study!r}")
        try:
            return await self.monitor.view(study)
        except ConfigError as exc:
            return _error(404, str(exc))
        except BusError as exc:
            return _error(502, str(exc))

    async def index(self, request: Request) -> Response:
        return FileResponse(f"{static_dir()}/index.html", media_type="text/html")

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def session(self, request: Request) -> Response:
        sid = request.scope["state"].get("session", "")
        fresh = sid not in self.gate.sessions
        if fresh:
            sid = self.gate.new_session()
        response = JSONResponse({"csrf": self.gate.csrf(sid),
                                 "unlocked": self.controls.unlocked(sid)})
        if fresh:
            response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict")
        return response

    async def studies(self, request: Request) -> Response:
        return JSONResponse({"studies": [self.monitor.summary(s) for s in self.monitor.studies]})

    async def study(self, request: Request) -> Response:
        view = await self._view(request)
        if isinstance(view, Response):
            return view
        return JSONResponse(snapshot(self.monitor, view))

    async def instances(self, request: Request) -> Response:
        view = await self._view(request)
        if isinstance(view, Response):
            return view
        node = request.query_params.get("node", "")
        if node not in view.counts:
            return _error(404, f"no step {node!r} in this study")
        offset = _int(request, "offset", 0, 10**9)
        limit = _int(request, "limit", 200, PAGE_LIMIT)
        return JSONResponse({"node": node, "offset": offset, "total": view.node(node)["total"],
                             "instances": view.page(node, offset, limit)})

    async def instance(self, request: Request) -> Response:
        view = await self._view(request)
        if isinstance(view, Response):
            return view
        name = request.query_params.get("name", "")
        if name not in view.instances:
            return _error(404, f"no step {name!r} in this study")
        data: dict[str, Any] = view.instance(name)
        data["files"], data["hosts"], data["workspace"] = [], {}, ""
        graph = self.monitor.graphs.get(view.study_id)
        if graph is not None:
            inst = graph.by_name[name]
            study_dir = graph.study_dir
            try:
                data["files"] = await anyio.to_thread.run_sync(output_files, study_dir,
                                                               inst.workspace)
            except OutsideStudy:
                return _error(403, "the workspace is outside the study directory")
            numbers = [a["attempt"] for a in data["attempts"]]
            data["hosts"] = await anyio.to_thread.run_sync(attempt_hosts, study_dir,
                                                           inst.workspace, numbers)
            data["workspace"] = inst.workspace
        return JSONResponse(data)

    async def output(self, request: Request) -> Response:
        view = await self._view(request)
        if isinstance(view, Response):
            return view
        name = request.query_params.get("name", "")
        graph = self.monitor.graphs.get(view.study_id)
        if name not in view.instances or graph is None:
            return _error(404, f"no output for {name!r}")
        file = request.query_params.get("file", "")
        try:
            data = await anyio.to_thread.run_sync(
                lambda: tail(graph.study_dir, graph.by_name[name].workspace, file))
        except OutsideStudy as exc:
            return _error(403, str(exc))
        except OSError:
            return _error(404, f"{file!r}: no such file")
        return JSONResponse(data)

    async def timeline(self, request: Request) -> Response:
        view = await self._view(request)
        if isinstance(view, Response):
            return view
        limit = _int(request, "limit", 2_000, BAR_LIMIT) or BAR_LIMIT
        bars = view.bars(limit=limit)
        graph = self.monitor.graphs.get(view.study_id)
        who = [""] * len(bars)
        if graph is not None and graph.troupe.get("executor") == "workers":
            who = await anyio.to_thread.run_sync(_who_ran, graph, bars)  # from the claims
        labels = worker_rows(bars, who)
        return JSONResponse({"bars": bars, "rows": len(labels), "labels": labels,
                             "limit": limit, "study": self.monitor.summary(view.study_id)})

    async def stream(self, request: Request) -> Response:
        study = request.query_params.get("study", "")
        if study and study not in self.monitor.studies:
            return _error(404, f"unknown study {study!r}")
        try:
            messages = await self.hub.stream(study)
        except ConfigError as exc:
            return _error(404, str(exc))
        except BusError as exc:
            return _error(502, str(exc))
        return StreamingResponse(messages, media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def unlock(self, request: Request) -> Response:
        body = await _json(request)
        session = request.scope["state"].get("session", "")
        if session not in self.gate.sessions:
            return _error(403, "no session: reload the page")
        try:
            ok = await self.controls.unlock(session, str(body.get("password", "")))
        except BusError as exc:
            return _error(502, str(exc))
        if not ok:
            return _error(403, "wrong client password")
        return JSONResponse({"unlocked": True})

    async def cancel(self, request: Request) -> Response:
        return await self._control(request, "cancel")

    async def restart(self, request: Request) -> Response:
        return await self._control(request, "restart")

    async def _control(self, request: Request, verb: str) -> Response:
        body = await _json(request)
        session = request.scope["state"].get("session", "")
        study = str(body.get("study", ""))
        if study not in self.monitor.studies:
            return _error(404, f"unknown study {study!r}")
        try:
            if verb == "cancel":
                reply = await self.controls.cancel(session, study, str(body.get("step", "")))
            else:
                reply = await self.controls.restart(session, study)
        except PermissionError as exc:
            return _error(403, str(exc))
        except BusError as exc:
            return _error(502, str(exc))
        return JSONResponse({"ok": reply.ok, "detail": reply.detail},
                            status_code=200 if reply.ok else 409)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def build_app(monitor: Monitor, hub: Hub, controls: Controls, *, token: str) -> ASGIApp:
    """The dashboard's ASGI application, behind its token gate.

    Args:
        monitor: The NATS side.
        hub: The server-sent events.
        controls: The unlocked sessions.
        token: The token printed at start.
    """
    app = Starlette()
    gate = TokenGate(app, token=token)
    api = _Api(monitor, hub, controls, gate)
    for path, endpoint, methods in [
        ("/", api.index, ["GET"]),
        ("/favicon.ico", api.favicon, ["GET"]),
        ("/api/session", api.session, ["GET"]),
        ("/api/studies", api.studies, ["GET"]),
        ("/api/study", api.study, ["GET"]),
        ("/api/instances", api.instances, ["GET"]),
        ("/api/instance", api.instance, ["GET"]),
        ("/api/output", api.output, ["GET"]),
        ("/api/timeline", api.timeline, ["GET"]),
        ("/api/stream", api.stream, ["GET"]),
        ("/api/unlock", api.unlock, ["POST"]),
        ("/api/cancel", api.cancel, ["POST"]),
        ("/api/restart", api.restart, ["POST"]),
    ]:
        app.router.routes.append(Route(path, endpoint, methods=methods))
    app.router.routes.append(Mount("/static", StaticFiles(directory=static_dir()), name="static"))
    return gate
