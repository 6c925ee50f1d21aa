"""The entity database through the API (``enginectl db``; Merlin's ``database``
commands, seeds' RunManager): get, list and delete studies, runs, steps and workers.

A run is one execution of a study in one workspace (``restart`` makes a new one). A study
is named as everywhere (id, prefix, name, directory; ``engine.studyref``), a run by its id
or its workspace, a step as ``STUDY:STEP``, a worker by its id. Deleting a study deletes
its runs and steps; a running study is deleted only with ``force``, after it was
cancelled and has ended. ``all`` deletes every entity of the kind that matches the
filters (running studies excepted, unless ``force``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import ConfigError
from engine.messages import DbReply, DbRequest, new_event_id
from engine.studyref import resolve_study

if TYPE_CHECKING:
    from engine.store import Store, StudyEntry

__all__ = ["KINDS", "answer_db"]

KINDS = ("study", "run", "step", "worker")
_OPS = ("get", "list", "delete")


def _out(entries: Sequence[msgspec.Struct], *, drop: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """JSON objects of entries (without the bulky fields, e.g. a study's spec text)."""
    return tuple({k: v for k, v in msgspec.to_builtins(e).items() if k not in drop}
                 for e in entries)


async def answer_db(store: Store, req: DbRequest, *,
                    stop_study: Callable[[str], Awaitable[bool]]) -> DbReply:
    """Answer one ``DbRequest``. ``stop_study(id)`` cancels a running study and waits
    for its end (False: it did not end in time)."""
    rid = new_event_id()
    try:
        if req.op not in _OPS:
            raise ConfigError(f"unknown operation {req.op!r} (one of {', '.join(_OPS)})")
        if req.kind not in KINDS:
            raise ConfigError(f"unknown kind {req.kind!r} (one of {', '.join(KINDS)})")
        if req.op == "delete" and not req.ref and not req.all:
            raise ConfigError(f"delete {req.kind}: name one, or give --all")
        found = await _select(store, req)
        if req.op != "delete":
            drop = ("spec_text", "options") if req.kind == "study" else ()
            return DbReply(event_id=rid, ok=True, entries=_out(found, drop=drop))
        deleted = await _delete(store, req, found, stop_study)
        return DbReply(event_id=rid, ok=True, deleted=deleted)
    except ConfigError as exc:
        return DbReply(event_id=rid, ok=False, error=str(exc))


async def _select(store: Store, req: DbRequest) -> list[Any]:
    """The entries the request names (one for a ref, else the filtered list)."""
    everyone = await store.list_studies() if req.kind == "study" or req.study or (
        req.kind == "step" and req.ref) else []
    study_id = resolve_study(req.study, everyone).study_id if req.study else ""
    match req.kind:
        case "study":
            if req.ref:
                return [resolve_study(req.ref, everyone)]
            state = req.state.upper()
            return [s for s in everyone if (not state or s.state == state)
                    and (req.since is None or s.created >= req.since)]
        case "run":
            runs = await store.list_runs(study_id=study_id, worker=req.worker)
            if req.ref:
                runs = [r for r in runs if req.ref in (r.run_id, r.workspace.rstrip("/"))
                        or r.workspace == req.ref.rstrip("/")]
                if not runs:
                    raise ConfigError(f"unknown run {req.ref}")
            return [r for r in runs if (not req.state or r.state == req.state.upper())
                    and (req.since is None or r.started >= req.since)]
        case "step":
            if req.ref:
                study_ref, _, step = req.ref.rpartition(":")
                if not study_ref or not step:
                    raise ConfigError(f"a step is named STUDY:STEP, not {req.ref!r}")
                study_id = resolve_study(study_ref, everyone).study_id
                entry = await store.get_step(study_id, step)
                if entry is None:
                    raise ConfigError(f"unknown step {step} of study {study_id}")
                return [entry]
            if not study_id:
                raise ConfigError("list step: give --study (steps belong to a study)")
            return await store.list_steps(study_id, state=req.state.upper())
        case _:
            workers = await store.list_workers()
            if req.ref:
                workers = [w for w in workers if w.worker == req.ref
                           or fnmatch.fnmatchcase(w.worker, req.ref)]
                if not workers:
                    raise ConfigError(f"unknown worker {req.ref}")
            return workers


async def _delete(store: Store, req: DbRequest, found: list[Any],
                  stop_study: Callable[[str], Awaitable[bool]]) -> int:
    match req.kind:
        case "study":
            studies: list[StudyEntry] = found
            running = [s for s in studies if s.state == "RUNNING"]
            if running and not req.force:
                if req.ref:
                    raise ConfigError(f"study {running[0].study_id} is running: cancel it "
                                      "first, or delete with --force")
                studies = [s for s in studies if s.state != "RUNNING"]  # --all skips them
            for s in studies:
                if s.state == "RUNNING" and not await stop_study(s.study_id):
                    raise ConfigError(f"study {s.study_id} did not stop in time; not deleted")
                await store.delete_study(s.study_id)
            return len(studies)
        case "run":
            for r in found:
                await store.delete_run(r.run_id)
            return len(found)
        case "step":
            raise ConfigError("steps are deleted with their study (delete study ...)")
        case _:
            for w in found:
                await store.delete_worker(w.worker)
            return len(found)
